"""autotune: detect the machine, match a profile, let plugins propose
settings, measure what matters, apply the winner to one training engine."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# ``detect`` is bound here, not on first use: importing the submodule
# autotune.machine.detect (the planner does) would otherwise leave the package
# attribute ``detect`` pointing at the module instead of the function.
from autotune.machine.detect import detect

__version__ = "0.1.0"

# Everything else loads on first use (PEP 562), so ``import autotune`` and
# with it ``autotune --version``/``--help`` pay for no plugin manager, YAML
# or profile schema, and never for torch (training: apply, Engine, ...).
_LAZY = {
    "AutotuneError": "autotune.errors", "PlanError": "autotune.errors",
    "PluginError": "autotune.errors", "ProfileError": "autotune.errors",
    "TrainingError": "autotune.errors",
    "CPU": "autotune.machine.hardware", "GPU": "autotune.machine.hardware", "Hardware": "autotune.machine.hardware",
    "Memory": "autotune.machine.hardware",
    "Context": "autotune.plugin.context", "Workload": "autotune.plugin.context",
    "hookimpl": "autotune.plugin.markers",
    "PluginManager": "autotune.plugin.manager",
    "Plan": "autotune.plan.plan", "Setting": "autotune.plan.plan", "Source": "autotune.plan.plan",
    "make_plan": "autotune.planner",
    "Profile": "autotune.profile", "load_profiles": "autotune.profile",
    "recommend": "autotune.profile",
    "apply": "autotune.api", "Tuned": "autotune.api",
    "OnlineOptions": "autotune.tuner.options", "SearchOptions": "autotune.tuner.options",
    "Engine": "autotune.engine.engine",
    "History": "autotune.engine.history",
    "cross_validate": "autotune.cv", "CVResult": "autotune.cv",
}

__all__ = sorted(["detect", *_LAZY])

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from autotune.api import Tuned, apply
    from autotune.plugin.context import Context, Workload
    from autotune.cv import CVResult, cross_validate
    from autotune.engine.engine import Engine
    from autotune.errors import AutotuneError, PlanError, PluginError, ProfileError, TrainingError
    from autotune.machine.hardware import CPU, GPU, Hardware, Memory
    from autotune.engine.history import History
    from autotune.plugin.markers import hookimpl
    from autotune.plugin.manager import PluginManager
    from autotune.plan.plan import Plan, Setting, Source
    from autotune.planner import make_plan
    from autotune.profile import Profile, load_profiles, recommend
    from autotune.tuner.options import OnlineOptions, SearchOptions


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups skip __getattr__
        return value
    # ``import autotune; autotune.planner.make_plan(...)`` worked while this
    # file imported its submodules eagerly; it still does.
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
