"""Runs trials for a search: restores state around each, keeps the budget,
remembers what was measured, and records every trial for the report.

Every trial runs under :func:`~autotune.tuner.budget.run_bounded`, so one
whose cost was misjudged (a compilation, a first step of an unknown model)
is stopped when the budget runs out and recorded as "stopped: budget".
Before a trial starts, its cost is estimated from the trials so far:

* an eager trial costs what the slowest eager trial cost;
* a trial with a costly knob on (``Knob.first_step_cost``: compilation) costs
  that plus the extra its first step takes. Until one such trial has run, the
  extra is estimated from the first eager step: ``first_step_cost`` eager
  first steps plus :data:`COSTLY_START_S` of compiler start-up; afterwards it
  is what the slowest one took (or, when one was stopped, at least what it
  ran for). A configuration already compiled costs no more than an eager
  one: dynamo's cache is kept between trials (reset only every
  :data:`MAX_COMPILED_CONFIGS` compiled configurations, below its recompile
  limit), so loader and thread candidates on a compiled model, and the
  confirmation of a compiled winner, compile nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from autotune.plan.knobs import Knob
from autotune.plan.plan import Plan
from autotune.display.progress import bar, progress_enabled
from autotune.tuner.budget import Budget, BudgetStop, run_bounded
from autotune.tuner.candidates import Config
from autotune.tuner.options import TrialOptions
from autotune.tuner.records import Measurement, Status, Trial
from autotune.tuner.state import Snapshot
from autotune.tuner.timing import TrialProgress
from autotune.tuner.trial import run_trial

log = logging.getLogger("autotune.tuner")

#: Fixed start-up of a costly (compiled) trial before any has run: importing
#: and starting dynamo and inductor.
COSTLY_START_S = 20.0
#: Before any trial ran at all, assume one costs this much.
FIRST_TRIAL_GUESS_S = 5.0
#: Compiled configurations kept in dynamo's cache before it is reset (its
#: recompile limit is 8; past it, dynamo silently runs the step eagerly).
#: Until then a trial whose graph is cached (another loader or thread
#: setting on a compiled model) compiles nothing.
MAX_COMPILED_CONFIGS = 4


@dataclass(frozen=True)
class Workbench:
    """The user's objects a trial runs on, where, and what the knobs are."""

    model: torch.nn.Module
    loader: Any
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Any, Any], torch.Tensor]
    plan: Plan
    context: Any
    manager: Any
    device: torch.device
    knobs: Mapping[str, Mapping[str, Knob]] = field(default_factory=dict)


class TrialRunner:
    def __init__(self, bench: Workbench, snapshot: Snapshot, baseline: Config, *,
                 budget: Budget | None = None, options: TrialOptions,
                 progress: bool = True) -> None:
        self.bench = bench
        self.snapshot = snapshot
        self.baseline = baseline
        self.options = options
        self.budget = budget if budget is not None else Budget(None)
        self.trials: list[Trial] = []
        self.by_key: dict[str, Trial] = {}
        self._skipped: set[str] = set()
        #: The slowest eager trial so far: it prices eager trials, and its
        #: shape (steps, chunk length) prices shorter ones.
        self._eager_trial: Measurement | None = None
        self._eager_first_step: float | None = None
        self._costly_extra: float | None = None
        self._bar = bar(None, "tuning", enabled=progress_enabled(progress), unit="trial")
        self._costly_any = False
        #: Costly configurations measured since dynamo's cache was last reset.
        self._compiled_keys: set[str] = set()

    # -- budget ----------------------------------------------------------------
    @property
    def budget_exhausted(self) -> bool:
        return self.budget.exhausted

    @budget_exhausted.setter
    def budget_exhausted(self, value: bool) -> None:
        self.budget.exhausted = self.budget.exhausted or value

    def elapsed(self) -> float:
        return self.budget.elapsed()

    def remaining(self) -> float:
        return self.budget.remaining()

    def costly(self, config: Config) -> float:
        """The largest ``first_step_cost`` among the knobs ``config`` turns on."""
        worst = 0.0
        for plugin, values in config.values.items():
            for key, value in values.items():
                knob = self.bench.knobs.get(plugin, {}).get(key)
                if knob is not None and knob.first_step_cost and value != knob.off:
                    worst = max(worst, knob.first_step_cost)
        return worst

    def estimate(self, config: Config, options: TrialOptions | None = None,
                 cached: bool = False) -> float:
        """Seconds a trial of ``config`` will likely take, from the trials so
        far; ``cached``: as if its compiled code were cached already."""
        shape = self._eager_trial
        eager = shape.wall_s if shape is not None else FIRST_TRIAL_GUESS_S
        if options is not None and options is not self.options and shape is not None:
            # A shorter trial costs its share of the steps the measured one ran
            # (chunks of the same length: steps' time does not change).
            chunk_steps = max(1, shape.chunk_steps)
            short_steps = max(1, options.warmup_steps) + options.min_chunks * chunk_steps
            eager = eager * min(1.0, short_steps / max(1, shape.steps))
        factor = self.costly(config)
        if not factor or cached:
            return eager
        if config.key() in self._compiled_keys:
            return eager  # its compiled code is still cached
        extra = self._costly_extra
        if extra is None:
            first = self._eager_first_step if self._eager_first_step is not None else eager
            extra = COSTLY_START_S + factor * first
        return eager + extra

    def affordable(self, config: Config, reserve: float = 0.0,
                   options: TrialOptions | None = None) -> bool:
        remaining = self.remaining()
        return remaining > 0 and self.estimate(config, options) + reserve <= remaining

    # -- measuring -------------------------------------------------------------
    def seen(self, config: Config) -> Trial | None:
        return self.by_key.get(config.key())

    def measure(self, config: Config, role: str, *, force: bool = False,
                options: TrialOptions | None = None, record: bool = True) -> Trial:
        """Run one trial of ``config`` (or return the earlier one unless
        ``force``). A trial the budget stops is recorded as stopped and
        returned; Ctrl-C is recorded, then re-raised."""
        if not force and config.key() in self.by_key:
            return self.by_key[config.key()]
        options = options or self.options
        changes = config.diff(self.baseline)
        label = config.describe(self.baseline)
        plan = config.to_plan(self.bench.plan, "tuning trial")
        costly = self.costly(config) > 0
        self._costly_any |= costly
        self._bar.set_description(f"tuning: {label[:40]}", refresh=False)
        started = self.budget.clock()
        try:
            measurement = self._run(config, plan, frozenset(changes), options, costly)
            for _ in range(options.retries):
                if not measurement.ok or (measurement.spread or 0.0) <= options.max_spread:
                    break
                log.info("trial of %s was unsteady (spread %.0f%%): measuring again", label,
                         100 * (measurement.spread or 0.0))
                try:
                    again = self._run(config, plan, frozenset(changes), options, costly)
                except BudgetStop:
                    break  # the first measurement stands; the budget is spent
                if not again.ok:
                    # A failure when measured again is a failure of the candidate.
                    measurement = replace(again, wall_s=again.wall_s + measurement.wall_s,
                                          reason=f"{again.reason} (when measured again)")
                    break
                if (again.spread or 0.0) < (measurement.spread or 0.0):
                    measurement = replace(again, wall_s=again.wall_s + measurement.wall_s)
        except BudgetStop:
            wall = self.budget.clock() - started
            self._learn_stopped(costly, wall)
            return self._record(config, role, changes, label, Measurement(
                Status.STOPPED, f"stopped: budget (ran {wall:.1f} s)", wall_s=wall), record)
        except KeyboardInterrupt:
            self._record(config, role, changes, label,
                         Measurement(Status.INTERRUPTED, "interrupted (Ctrl-C)"), record)
            raise
        self._learn(measurement, costly, config)
        trial = self._record(config, role, changes, label, measurement, record)
        log.info("trial #%d %s (%s): %s", trial.index, role, label,
                 f"{trial.samples_per_s:.1f} samples/s" if trial.ok else trial.reason)
        return trial

    def _eager_wall(self) -> float:
        return self._eager_trial.wall_s if self._eager_trial is not None else 0.0

    def _learn(self, measurement: Measurement, costly: bool, config: Config) -> None:
        if measurement.status not in (Status.OK, Status.DISQUALIFIED):
            return
        if costly:
            if measurement.ok:
                self._compiled_keys.add(config.key())
                if measurement.warmup_s is not None:
                    extra = measurement.wall_s - self._eager_wall()
                    self._costly_extra = max(self._costly_extra or 0.0, extra)
        elif measurement.ok:
            if self._eager_trial is None or measurement.wall_s >= self._eager_trial.wall_s:
                self._eager_trial = measurement
            if measurement.first_step_s is not None and self._eager_first_step is None:
                self._eager_first_step = measurement.first_step_s

    def _learn_stopped(self, costly: bool, wall: float) -> None:
        self.budget.exhausted = True
        if costly:
            # It ran this long without finishing: at least this much.
            self._costly_extra = max(self._costly_extra or 0.0, wall - self._eager_wall())

    def _run(self, config: Config, plan: Plan, changed: frozenset[str], options: TrialOptions,
             costly: bool) -> Measurement:
        b = self.bench
        reset = (costly and config.key() not in self._compiled_keys
                 and len(self._compiled_keys) >= MAX_COMPILED_CONFIGS)
        if reset:
            self._compiled_keys.clear()
        progress = TrialProgress()
        self.snapshot.restore()
        try:
            return run_bounded(
                lambda: run_trial(b.model, b.loader, b.optimizer, b.loss_fn, plan,
                                  context=b.context, manager=b.manager, device=b.device,
                                  options=options, changed_plugins=changed, budget=self.budget,
                                  reset_compiler=reset, progress=progress),
                self.budget, stoppable=lambda: progress.stoppable)
        finally:
            self.snapshot.restore()

    def skip(self, config: Config, role: str, reason: str) -> Trial | None:
        """Record that ``config`` was not tried, once per configuration."""
        key = config.key()
        if key in self._skipped or key in self.by_key:
            return None
        self._skipped.add(key)
        return self._record(config, role, config.diff(self.baseline),
                            config.describe(self.baseline), Measurement(Status.SKIPPED, reason))

    def _record(self, config: Config, role: str, changes: Any, label: str,
                measurement: Measurement, record: bool = True) -> Trial:
        trial = Trial.from_measurement(len(self.trials), role, changes, label, measurement)
        base = self.trials[0] if self.trials else None
        if trial.ok and base is not None and base.ok and base.samples_per_s:
            trial = replace(trial, speedup=trial.samples_per_s / base.samples_per_s)
        elif trial.ok and base is None:
            trial = replace(trial, speedup=1.0)
        self.trials.append(trial)
        if record and measurement.status in (Status.OK, Status.DISQUALIFIED):
            self.by_key[config.key()] = trial
            self._skipped.discard(config.key())
        if measurement.status is not Status.SKIPPED:
            self._bar.update(1)
        return trial

    def set_verdict(self, trial: Trial, verdict: str) -> Trial:
        updated = replace(trial, verdict=verdict)
        self.trials[trial.index] = updated
        for key, known in self.by_key.items():
            if known.index == trial.index:
                self.by_key[key] = updated
        return updated

    def close(self) -> None:
        self._bar.close()
        if self._costly_any:
            # Free the compiled graphs (and CUDA-graph pools) of the trials.
            torch._dynamo.reset()
