"""Gradient accumulation: optimizer step every ``steps`` micro-batches.

Profile options::

    accumulation:
      steps: 1                 # micro-batches per optimizer step
      target_batch_size: 256   # or: derive steps from the loader's batch size

With ``target_batch_size`` and a known loader batch size, ``steps`` is
``ceil(target / batch)``. Accumulation changes what is trained (the
effective batch), so it applies only when the user sets it or chooses by
name a profile that does; a matched profile's value is reported and left off. The engine divides the loss by the number of
micro-batches in each window (the last window may be shorter) and skips
DDP gradient sync on all but the last micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from autotune.sdk import (
    Context, Effect, Hardware, Kind, Knob, PluginOptions, Setting, Source, TrainingError, Workload,
    default, from_profile, hookimpl, option, parse_options, whole_number)

NAME = "accumulation"


@dataclass(frozen=True)
class Options(PluginOptions):
    steps: int | None = option(None, "micro-batches per optimizer step", minimum=1)
    target_batch_size: int | None = option(None, "derive steps from the loader's batch size to "
                                           "reach this effective batch", minimum=1)


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    batch = workload.batch_size if workload else None
    if options.steps is not None:
        return {"steps": from_profile(options.steps, f"profile sets {options.steps} micro-batches per step")}
    if options.target_batch_size and batch:
        steps = max(1, math.ceil(options.target_batch_size / batch))
        return {"steps": from_profile(
            steps, f"effective batch {options.target_batch_size} from batches of {batch}")}
    if options.target_batch_size:
        return {"steps": default(1, f"target_batch_size {options.target_batch_size} needs the "
                                    "loader's batch size, which is unknown here; one step per batch")}
    return {"steps": default(1, "one optimizer step per batch (PyTorch's behaviour)")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    # Another window size is another effective batch: the user's choice.
    return {"steps": Knob(off=1, effect=Effect.TRAINING, check=whole_number(1))}


# -- application -----------------------------------------------------------------


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    steps = int(plan.get(NAME, "steps", 1))
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"accumulation.steps must be an integer >= 1, got {steps!r}")
    engine.plugin_state(NAME)["steps"] = steps
    if steps > 1:
        engine.note(NAME, Kind.APPLIED, f"optimizer step every {steps} micro-batches; each "
                    "loss divided by its window's size")
    else:
        engine.note(NAME, Kind.SKIPPED, "steps=1: one optimizer step per batch")


# -- the step: the window, the loss divided by its size, a short last window's
#    gradients rescaled ----------------------------------------------------------


def set_steps(engine: Any, steps: int) -> None:
    """Change ``engine``'s window (between windows only), e.g. for a
    batch-size search that must step every micro-batch."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"accumulation steps must be an integer >= 1, got {steps!r}")
    if engine.pending_micro_batches:
        raise TrainingError("cannot change accumulation steps in the middle of a window; "
                            "call engine.flush() first")
    engine.plugin_state(NAME)["steps"] = steps


@hookimpl
def autotune_window_size(engine: Any, remaining: int | None) -> int | None:
    steps = engine.plugin_state(NAME).get("steps", 1)
    if steps == 1:
        return None
    # fit() knows how many batches are left in the epoch: a last window
    # that cannot be full is as long as what is left.
    return steps if remaining is None else max(1, min(steps, remaining))


@hookimpl
def autotune_transform_loss(engine: Any, loss: Any) -> Any:
    size = engine.window_size
    return loss / size if size > 1 else None


@hookimpl
def autotune_before_optimizer_step(engine: Any, optimizer: Any, micro_batches: int) -> None:
    size = engine.window_size
    if micro_batches == size:
        return
    # A window that ended early (train_step + flush) was divided by more
    # micro-batches than it had: rescale to the mean over the true count.
    import torch

    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(size / micro_batches)


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    return {"accumulation_steps": engine.plugin_state(NAME).get("steps", 1)}


# -- measured tuning: the effective batch the batch-size search keeps --------------


@hookimpl
def autotune_search_prior() -> tuple[float, str]:
    return 0.0, "changes what is trained (the effective batch): only the user sets it"


@hookimpl
def autotune_micro_batches(plan: Any) -> int:
    return int(plan.get(NAME, "steps", 1) or 1)


@hookimpl
def autotune_batch_size_found(batch_size: int, effective_batch: int,
                              largest_fitting: int) -> dict[str, Setting]:
    """Micro-batches of ``batch_size``: accumulate the rest of the effective batch."""
    steps = max(1, effective_batch // max(1, batch_size))
    return {"steps": Setting(steps, Source.MEASURED,
                             f"micro-batch {batch_size} x {steps} keeps the effective batch "
                             f"{effective_batch} (largest fitting: {largest_fitting})")}
