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

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.knobs import Effect, Knob
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile
from autotune.report import Kind

NAME = "accumulation"


@dataclass(frozen=True)
class Options:
    steps: int | None = None
    target_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"accumulation.steps must be >= 1, got {self.steps}")


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
    return {"steps": Knob(off=1, effect=Effect.TRAINING)}


# -- application -----------------------------------------------------------------


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    steps = int(plan.get(NAME, "steps", 1))
    engine.accumulation_steps = steps
    if steps > 1:
        engine.note(NAME, Kind.APPLIED, f"optimizer step every {steps} micro-batches; each "
                    "loss divided by its window's size")
    else:
        engine.note(NAME, Kind.SKIPPED, "steps=1: one optimizer step per batch")
