"""A step that fails, and the one more try it may get.

:func:`guarded` runs a forward (or forward and backward). When it raises, a
plugin may change the engine (``autotune_step_failed``: a smaller batch, an
eager fallback) or a live adapter take back a setting it was trying
(``recover_live``: online tuning), and the step runs once more.

While a live adapter tries a setting (``watches_loss()``), two more things
hold, so that a candidate can be taken back with nothing lost:

* a NaN or infinite loss raises :class:`~autotune.errors.NonFiniteLoss`
  *before* backward, so the optimizer never sees it and the adapter takes
  the candidate back like any other failure;
* torch's random state is saved before the step and put back before the
  retry, so the retried step draws what it would have drawn had the
  candidate never run (dropout, random augmentations on the device).

Outside a trial nothing is checked or copied: a loss that diverges under
the user's own settings is the user's, as in plain PyTorch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from autotune.engine.step import Recovery
from autotune.engine.workers import is_worker_failure
from autotune.errors import NonFiniteLoss, TrainingError


def watching(engine: Any) -> bool:
    """True while a live adapter tries a setting it may have to take back."""
    return any(watch() for adapter in engine.live_adapters
               if (watch := getattr(adapter, "watches_loss", None)) is not None)


def check_finite(loss: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLoss` when ``loss`` holds a NaN or an infinity
    (reads one flag from the device: a sync, paid only during a trial)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLoss(f"the loss is {loss.detach().float().sum().item()} under the "
                            "setting being tried")


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.random.get_rng_state(), cuda


def _restore(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    cpu, cuda = state
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def guarded(engine: Any, run: Callable[[], Any], phase: str) -> Any:
    """See the module docstring. Loader worker failures and plugin errors
    (:class:`~autotune.errors.TrainingError`) are not recoverable here."""
    if not engine.hooks["autotune_step_failed"] and not engine.live_adapters:
        return run()
    rng = _rng_state(engine.device) if watching(engine) else None
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - offered to the plugins
        if is_worker_failure(error) or isinstance(error, TrainingError):
            raise
        found = engine.hooks.first("autotune_step_failed", engine=engine, error=error,
                                   phase=phase)
        recovery: Recovery | None = found[1] if found is not None else None
        if recovery is None and not engine.recover_live(error, phase):
            raise
        if phase == "training" and engine.pending_micro_batches == 0:
            engine.optimizer.zero_grad(set_to_none=True)
        if rng is not None:
            _restore(rng, engine.device)
        try:
            result = run()
        except Exception:
            if recovery is not None:
                recovery.undo()
            raise
        if recovery is not None:
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            recovery.done(f"{type(error).__name__} during {phase}: {first_line}")
        return result
