"""autotune: detect the machine, match a profile, let plugins propose
settings, measure what matters, apply the winner to one training engine."""

from autotune.context import Context, Workload
from autotune.detect import detect
from autotune.errors import AutotuneError, PlanError, PluginError, ProfileError
from autotune.hardware import CPU, GPU, Hardware, Memory
from autotune.hookspecs import hookimpl
from autotune.manager import PluginManager
from autotune.plan import Plan, Setting, Source
from autotune.planner import make_plan
from autotune.profile import Profile, load_profiles, recommend

__version__ = "0.1.0"

__all__ = [
    "CPU", "GPU", "AutotuneError", "Context", "Hardware", "Memory", "Plan", "PlanError",
    "PluginError", "PluginManager", "Profile", "ProfileError", "Setting", "Source",
    "Workload", "detect", "hookimpl", "load_profiles", "make_plan", "recommend",
]

# Training needs torch, which `import autotune` (and so the CLI's detect and
# plan commands) does not: these load on first use.
_LAZY = {"apply": "autotune.api", "Tuned": "autotune.api", "Engine": "autotune.engine",
         "History": "autotune.history", "TrainingError": "autotune.errors",
         "cross_validate": "autotune.cv", "CVResult": "autotune.cv"}
__all__ += sorted(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
