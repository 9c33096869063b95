"""Engine checkpoints: everything needed to resume, under the user's own
parameter names (no ``_orig_mod.`` from torch.compile, no ``module.`` from
DDP), so a plain model can load the weights as they are.

These functions take the engine's parts, not the engine: the engine saves
and restores itself through them (``Engine.state_dict`` /
``load_state_dict``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from autotune.engine.history import EpochMetrics, History
from autotune.errors import TrainingError
from autotune.plan.plan import Plan


def engine_state(*, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 plugins: Mapping[str, Any], scheduler: Any, counters: Mapping[str, int],
                 history: History, plan: Plan) -> dict[str, Any]:
    """Model, optimizer, the plugins' state (a GradScaler's), scheduler,
    counters, history and plan."""
    return {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plugins": dict(plugins),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "counters": dict(counters),
        "history": history.to_dict(),
        "plan": plan.to_dict(),
    }


@dataclass(frozen=True)
class Restored:
    """What a checkpoint gives back besides the state loaded in place."""

    counters: Mapping[str, int]
    history: History


def load_engine_state(state: Mapping[str, Any], *, module: torch.nn.Module,
                      optimizer: torch.optim.Optimizer,
                      load_plugins: Callable[[Mapping[str, Any]], None],
                      scheduler: Any) -> Restored:
    """Load what :func:`engine_state` saved into ``module``, ``optimizer``,
    the plugins and ``scheduler``; a checkpoint of another model is a
    one-line :class:`TrainingError`."""
    try:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        load_plugins(state.get("plugins") or {})
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        counters = state.get("counters") or {}
        epochs = (state.get("history") or {}).get("epochs", [])
        history = History([EpochMetrics.from_dict(e) for e in epochs])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())  # torch's message spans lines
        raise TrainingError(f"checkpoint does not fit this engine: {detail}") from exc
    return Restored({name: int(value) for name, value in counters.items()}, history)
