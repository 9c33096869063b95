"""Online tuning: the search runs inside the real training run.

Every trial step is a real step of the user's run: nothing is copied,
restored, repeated or thrown away, so a candidate costs only what it loses
while it is tried. :class:`OnlineTuner` is a live adapter of the engine
(``Engine(tuners=...)``), called after every optimizer step:

1. **settle** -- the first steps are not timed; one timed step sizes the
   chunks (``OnlineOptions.chunk_s``);
2. **compare** -- plugin groups by prior, each candidate on top of the
   incumbent in chunks ``A B A B A ...`` (the first step after a switch is
   warm-up); after each A chunk the paired interval decides keep, drop or
   more (:mod:`autotune.tuner.paired`);
3. **hold** -- the winner's chunks are still timed; on drift the loader
   and thread groups are searched again.

Only speed knobs are tried (numerics with ``allow=["precision"]``), each
through its plugin's ``autotune_live_change``. Compilation is an investment
made only when the steps left could repay it. A failing candidate is
dropped and its step runs again under the incumbent (``recover``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import torch

from autotune.plan.knobs import LOADER
from autotune.plan.plan import Source
from autotune.plan.report import Kind
from autotune.tuner.candidates import Config, Group, offered
from autotune.tuner.online_hold import AfterSearch
from autotune.tuner.online_space import Space, _Open
from autotune.tuner.online_report import Chunk, OnlineReport, Tried, afford, weigh
from autotune.tuner.options import OnlineOptions
from autotune.tuner.paired import Verdict, decide, interval, pair_log_ratios

log = logging.getLogger("autotune.tuner.online")


class OnlineTuner(AfterSearch):
    """The search of one engine's run; see the module docstring."""

    #: Changes come between any two steps: the loader is made switchable.
    mid_epoch = True

    def __init__(self, engine: Any, space: Space, options: OnlineOptions,
                 report: OnlineReport, on_settled: Any = None, budget: Any = None) -> None:
        self.engine = engine
        #: A rehearsal's :class:`~autotune.tuner.budget.Budget`: it, not the
        #: run's steps left, pays for costly candidates (None online).
        self.budget = budget
        self.space = space
        self.options = options
        self.report = report
        self.clock = options.clock
        #: Called with the report when the winner changes or the search ends (the cache).
        self.on_settled = on_settled or (lambda report: None)
        self.incumbent = self.current = space.start
        self.steps = 0
        self.step_s: float | None = None
        self.chunk_steps = 1
        self.phase = "settle"
        self._groups: deque[Group] = deque(() if space.recheck else space.groups)
        self._offers: list[tuple[str, Config]] = (
            [("recheck", space.baseline)] if space.recheck and space.baseline.key() != space.start.key()
            else [])
        self._trying: tuple[Tried, Config] | None = None
        self._a: list[float] = []
        self._b: list[float] = []
        self._losers: set[str] = set()
        self._compiled: set[str] = set()
        #: A loader group's candidate was kept: revisit what shares the cores.
        self._revisit = False
        #: Steps' worth of time lost to candidates not kept.
        self._lost = 0.0
        self._hold: list[float] = []
        self._reference: float | None = None
        report.start = space.label(space.start)
        report.recheck = space.recheck
        report.winner_label, report.winner_settings = report.start, space.start.to_dict()
        report.margin, report.max_loss = options.margin, options.max_loss
        self._chunk = self._open(space.start, "settle", options.settle_steps, 1)

    # -- what the engine calls -----------------------------------------------------
    def at_epoch_start(self, epoch: int) -> None:
        """An epoch boundary (evaluation, the loader restarting) is not timed:
        the chunk running starts its timing again after a warm-up step."""
        chunk = self._chunk
        if chunk.warmup_left == 0:
            if chunk.started is not None and chunk.counted:
                # Keep what was timed up to the last step (a chunk may be
                # longer than an epoch), not the evaluation after it.
                chunk.banked_s += chunk.last_at - chunk.started
                chunk.banked_samples += chunk.samples_at_last - chunk.samples_at_start
            chunk.warmup_left = max(1, self.options.warmup_steps)
            chunk.started = None
            chunk.warmup_started = self.clock()

    def at_step(self) -> None:
        self.steps += 1
        self.report.steps = self.steps
        chunk = self._chunk
        chunk.steps += 1
        if self.watches_loss():  # a candidate is running
            self._trying[0].steps += 1
            fallback = self.space.fell_back(self.engine.plan, self._trying[1], self.incumbent)
            if fallback:
                self._fail(fallback)
                return
        if chunk.warmup_left > 0:
            chunk.warmup_left -= 1
            if chunk.warmup_left == 0:
                self._start_timing(chunk)
            return
        if chunk.started is None:
            self._start_timing(chunk)
            return
        chunk.counted += 1
        chunk.last_at, chunk.samples_at_last = self.clock(), self.engine.samples_trained
        if chunk.counted >= chunk.target:
            self._finish(chunk)

    def recover(self, error: BaseException, phase: str) -> bool:
        """A step or batch failed under a candidate: back to the incumbent,
        and the engine runs the step again there."""
        if not self.watches_loss():  # no candidate running: nothing to take back
            return False
        first = (str(error).strip().splitlines() or [""])[0][:200]
        return self._fail(f"{type(error).__name__} during {phase}: {first}")

    def watches_loss(self) -> bool:
        """True while a candidate runs: the engine then checks each loss and
        a NaN takes the candidate back before the optimizer sees it."""
        return self._trying is not None and self.current is self._trying[1]

    def status(self) -> str:
        if self._trying is not None:
            return f"trying {self._trying[0].label}, pair {len(self._b) + 1}/{self.options.max_pairs}"
        return {"settle": "measuring the start", "hold": ""}.get(self.phase, "comparing")

    # -- chunks --------------------------------------------------------------------
    def _open(self, config: Config, role: str, warmup: int, target: int) -> _Open:
        engine = self.engine
        engine.history.mark(engine.micro_steps, self.space.label(config))
        chunk = _Open(config, role, self.steps, warmup, target, warmup_started=self.clock())
        if warmup == 0:
            self._start_timing(chunk)
        return chunk

    def _start_timing(self, chunk: _Open) -> None:
        self._sync()
        chunk.started = self.clock()
        chunk.samples_at_start = self.engine.samples_trained
        if self._trying is not None and chunk.config is self._trying[1]:
            self._trying[0].warmup_s += chunk.started - chunk.warmup_started

    def _sync(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)

    def _finish(self, chunk: _Open) -> None:
        self._sync()
        seconds = chunk.banked_s + self.clock() - (chunk.started or 0.0)
        samples = chunk.banked_samples + self.engine.samples_trained - chunk.samples_at_start
        record = Chunk(chunk.first_step, self.space.label(chunk.config), chunk.role, chunk.steps,
                       chunk.counted, seconds, samples)
        self.report.chunks.append(record)
        rate = record.rate
        if rate <= 0:  # a clock that did not move: time it again
            self._chunk = self._open(chunk.config, chunk.role, 0, chunk.target)
            return
        if chunk.role == "settle":
            self.step_s = seconds / max(1, chunk.counted)
            self.chunk_steps = max(1, min(self.options.max_chunk_steps,
                                          math.ceil(self.options.chunk_s / self.step_s)))
            self.phase = "compare"
            self._chunk = self._open(self.incumbent, "incumbent", 0, self.chunk_steps)
        elif chunk.role == "candidate":
            self._b.append(rate)
            self._switch(self.incumbent)
            self._chunk = self._open(self.incumbent, "incumbent", self.options.warmup_steps,
                                     self.chunk_steps)
        elif chunk.role == "hold":
            self._watch(rate)
        else:
            self._a.append(rate)
            self._after_incumbent()

    # -- the comparison ------------------------------------------------------------
    def _after_incumbent(self) -> None:
        if self._trying is None:
            self._next_candidate()
            return
        tried, config = self._trying
        ratios = pair_log_ratios(self._a, self._b)
        verdict, reason = decide(ratios, self.options.margin, max_pairs=self.options.max_pairs)
        if ratios:
            tried.interval = interval(ratios)
        if verdict is Verdict.KEEP:
            self._revisit = self._revisit or any(g.phase == LOADER for g in self.space.groups
                                                 if g.plugin == tried.plugin)
            self.incumbent = config
            self._keep_in_plan(tried, reason)
            self._settle_candidate("kept", reason)
            self._switch(config)
            self._a = []
            self._chunk = self._open(config, "incumbent", self.options.warmup_steps,
                                     self.chunk_steps)
            return
        left = self._steps_left()
        if verdict is Verdict.MORE and left is not None \
                and left < 2 * (self.chunk_steps + self.options.warmup_steps):
            self._settle_candidate("stopped", f"{reason} when the run was about to end")
            self._to_hold(complete=False, why="the run is about to end")
            return
        if verdict is Verdict.MORE and self._lost + tried.lost < self._loss_cap():
            self._switch(config)
            self._chunk = self._open(config, "candidate", self.options.warmup_steps,
                                     self.chunk_steps)
            return
        if verdict is Verdict.MORE:
            reason = (f"undecided when slower candidates had cost {self.options.max_loss:.0%} "
                      "of the planned steps")
        self._settle_candidate("dropped", reason)
        self._a = self._a[-1:]
        if verdict is Verdict.MORE:
            self._to_hold(complete=False, why=reason)
        else:
            self._next_candidate()

    def _settle_candidate(self, verdict: str, reason: str) -> None:
        assert self._trying is not None
        tried, config = self._trying
        tried.verdict, tried.reason = verdict, reason
        if verdict != "kept":
            self._lost += tried.lost
            self._losers.add(config.key())
        self._trying, self._b = None, []
        log.info("online: %s %s (%s)", verdict, tried.label, reason)
        self.engine.note("tuner", Kind.APPLIED if verdict == "kept" else Kind.SKIPPED,
                         f"online: {verdict} {tried.label}: {reason}")
        self.on_settled(self.report)

    def _fail(self, reason: str) -> bool:
        """The candidate being tried failed: back to the incumbent."""
        if not self._switch(self.incumbent, force=True):
            return False
        self._settle_candidate("failed", reason)
        self._a = []
        self._chunk = self._open(self.incumbent, "incumbent", self.options.warmup_steps,
                                 self.chunk_steps)
        return True

    def _next_candidate(self) -> None:
        while True:
            offer = self._next_offer()
            if offer is None:
                self._to_hold(complete=True)
                return
            group, config = offer
            left = self._steps_left()
            if left is not None and left < self._compare_steps():
                self._to_hold(complete=False, why=f"{left} steps left: too few to compare")
                return
            if self._lost >= self._loss_cap():
                self._to_hold(complete=False, why="slower candidates cost all they may")
                return
            tried = Tried(len(self.report.tried), group, self.space.label(config),
                          config.diff(self.incumbent))
            self.report.tried.append(tried)
            costly = self.space.costly(config) if config.key() not in self._compiled else 0.0
            if costly and not self._invest(tried, group, costly, left):
                continue
            self._trying = (tried, config)
            if not self._switch(config):
                self._settle_candidate("failed", "its plugin cannot change it during a run")
                continue
            if costly:
                self._compiled.add(config.key())
            warmup = max(self.options.warmup_steps, 2 if costly else 0)
            self._chunk = self._open(config, "candidate", warmup, self.chunk_steps)
            return

    def _next_offer(self) -> tuple[str, Config] | None:
        while not self._offers:
            if not self._groups and self._revisit:
                # Compute threads share the cores with loader workers: once
                # the loader changed, the knobs that say so are tried again.
                self._groups.extend(g for g in self.space.groups if g.revisit_after_loader)
                self._revisit = False
            if not self._groups:
                return None
            group = self._groups.popleft()
            configs = offered(self.space.manager, self.space.context, self.space.plan,
                              self.space.knobs, self.space.device_type, group.plugin,
                              self.incumbent, pruned=self.report.pruned,
                              skip=lambda c: c.key() in self._losers)
            self._offers = [(group.plugin, c) for c in configs
                            if self.space.may_try(c, self.incumbent, self.options)]
        while self._offers:
            group, config = self._offers.pop(0)
            if group in config.values:
                # Offered on top of an earlier incumbent: the same values on today's.
                config = self.incumbent.merged(group, config.values[group])
            if config.key() != self.incumbent.key() and config.key() not in self._losers:
                return group, config
        return self._next_offer()

    def _invest(self, tried: Tried, group: str, costly: float, left: int | None) -> bool:
        prior, step_s = self.space.priors.get(group, 0.1), self.step_s or 0.0
        investment = weigh(tried.label, costly, left, step_s, prior, self.options.repay) \
            if self.budget is None else \
            afford(tried.label, costly, self._compare_steps(), step_s, prior,
                   self.budget.remaining())
        self.report.investments.append(investment)
        if not investment.tried:
            tried.verdict, tried.reason = "not tried", investment.why_not(self.options.repay)
        return investment.tried

    # -- helpers -------------------------------------------------------------------
    def _compare_steps(self) -> int:
        """Steps the shortest comparison takes: two pairs of chunks, each
        candidate chunk after a warm-up."""
        return 4 * self.chunk_steps + 2 * self.options.warmup_steps

    def _steps_left(self) -> int | None:
        engine = self.engine
        if engine.planned_micro_steps is None:
            return None
        per_step = max(1, engine.micro_batches_per_step)
        return max(0, engine.planned_micro_steps - engine.micro_steps) // per_step

    def _loss_cap(self) -> float:
        engine = self.engine
        if engine.planned_micro_steps is None:
            return math.inf
        return self.options.max_loss * engine.planned_micro_steps / max(
            1, engine.micro_batches_per_step)

    def _switch(self, config: Config, force: bool = False) -> bool:
        """Bring ``config`` into force through the owning plugins; on a
        refusal, what was changed goes back and False is returned."""
        engine, done = self.engine, []
        reason = f"online tuning: running {self.space.label(config)}"
        for plugin, values in config.diff(self.current).items():
            if engine.change_live(plugin, values, Source.MEASURED, reason):
                done.append(plugin)
            elif not force:
                for back in done:
                    engine.change_live(back, self.current.values.get(back, {}), Source.MEASURED,
                                       reason)
                return False
        self.current = config
        return True

    def _keep_in_plan(self, tried: Tried, reason: str) -> None:
        for plugin, values in tried.changes.items():
            self.engine.revise_plan(plugin, values, f"measured online: {reason}")
        self.report.winner_label = self.space.label(self.incumbent)
        self.report.winner_settings = self.incumbent.to_dict()
