"""Engine checkpoints: everything needed to resume, under the user's own
parameter names (no ``_orig_mod.`` from torch.compile, no ``module.`` from
DDP), so a plain model can load the weights as they are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from autotune.errors import TrainingError
from autotune.engine.history import EpochMetrics, History

if TYPE_CHECKING:  # pragma: no cover
    from autotune.engine.engine import Engine


def engine_state(engine: "Engine") -> dict[str, Any]:
    """Model, optimizer, the plugins' state (a GradScaler's), scheduler,
    counters, history and plan."""
    return {
        "model": engine.module.state_dict(),
        "optimizer": engine.optimizer.state_dict(),
        "plugins": engine.plugin_checkpoint(),
        "scheduler": engine.scheduler.state_dict() if engine.scheduler is not None else None,
        "counters": {"micro_steps": engine.micro_steps,
                     "optimizer_steps": engine.optimizer_steps,
                     "skipped_steps": engine.skipped_steps},
        "history": engine.history.to_dict(),
        "plan": engine.plan.to_dict(),
    }


def load_engine_state(engine: "Engine", state: Mapping[str, Any]) -> None:
    """Restore what :func:`engine_state` saved; a checkpoint of another
    model is a one-line :class:`TrainingError`."""
    try:
        engine.module.load_state_dict(state["model"])
        engine.optimizer.load_state_dict(state["optimizer"])
        engine.load_plugin_checkpoint(state.get("plugins") or {})
        if engine.scheduler is not None and state.get("scheduler"):
            engine.scheduler.load_state_dict(state["scheduler"])
        counters = state.get("counters") or {}
        epochs = (state.get("history") or {}).get("epochs", [])
        history = History([EpochMetrics.from_dict(e) for e in epochs])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())  # torch's message spans lines
        raise TrainingError(f"checkpoint does not fit this engine: {detail}") from exc
    engine.micro_steps = int(counters.get("micro_steps", 0))
    engine.optimizer_steps = int(counters.get("optimizer_steps", 0))
    engine.skipped_steps = int(counters.get("skipped_steps", 0))
    engine.history = history
