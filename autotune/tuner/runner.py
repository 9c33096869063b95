"""Runs trials for a search: restores state around each, keeps the budget,
remembers what was measured, and records every trial for the report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from autotune.plan import Plan
from autotune.progress import bar, progress_enabled
from autotune.tuner.candidates import Config
from autotune.tuner.report import Trial
from autotune.tuner.state import Snapshot
from autotune.tuner.trial import Measurement, Status, TrialOptions, run_trial

log = logging.getLogger("autotune.tuner")

#: Before the first compiled trial, assume compilation costs this many
#: times an eager trial, plus a fixed part (dynamo + inductor start-up).
COMPILE_COST_FACTOR = 3.0
COMPILE_COST_FIXED_S = 20.0


@dataclass(frozen=True)
class Workbench:
    """The user's objects a trial runs on, and where."""

    model: torch.nn.Module
    loader: Any
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Any, Any], torch.Tensor]
    plan: Plan
    context: Any
    manager: Any
    device: torch.device


class TrialRunner:
    def __init__(self, bench: Workbench, snapshot: Snapshot, baseline: Config, *,
                 budget_s: float | None, options: TrialOptions, progress: bool = True) -> None:
        self.bench = bench
        self.snapshot = snapshot
        self.baseline = baseline
        self.options = options
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self.trials: list[Trial] = []
        self.by_key: dict[str, Trial] = {}
        self.budget_exhausted = False
        self._eager_wall: float | None = None
        self._compile_extra: float | None = None
        self._bar = bar(None, "tuning", enabled=progress_enabled(progress), unit="trial")
        self._compiled_any = False

    # -- budget ----------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - self.elapsed()

    def estimate(self, config: Config) -> float:
        """Seconds a trial of ``config`` will likely take, from the trials so far."""
        eager = self._eager_wall or 0.0
        if config.values.get("compile", {}).get("mode", "off") in (None, "off"):
            return eager
        extra = self._compile_extra
        if extra is None:
            extra = COMPILE_COST_FACTOR * eager + COMPILE_COST_FIXED_S
        return eager + extra

    def affordable(self, config: Config) -> bool:
        remaining = self.remaining()
        if remaining <= 0:
            return False
        return self.estimate(config) <= remaining

    # -- measuring -------------------------------------------------------------
    def seen(self, config: Config) -> Trial | None:
        return self.by_key.get(config.key())

    def measure(self, config: Config, role: str, *, force: bool = False) -> Trial:
        """Run one trial of ``config`` (or return the earlier one unless
        ``force``). KeyboardInterrupt is recorded, then re-raised."""
        if not force and config.key() in self.by_key:
            return self.by_key[config.key()]
        changes = config.diff(self.baseline)
        label = config.describe(self.baseline)
        plan = config.to_plan(self.bench.plan, "tuning trial")
        compiled = plan.get("compile", "mode", "off") not in (None, "off")
        self._compiled_any |= compiled
        self._bar.set_description(f"tuning: {label[:40]}", refresh=False)
        try:
            measurement = self._run(plan, frozenset(changes))
            for _ in range(self.options.retries):
                if not measurement.ok or (measurement.spread or 0.0) <= self.options.max_spread:
                    break
                log.info("trial of %s was unsteady (spread %.0f%%): measuring again", label,
                         100 * (measurement.spread or 0.0))
                again = self._run(plan, frozenset(changes))
                if again.ok and (again.spread or 0.0) < (measurement.spread or 0.0):
                    measurement = replace(again, wall_s=again.wall_s + measurement.wall_s)
        except KeyboardInterrupt:
            self._record(config, role, changes, label,
                         Measurement(Status.INTERRUPTED, "interrupted (Ctrl-C)"))
            raise
        if measurement.ok:
            if compiled and measurement.warmup_s is not None:
                self._compile_extra = max(self._compile_extra or 0.0,
                                          measurement.wall_s - (self._eager_wall or 0.0))
            elif not compiled:
                self._eager_wall = max(self._eager_wall or 0.0, measurement.wall_s)
        trial = self._record(config, role, changes, label, measurement)
        log.info("trial #%d %s (%s): %s", trial.index, role, label,
                 f"{trial.samples_per_s:.1f} samples/s" if trial.ok else trial.reason)
        return trial

    def _run(self, plan: Plan, changed: frozenset[str]) -> Measurement:
        b = self.bench
        self.snapshot.restore()
        try:
            return run_trial(b.model, b.loader, b.optimizer, b.loss_fn, plan, context=b.context,
                             manager=b.manager, device=b.device, options=self.options,
                             changed_plugins=changed)
        finally:
            self.snapshot.restore()

    def skip(self, config: Config, role: str, reason: str) -> Trial:
        return self._record(config, role, config.diff(self.baseline),
                            config.describe(self.baseline), Measurement(Status.SKIPPED, reason))

    def _record(self, config: Config, role: str, changes: Any, label: str,
                measurement: Measurement) -> Trial:
        trial = Trial.from_measurement(len(self.trials), role, changes, label, measurement)
        base = self.trials[0] if self.trials else None
        if trial.ok and base is not None and base.ok and base.samples_per_s:
            trial = replace(trial, speedup=trial.samples_per_s / base.samples_per_s)
        elif trial.ok and base is None:
            trial = replace(trial, speedup=1.0)
        self.trials.append(trial)
        if measurement.status in (Status.OK, Status.DISQUALIFIED):
            self.by_key[config.key()] = trial
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
        if self._compiled_any:
            # Free the compiled graphs (and CUDA-graph pools) of the trials.
            torch._dynamo.reset()
