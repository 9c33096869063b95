"""The plugin SDK: the one namespace a plugin imports, built-in or not.

Everything a plugin needs to propose, declare, apply and take part in the
training step is here, the way ``pytest`` is the one namespace of a pytest
plugin::

    from autotune.sdk import Context, Effect, Knob, Setting, default, hookimpl

Nothing in autotune's core imports this module: it sits above the layers it
gathers from, so a plugin can reach all of them and the core can reach no
plugin. Names whose modules import torch load on first use (PEP 562), so
loading a plugin for ``autotune detect`` or ``autotune plugins`` costs no
torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from autotune.coordinator.allocator import Observation
from autotune.coordinator.client import current as daemon_job
from autotune.coordinator.client import join as join_daemon
from autotune.engine.step import Recovery
from autotune.errors import PluginError, ProfileError, TrainingError
from autotune.machine.hardware import CPU, GIB, GPU, Hardware, Memory
from autotune.plan.knobs import (LOADER, PROCESS, STEP, Effect, Knob, positive_number,
                                 true_or_false, whole_number)
from autotune.plan.plan import Plan, Setting, Source, default, from_profile
from autotune.plan.report import Kind
from autotune.plan.resources import THREAD_ENV_VARIABLES, FoldPlan, Share, set_threads
from autotune.plugin.context import Context, Workload
from autotune.plugin.markers import hookimpl
from autotune.plugin.options import PluginOptions, clamp_to, describe_bounds, option, parse_options
from autotune.workload.loaders import (is_dataloader, loader_settings, rebuild_loader,
                                       workers_adjustable)

#: Names loaded on first use, and the module each comes from.
_LAZY = {
    "has_conv2d": "autotune.workload.batches", "is_compiled": "autotune.workload.batches",
    "move_to": "autotune.workload.batches", "unwrap_model": "autotune.workload.batches",
    "find_ddp": "autotune.workload.batches", "LiveAdapter": "autotune.live.adapter",
    "SwitchableLoader": "autotune.workload.switching",
}

__all__ = sorted([
    "CPU", "GIB", "GPU", "LOADER", "PROCESS", "STEP", "THREAD_ENV_VARIABLES", "Context", "Effect",
    "FoldPlan", "Hardware", "Kind", "Knob", "Memory", "Observation", "Plan", "PluginError",
    "PluginOptions", "ProfileError", "Recovery", "Setting", "Share", "Source", "TrainingError",
    "Workload", "clamp_to", "daemon_job", "default", "describe_bounds", "from_profile", "hookimpl",
    "is_dataloader", "join_daemon", "loader_settings", "option", "parse_options",
    "positive_number", "rebuild_loader", "set_threads", "true_or_false", "whole_number",
    "workers_adjustable",
    *_LAZY,
])

if TYPE_CHECKING:
    from autotune.live.adapter import LiveAdapter
    from autotune.workload.batches import find_ddp, has_conv2d, is_compiled, move_to, unwrap_model
    from autotune.workload.switching import SwitchableLoader


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autotune.sdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
