"""Timing a trial: the :class:`ChunkTimer` that is the engine's ``monitor``
while a candidate is measured, and what it watches.

The timer sees every micro-step:

* the first ``warmup_steps`` are warm-up (loader start, torch.compile,
  CUDA-graph capture, cuDNN autotuning): timed and reported, not scored;
* then ``chunks`` timed chunks of whole optimizer steps, each sized from the
  warm-up's step time to last about ``chunk_s``; the device is synchronised
  at every chunk boundary, so queued GPU work is counted where it belongs;
* the score is the median samples/s over the chunks; the spread
  (:func:`spread_of`) is the trial's own noise estimate.

Slow steps make short trials: when ``chunks`` chunks of the warm-up's step
time would take longer than ``max_timed_s``, fewer are timed (at least
``min_chunks``). The timer ends the trial by raising :class:`TrialDone`
inside ``fit``; a non-finite loss (:class:`NonFiniteLoss`) or a plugin that
fell back (:class:`NotAsPlanned`) ends it early.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch

from autotune.errors import NonFiniteLoss
from autotune.tuner.options import TrialOptions


def spread_of(rates: list[float]) -> float:
    """Range of the chunk rates relative to their median, after dropping
    the fastest and the slowest chunk when there are at least five."""
    if len(rates) < 2:
        return 0.0
    ordered = sorted(rates)
    if len(ordered) >= 5:
        ordered = ordered[1:-1]
    middle = statistics.median(rates)
    return (ordered[-1] - ordered[0]) / middle if middle > 0 else 0.0


class TrialDone(Exception):
    """Raised by the timer inside ``fit`` once every chunk is timed."""


class NotAsPlanned(Exception):
    """A plugin fell back (e.g. compile -> eager): stop measuring early."""


@dataclass
class TrialProgress:
    """Where a running trial is, for the thread that may have to stop it:
    a trial is stoppable until it starts cleaning up (engine close, hooks
    removed, loader workers shut down), which must run to the end."""

    phase: str = "setup"  # setup -> warm-up -> timed -> cleanup
    first_step_s: float | None = None

    @property
    def stoppable(self) -> bool:
        return self.phase != "cleanup"


class LossWatch:
    """Sees every training loss (the step contract's observer) and keeps a
    device-side finiteness flag, read only at chunk boundaries (where the
    timer synchronises anyway)."""

    def __init__(self) -> None:
        self.finite: torch.Tensor | None = None

    def __call__(self, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss.detach()).all()
        self.finite = ok if self.finite is None else self.finite & ok

    def all_finite(self) -> bool:
        return self.finite is None or bool(self.finite)


class ChunkTimer:
    """The engine monitor that times a trial (see module docstring). At
    every step it also checks the budget (``budget.check()`` raises
    :class:`~autotune.tuner.budget.BudgetStop` once it has run out)."""

    def __init__(self, options: TrialOptions, device: torch.device, micro_batches: int,
                 check_loss: Callable[[], bool],
                 check_plan: Callable[[], str | None] = lambda: None,
                 budget: Any = None, progress: TrialProgress | None = None) -> None:
        self.options = options
        self.progress = progress
        self.check_plan = check_plan
        self.device = device
        self.budget = budget
        self.clock = options.clock
        self.k = max(1, micro_batches)
        self.check_loss = check_loss
        warmup = max(options.warmup_steps, 1)
        self.warmup_steps = math.ceil(warmup / self.k) * self.k
        self.chunks = options.chunks
        self.steps = 0
        self.chunk_steps = 0
        self.rates: list[float] = []
        self.durations: list[float] = []
        self.first_step_s: float | None = None
        self.warmup_s: float | None = None
        self._start = self._last = self._chunk_start = 0.0
        self._in_chunk = self._chunk_samples = 0

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()

    def start(self) -> None:
        self._start = self._last = self.clock()

    def stop(self) -> None:
        pass

    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None:
        self.steps += 1
        if self.budget is not None:
            self.budget.check()
        if self.warmup_s is None:
            self._warming_up()
            return
        self._in_chunk += 1
        self._chunk_samples += samples
        if self._in_chunk < self.chunk_steps:
            return
        now = self._sync()
        duration = max(now - self._chunk_start, 1e-9)
        self.durations.append(duration)
        self.rates.append(self._chunk_samples / duration)
        if not self.check_loss():
            raise NonFiniteLoss("non-finite loss")
        self._in_chunk = self._chunk_samples = 0
        self._chunk_start = self.clock()
        if len(self.rates) >= self.chunks:
            raise TrialDone

    def _warming_up(self) -> None:
        """A warm-up step; after the last one, size the chunks from its time."""
        if self.steps == 1:
            self.first_step_s = self._sync() - self._start
            if self.progress is not None:
                self.progress.first_step_s = self.first_step_s
        if self.steps < self.warmup_steps:
            self._last = self.clock()
            return
        now = self._sync()
        if not self.check_loss():
            raise NonFiniteLoss("non-finite loss during warm-up")
        fallback = self.check_plan()
        if fallback:
            raise NotAsPlanned(fallback)
        self.warmup_s = now - self._start
        last_step = max(now - self._last, 1e-6) if self.steps > 1 else max(now - self._start, 1e-6)
        wanted = math.ceil(self.options.chunk_s / last_step - 1e-6)  # 2.0000001 is 2
        wanted = min(max(wanted, self.options.min_chunk_steps), self.options.max_chunk_steps)
        self.chunk_steps = math.ceil(wanted / self.k) * self.k
        # Slow steps: fewer chunks, so a trial stays near max_timed_s.
        per_chunk = last_step * self.chunk_steps
        fitting = int(self.options.max_timed_s // max(per_chunk, 1e-9))
        self.chunks = min(self.options.chunks, max(self.options.min_chunks, fitting))
        self._chunk_start = now
        if self.progress is not None:
            self.progress.phase = "timed"

    def max_steps(self) -> int:
        per_chunk = math.ceil(self.options.max_chunk_steps / self.k) * self.k
        return self.warmup_steps + per_chunk * self.options.chunks + self.k
