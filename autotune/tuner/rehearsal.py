"""``apply(tune="rehearse")``: the configuration before training, measured
the way online tuning measures.

The trial search (:mod:`autotune.tuner.search`) measures each candidate in
a trial of its own, one after another, and adopts one only when it beats
the incumbent by more than either trial's spread. On a noisy machine that
margin hides real gains: in benchmarks/results/budget_buys_cnn.json's 150 s
search, channels_last measured +8.6 % "within the 13.1 % noise margin" and
PyTorch defaults shipped. A rehearsal measures with the paired statistics
of :mod:`autotune.tuner.paired` instead: it trains the user's model,
optimizer and loader under online tuning
(:class:`~autotune.tuner.online.OnlineTuner`: candidate and incumbent in
alternating chunks, a t-interval on their ratio) for up to the budget, and
returns the configuration the search ended with.

* **Nothing is trained for the user**: model, optimizer, RNG, the loader's
  generators and global flags are captured before and restored after,
  bitwise (:class:`~autotune.tuner.state.Snapshot`), as around trials.
* **What is tried** is what the trial search tries: speed knobs and, as
  there, precision (measured here, and shipped as a plan the user sees
  before training); clipping, accumulation and the batch size never.
* **The budget is the run**: the tuner is told the steps the budget has
  left, so it starts no comparison that cannot finish; the steps are not
  the user's, so slower candidates may cost the whole budget
  (``max_loss=1``); costly groups (compilation) come last, and are tried
  only when the budget left holds their estimated cost and a comparison.
* **It ends** when the search does, or at the budget's deadline
  (:class:`~autotune.tuner.budget.BudgetStop` inside a step, as for a
  trial); a comparison cut short leaves the incumbent.
* **Cached like an online winner**: the next ``apply(tune="rehearse")``
  (or online tuning that may try the same, ``allow=["precision"]``)
  starts from it and only re-checks it.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import replace
from typing import Any

import torch

from autotune.applying import apply_plan
from autotune.engine.engine import Engine
from autotune.errors import TrainingError
from autotune.plan.plan import Plan
from autotune.tuner.budget import Budget, BudgetStop, run_bounded
from autotune.tuner.candidates import Config
from autotune.tuner.online_report import OnlineReport
from autotune.tuner.online_setup import ShowsReport, prepare_online
from autotune.tuner.options import OnlineOptions
from autotune.tuner.state import Snapshot
from autotune.workload.contract import StepContract

log = logging.getLogger("autotune.tuner.rehearsal")

#: A rehearsal's steps are not the user's: what slower candidates may cost.
REHEARSAL_MAX_LOSS = 1.0


class _SearchOver(Exception):
    """Raised by :class:`_Deadline` once the search has ended."""


class _Deadline:
    """The engine monitor of a rehearsal: after every step it tells the
    engine (and so the tuner) how many steps the budget has left, and
    ends the run once the search is over."""

    def __init__(self, engine: Engine, tuner: Any, budget: Budget) -> None:
        self.engine, self.tuner, self.budget = engine, tuner, budget
        self.step_s: deque[float] = deque(maxlen=5)  # the recent steps price the rest

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None:
        if self.tuner.phase == "hold":
            raise _SearchOver
        self.step_s.append(data_wait_s + step_s)
        recent = statistics.median(self.step_s)
        left = self.budget.remaining()
        if math.isfinite(left):
            self.engine.planned_micro_steps = self.engine.micro_steps + int(left / max(recent,
                                                                                        1e-9))
        self.budget.check()


class Rehearsal(ShowsReport):
    """``tuned.tuning`` after ``apply(tune="rehearse")``: what the rehearsal
    measured (:attr:`report`, an :class:`~autotune.tuner.online_report.OnlineReport`
    whose ``mode`` is ``"rehearsal"``). Engines built later train with the
    winner and search nothing."""

    mode = "rehearsal"

    def __init__(self, report: OnlineReport, seconds: float) -> None:
        self.report = report
        #: Wall seconds the rehearsal took.
        self.seconds = seconds


def rehearse(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
             contract: StepContract, planned: Any, *, device: torch.device,
             options: OnlineOptions, budget: Budget, remeasure: bool = False) -> tuple[Plan,
                                                                                    Rehearsal]:
    """The plan with the rehearsal's winner (source ``measured``) and what it
    measured; the user's model and optimizer come back bitwise."""
    # As in the trial search, precision is a speed knob once measured here:
    # the winner ships as a plan the user sees before training.
    options = replace(options, max_loss=REHEARSAL_MAX_LOSS,
                      allow=tuple(dict.fromkeys((*options.allow, "precision"))))
    started_at = budget.elapsed()
    plan, tuning = prepare_online(model, loader, optimizer, contract, planned.plan,
                                  context=planned.context, manager=planned.manager,
                                  device=device, options=options, remeasure=remeasure)
    # The budget, not the run, pays here: costly groups (compilation) go
    # last, so a short budget is not spent compiling before the cheap knobs
    # are compared (time_to_train.json: the 60 s rehearsals of the long MLP
    # and input jobs compiled first and shipped defaults).
    space = tuning.space
    tuning.space = replace(space, groups=tuple(sorted(space.groups,
                                                      key=lambda g: _costly(space, g))))
    snapshot = Snapshot.capture(model, optimizer, loader)
    engine: Engine | None = None
    try:
        tuned = apply_plan(model, loader, plan, context=planned.context,
                           manager=planned.manager, device=device)
        engine = Engine(tuned.model, optimizer, contract, tuned.plan, manager=planned.manager,
                        context=planned.context, device=device, progress=False, live=(),
                        tuners=(lambda made: tuning.attach(made, budget=budget),))
        _run(engine, tuned.loader, budget)
        engine.live_adapters[0].give_up("the rehearsal's budget ran out")
    finally:
        if engine is not None:
            engine.close()
        snapshot.restore()
    report = tuning.report
    seconds = budget.elapsed() - started_at
    verdict = "finished" if report.complete else "cut short by the budget"
    reason = (f"measured by a {seconds:.0f} s rehearsal in paired chunks ({verdict}): "
              + (f"{report.gain:.2f}x PyTorch defaults" if report.gain != 1.0
                 else "nothing beat PyTorch defaults beyond the margin"))
    winner = Config(report.winner_settings).to_plan(planned.plan, reason)
    log.info("rehearsal: %s in %.1f s", report.winner_label, seconds)
    return winner, Rehearsal(report, seconds)


def _costly(space: Any, group: Any) -> bool:
    """A group whose knobs cost steps before they pay (``first_step_cost``)."""
    return any(knob.first_step_cost > 0 for knob in space.knobs.get(group.plugin, {}).values())


def _run(engine: Engine, loader: Any, budget: Budget) -> None:
    """Train until the search ends or the budget does."""
    deadline = _Deadline(engine, engine.live_adapters[0], budget)  # live=(): the tuner only

    def train() -> None:
        try:
            engine.fit(loader, epochs=10**6, monitor=deadline)
        except _SearchOver:
            pass

    try:
        run_bounded(train, budget, name="autotune-rehearsal")
    except BudgetStop:
        log.info("rehearsal: the budget ran out; the incumbent stays")
    except KeyboardInterrupt:
        log.warning("rehearsal interrupted: keeping the best configuration measured so far")
    except Exception as exc:
        # A candidate's failure is taken back by the tuner: what gets here
        # failed under the incumbent -- the user's own settings.
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise TrainingError(
            f"apply(tune='rehearse') could not train this model on this loader: "
            f"{type(exc).__name__}: {first}; HINT: check the batch contract -- (inputs, "
            "targets) with loss_fn, a dict batch for model(**batch), or step_fn(model, batch) "
            "(docs/engine.md)") from exc
