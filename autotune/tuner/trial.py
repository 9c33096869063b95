"""One measured trial: real training steps through the engine, loader included.

A trial applies a candidate plan to the user's own model and DataLoader
(``apply_plan``), builds the shared :class:`~autotune.engine.engine.Engine` on the
user's optimizer and loss, and calls ``engine.fit`` on the (rebuilt)
loader, with a :class:`~autotune.tuner.timing.ChunkTimer` as the engine's
``monitor``: warm-up steps, then timed chunks whose median samples/s is the
score and whose spread is the trial's own noise (see
:mod:`autotune.tuner.timing`).

Failures disqualify the candidate with a reason instead of crashing:
out-of-memory, a non-finite loss, a compile error (the engine fell back to
eager), a DataLoader error, any other exception. ``KeyboardInterrupt``
propagates (the search keeps the best so far), and so does
:class:`~autotune.tuner.budget.BudgetStop` when the budget runs out at a
step boundary or, raised by the runner, in the middle of a step. The
caller restores the snapshot before and after every trial.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any, Callable

import torch

from autotune.applying import apply_plan
from autotune.engine.engine import Engine
from autotune.errors import TrainingError
from autotune.plan.plan import Plan
from autotune.plan.report import Report
from autotune.tuner.options import TrialOptions
from autotune.tuner.records import Measurement, Status
from autotune.tuner.timing import (ChunkTimer, LossWatch, NonFiniteLoss, NotAsPlanned, TrialDone,
                                   TrialProgress, spread_of)
from autotune.workload.contract import StepContract

log = logging.getLogger("autotune.tuner")


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def classify_failure(exc: BaseException) -> str:
    """The reason a candidate is disqualified, from what it raised."""
    if is_oom(exc):
        return f"out of memory ({_first_line(exc)})"
    if isinstance(exc, (NonFiniteLoss, NotAsPlanned)):
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
    progress = progress if progress is not None else TrialProgress()
    clock = options.clock
    started = clock()
    report = Report()
    if reset_compiler:
        torch._dynamo.reset()
    watch = LossWatch()
    contract = StepContract.of(loss_fn).observed(watch)
    tuned = engine = None
    timer: ChunkTimer | None = None
    try:
        tuned = apply_plan(model, loader, plan, context=context, manager=manager, device=device,
                           report=report)
        # No live adapter (live=()): what a trial measures runs as planned.
        engine = Engine(tuned.model, optimizer, contract, plan, manager=manager, context=context,
                        device=device, progress=False, report=report, live=())
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
        except TrialDone:
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
    return _scored(timer, _fallback_reason(report, changed_plugins), wall_s=clock() - started,
                   events=tuple(str(e) for e in report))


def _scored(timer: ChunkTimer | None, fallback: str | None, *, wall_s: float,
            events: tuple[str, ...]) -> Measurement:
    """The measurement of a trial that ran to its end: disqualified when a
    changed plugin fell back or the loader ran out before the chunks were
    timed, else the median of the chunks and their spread."""
    if fallback:
        return Measurement(Status.DISQUALIFIED, fallback, wall_s=wall_s, events=events,
                           first_step_s=timer.first_step_s if timer else None)
    assert timer is not None
    if len(timer.rates) < timer.chunks:
        return Measurement(Status.DISQUALIFIED, f"the loader ran out after {timer.steps} steps "
                           "(fewer than warm-up and the timed chunks need)", wall_s=wall_s,
                           events=events)
    rate = statistics.median(timer.rates)
    step_ms = statistics.median(d / timer.chunk_steps for d in timer.durations) * 1000
    return Measurement(Status.OK, samples_per_s=rate, step_ms=step_ms,
                       spread=spread_of(timer.rates), chunk_rates=tuple(timer.rates),
                       steps=timer.steps, chunk_steps=timer.chunk_steps, warmup_s=timer.warmup_s,
                       first_step_s=timer.first_step_s, wall_s=wall_s, events=events)
