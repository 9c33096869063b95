"""One measured trial: real training steps through the engine, loader included.

A trial applies a candidate plan to the user's own model and DataLoader
(``apply_plan``), builds the shared :class:`~autotune.engine.engine.Engine` on the
user's optimizer and loss, and calls ``engine.fit`` on the (rebuilt)
loader. A :class:`ChunkTimer` -- the engine's ``monitor`` -- sees every
micro-step:

* the first ``warmup_steps`` are warm-up (loader start, torch.compile,
  CUDA-graph capture, cuDNN autotuning): timed and reported, not scored;
* then ``chunks`` timed chunks of whole optimizer steps, each sized from the
  warm-up's step time to last about ``chunk_s``; the device is synchronised
  at every chunk boundary, so queued GPU work is counted where it belongs;
* the score is the median samples/s over the chunks; the spread (range of
  the chunks without the fastest and slowest when there are 5 or more)
  is the trial's own noise estimate.

Failures disqualify the candidate with a reason instead of crashing:
out-of-memory, a non-finite loss, a compile error (the engine fell back to
eager), a DataLoader error, any other exception. ``KeyboardInterrupt``
propagates (the search keeps the best so far), and so does
:class:`~autotune.tuner.budget.BudgetStop` when the budget runs out at a
step boundary or, raised by the runner, in the middle of a step. The
caller restores the snapshot before and after every trial.

Slow steps make short trials: when ``chunks`` chunks of the warm-up's step
time would take longer than ``max_timed_s``, fewer are timed (at least
``min_chunks``).
"""

from __future__ import annotations

import enum
import logging
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from autotune.plan.plan import Plan
from autotune.plan.report import Report

log = logging.getLogger("autotune.tuner")


class Status(str, enum.Enum):
    OK = "ok"
    DISQUALIFIED = "disqualified"
    SKIPPED = "skipped"
    #: Started, then stopped because the budget ran out ("stopped: budget").
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrialOptions:
    #: Steps before timing starts (loader start, compilation, allocation).
    warmup_steps: int = 2
    #: Timed chunks of a trial, at most; fewer (down to ``min_chunks``) when
    #: steps are so slow that ``chunks`` of them would exceed ``max_timed_s``.
    chunks: int = 5
    min_chunks: int = 3
    #: Target duration of one timed chunk, seconds.
    chunk_s: float = 0.5
    #: Target duration of all timed chunks together, seconds.
    max_timed_s: float = 6.0
    min_chunk_steps: int = 1
    max_chunk_steps: int = 500
    #: A trial whose chunks spread more than this (relative) was disturbed
    #: (another process took the cores): it is measured again, up to
    #: ``retries`` times, and the steadiest measurement is kept.
    max_spread: float = 0.25
    retries: int = 1
    #: The clock chunks are timed with (tests pass a fake one to make
    #: measurements deterministic); the budget always runs on real time.
    clock: Callable[[], float] = field(default=time.perf_counter, compare=False, repr=False)

    def __post_init__(self) -> None:
        from autotune.errors import AutotuneError

        for name in ("warmup_steps", "chunks", "min_chunks", "min_chunk_steps",
                     "max_chunk_steps", "retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name in (
                    "warmup_steps", "retries") else 1):
                raise AutotuneError(f"TrialOptions.{name} must be a whole number "
                                    f">= {0 if name in ('warmup_steps', 'retries') else 1}, "
                                    f"got {value!r}")
        for name in ("chunk_s", "max_timed_s", "max_spread"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    math.isfinite(value) and value > 0):
                raise AutotuneError(f"TrialOptions.{name} must be a number > 0, got {value!r}")
        if self.min_chunks > self.chunks:
            raise AutotuneError(f"TrialOptions.min_chunks={self.min_chunks} is more than "
                                f"chunks={self.chunks}")

    def shorter(self) -> "TrialOptions":
        """The options of a confirmation trial: the configuration was
        measured already, so one warm-up step and the fewest chunks do."""
        return replace(self, warmup_steps=min(self.warmup_steps, 1), chunks=self.min_chunks,
                       retries=0)


@dataclass(frozen=True)
class Measurement:
    status: Status
    reason: str = ""
    #: Median over the timed chunks.
    samples_per_s: float | None = None
    step_ms: float | None = None
    #: Relative spread of the chunk rates (see module docstring).
    spread: float | None = None
    chunk_rates: tuple[float, ...] = ()
    steps: int = 0
    #: Micro-steps per timed chunk (``steps`` minus the chunks' is warm-up).
    chunk_steps: int = 0
    #: Warm-up: from the start of fit to the end of the last warm-up step.
    warmup_s: float | None = None
    #: The first step alone (loader start and compilation dominate it).
    first_step_s: float | None = None
    #: Everything: apply, engine set-up, warm-up, chunks, close.
    wall_s: float = 0.0
    #: What the plugins reported while applying this candidate.
    events: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


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


class _TrialDone(Exception):
    """Raised by the timer inside ``fit`` once every chunk is timed."""


class _NonFinite(Exception):
    pass


class _NotAsPlanned(Exception):
    """A plugin fell back (e.g. compile -> eager): stop measuring early."""


class ChunkTimer:
    """The engine monitor that times a trial (see module docstring). At
    every step it also checks the budget (``budget.check()`` raises
    :class:`~autotune.tuner.budget.BudgetStop` once it has run out)."""

    def __init__(self, options: TrialOptions, device: torch.device, micro_batches: int,
                 check_loss: Callable[[], bool],
                 check_plan: Callable[[], str | None] = lambda: None,
                 budget: Any = None, progress: "TrialProgress | None" = None) -> None:
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
            if self.steps == 1:
                self.first_step_s = self._sync() - self._start
                if self.progress is not None:
                    self.progress.first_step_s = self.first_step_s
            if self.steps < self.warmup_steps:
                self._last = self.clock()
                return
            now = self._sync()
            if not self.check_loss():
                raise _NonFinite("non-finite loss during warm-up")
            fallback = self.check_plan()
            if fallback:
                raise _NotAsPlanned(fallback)
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
            raise _NonFinite("non-finite loss")
        self._in_chunk = self._chunk_samples = 0
        self._chunk_start = self.clock()
        if len(self.rates) >= self.chunks:
            raise _TrialDone

    def max_steps(self) -> int:
        per_chunk = math.ceil(self.options.max_chunk_steps / self.k) * self.k
        return self.warmup_steps + per_chunk * self.options.chunks + self.k


class _LossWatch:
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


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def classify_failure(exc: BaseException) -> str:
    """The reason a candidate is disqualified, from what it raised."""
    from autotune.errors import TrainingError

    if is_oom(exc):
        return f"out of memory ({_first_line(exc)})"
    if isinstance(exc, (_NonFinite, _NotAsPlanned)):
        return str(exc)
    if isinstance(exc, TrainingError) and "DataLoader" in str(exc):
        return f"loader error ({_first_line(exc)})"
    name = type(exc).__module__ + "." + type(exc).__name__
    if "_dynamo" in name or "_inductor" in name:
        return f"compile error ({_first_line(exc)})"
    return f"error ({_first_line(exc)})"


def _shutdown_workers(loader: Any) -> None:
    """Stop a rebuilt loader's persistent workers now, not at some later
    garbage collection, so they cannot steal CPU from the next trial."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        try:
            iterator._shutdown_workers()
        except Exception:  # noqa: BLE001 - best effort at clean-up
            pass
        loader._iterator = None


def _fallback_reason(report: Report, plugins: frozenset[str]) -> str | None:
    fallbacks = [e for e in report.fallbacks if e.plugin in plugins]
    if not fallbacks:
        return None
    return f"{fallbacks[0].plugin} did not run as planned: {fallbacks[0].message[:200]}"


def _epochs_for(loader: Any, steps: int) -> int:
    """Enough epochs for ``steps`` micro-batches (fit stops at max_steps).
    A loader without ``len`` (an IterableDataset) may be finite: as many
    epochs as steps, each re-iterating it, stop when the steps are done."""
    try:
        return max(1, math.ceil(steps / max(1, len(loader))))
    except TypeError:
        return max(1, steps)


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


def run_trial(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
              loss_fn: Callable[[Any, Any], torch.Tensor], plan: Plan, *, context: Any,
              manager: Any, device: torch.device, options: TrialOptions,
              changed_plugins: frozenset[str] = frozenset(), budget: Any = None,
              reset_compiler: bool = False, progress: TrialProgress | None = None) -> Measurement:
    """Measure ``plan`` on the user's objects. Global state is undone by
    the engine; the caller restores model/optimizer/RNG state around it.
    ``changed_plugins``: plugins whose settings differ from the baseline; a
    fallback reported by one of them disqualifies the candidate (it did not
    run as planned, e.g. torch.compile failed and the step ran eagerly).
    ``budget``: checked at every step (``BudgetStop`` propagates).
    ``reset_compiler``: start from a clean dynamo cache -- recompiling the same
    forward for trial after trial would hit dynamo's recompile limit and
    silently run eagerly."""
    from autotune.applying import apply_plan
    from autotune.engine.engine import Engine

    progress = progress if progress is not None else TrialProgress()
    clock = options.clock
    started = clock()
    report = Report()
    if reset_compiler:
        torch._dynamo.reset()
    from autotune.workload.contract import StepContract

    watch = _LossWatch()
    contract = StepContract.of(loss_fn).observed(watch)
    tuned = engine = None
    timer: ChunkTimer | None = None
    try:
        tuned = apply_plan(model, loader, plan, context=context, manager=manager, device=device,
                           report=report)
        engine = Engine(tuned.model, optimizer, contract, plan, manager=manager, context=context,
                        device=device, progress=False, report=report, trial=True)
        # Chunks hold whole optimizer steps: micro-batches per step as the
        # plugins in the engine's plan declare them (autotune_micro_batches).
        timer = ChunkTimer(options, device, manager.micro_batches(engine.plan), watch.all_finite,
                           lambda: _fallback_reason(report, changed_plugins), budget=budget,
                           progress=progress)
        progress.phase = "warm-up"
        try:
            steps = timer.max_steps()
            engine.fit(tuned.loader, epochs=_epochs_for(tuned.loader, steps), max_steps=steps,
                       monitor=timer)
        except _TrialDone:
            pass
    except Exception as exc:  # noqa: BLE001 - any failure disqualifies this candidate
        reason = classify_failure(exc)
        log.info("trial disqualified: %s", reason)
        if is_oom(exc) and device.type == "cuda":
            torch.cuda.empty_cache()
        return Measurement(Status.DISQUALIFIED, reason, wall_s=clock() - started,
                           first_step_s=progress.first_step_s,
                           events=tuple(str(e) for e in report))
    finally:
        # KeyboardInterrupt and BudgetStop pass through here too; from now on
        # nothing stops the trial, so every undo runs.
        progress.phase = "cleanup"
        if engine is not None:
            engine.close()
        if tuned is not None and tuned.loader is not None and tuned.loader is not loader:
            _shutdown_workers(tuned.loader)
    events = tuple(str(e) for e in report)
    wall = clock() - started
    fallback = _fallback_reason(report, changed_plugins)
    if fallback:
        return Measurement(Status.DISQUALIFIED, fallback, wall_s=wall, events=events,
                           first_step_s=timer.first_step_s if timer else None)
    assert timer is not None
    if len(timer.rates) < timer.chunks:
        return Measurement(Status.DISQUALIFIED, f"the loader ran out after {timer.steps} steps "
                           "(fewer than warm-up and the timed chunks need)", wall_s=wall,
                           events=events)
    rate = statistics.median(timer.rates)
    step_ms = statistics.median(d / timer.chunk_steps for d in timer.durations) * 1000
    return Measurement(Status.OK, samples_per_s=rate, step_ms=step_ms,
                       spread=spread_of(timer.rates), chunk_rates=tuple(timer.rates),
                       steps=timer.steps, chunk_steps=timer.chunk_steps, warmup_s=timer.warmup_s,
                       first_step_s=timer.first_step_s, wall_s=wall, events=events)
