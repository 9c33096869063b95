"""The measured-tuning step of :func:`autotune.apply`, between planning and
application: optionally find the batch size, then measure, then hand the
plan (with measured values), the loader to apply it to, and what happened
to ``apply_plan``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from autotune.errors import AutotuneError, TrainingError
from autotune.plan.plan import Plan
from autotune.plan.report import Kind, Report
from autotune.tuner.batch_size import BatchSizeResult, find_batch_size, kept_by_user, with_settings
from autotune.tuner.budget import Budget
from autotune.tuner.options import SearchOptions
from autotune.tuner.report import TuningReport
from autotune.tuner.tuning import DEFAULT_BUDGET_S
from autotune.tuner.tuning import tune as run_tuning
from autotune.workload.contract import StepContract
from autotune.workload.loaders import one_shot

log = logging.getLogger("autotune.tuner")

NAME = "tuner"


@dataclass(frozen=True)
class Measured:
    plan: Plan
    loader: Any
    #: Events for the apply report ("tuner: applied: ...").
    events: Report
    #: None when nothing was measured (tune=False, or nothing to measure with).
    report: TuningReport | None = None
    batch_size: Any = None


def wants_tuning(tune: Any, loader: Any, optimizer: Any, loss_fn: Any,
                 events: Report | None = None) -> bool:
    """``tune=None`` (the default) measures when everything a trial needs
    was given: a loader, the optimizer and the loss function -- and the
    loader can be iterated more than once (a generator cannot: tuning is
    then skipped with a warning, or refused with ``tune=True``)."""
    # A step contract with neither loss_fn nor step_fn means "the model's
    # own loss": measured when asked for (tune=True), never by default.
    given = loss_fn.given if isinstance(loss_fn, StepContract) else loss_fn is not None
    if isinstance(loss_fn, StepContract) and tune:
        loss_fn = loss_fn if loss_fn.given else "the model's own loss"
    if tune is None:
        if loader is not None and one_shot(loader):
            if events is not None and optimizer is not None and given:
                events.add(NAME, Kind.WARNING, f"not measured: the loader is a one-shot "
                           f"iterator ({type(loader).__name__}) and trials iterate it many "
                           "times; pass a DataLoader or a list of batches to measure")
            return False
        return loader is not None and optimizer is not None and given
    if tune and (loader is None or optimizer is None or loss_fn is None):
        missing = [n for n, v in (("loader", loader), ("optimizer", optimizer),
                                  ("loss_fn", loss_fn)) if v is None]
        raise AutotuneError(f"apply(tune=True) runs real training steps and needs "
                            f"{', '.join(missing)}; HINT: apply(model, loader, optimizer=opt, "
                            "loss_fn=fn), or tune=False to apply the rule-based plan")
    return bool(tune)


def measure(model: torch.nn.Module, loader: Any, plan: Plan, planned: Any, *,
            device: torch.device, optimizer: Any = None,
            loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
            tune: bool | SearchOptions | None = None,
            budget_s: float | None = None, remeasure: bool = False,
            batch_size: bool = False, budget: Budget | None = None) -> Measured:
    """Find the batch size (when asked), then tune, within one budget:
    ``budget`` (started by ``apply``) or a new one of ``budget_s``."""
    events = Report()
    if not wants_tuning(tune, loader, optimizer, loss_fn, events):
        if batch_size:
            raise AutotuneError("apply(batch_size=True) measures real training steps and needs "
                                "loader, optimizer and loss_fn")
        return Measured(plan, loader, events)
    assert optimizer is not None and loss_fn is not None
    if budget is None:
        budget = Budget(DEFAULT_BUDGET_S if budget_s is None else budget_s)
    found = None
    if batch_size:
        plan, loader, found = _with_batch_size(model, loader, optimizer, loss_fn, plan, planned,
                                               device=device, budget=budget, events=events)
    result = run_tuning(model, loader, optimizer, loss_fn, plan, context=planned.context,
                        manager=planned.manager, device=device, budget=budget,
                        remeasure=remeasure,
                        options=tune if isinstance(tune, SearchOptions) else None)
    _report_events(result.report, events, raise_untrainable=bool(tune))
    return Measured(result.plan, loader, events, result.report, found)


def _with_batch_size(model: torch.nn.Module, loader: Any, optimizer: Any, loss_fn: Any,
                     plan: Plan, planned: Any, *, device: torch.device, budget: Budget,
                     events: Report) -> tuple[Plan, Any, BatchSizeResult | None]:
    """The batch-size search of ``apply(batch_size=True)``: the plan with the
    settings that keep the effective batch, the loader rebuilt with the
    micro-batch found, and what was found (None when the user's settings
    pin the micro-batch: then it is skipped with a warning)."""
    manager, context = planned.manager, planned.context
    kept = kept_by_user(plan, manager, context, int(getattr(loader, "batch_size", 0) or 1))
    if kept:
        events.add(NAME, Kind.WARNING, f"batch-size search skipped: {kept}, so another "
                   "micro-batch would change the effective batch")
        return plan, loader, None
    found = find_batch_size(model, loader, optimizer, loss_fn, plan, context=context,
                            manager=manager, device=device, budget=budget)
    if found.micro_batch != loader.batch_size:
        loader = found.loader(loader)
    plan = with_settings(plan, manager.batch_size_found(
        plan, context, found.micro_batch, found.effective_batch, found.largest_fitting))
    events.add(NAME, Kind.APPLIED, f"batch size: micro-batch {found.micro_batch} x "
               f"{manager.micro_batches(plan)} accumulation steps = effective batch "
               f"{found.effective_batch}")
    return plan, loader, found


def _report_events(report: TuningReport, events: Report, *, raise_untrainable: bool) -> None:
    """What the search did, as events of the apply report. A baseline that
    could not train at all is an error with ``tune=True`` (else a warning):
    said now, not at fit."""
    confirmation = report.confirmation
    first = report.trials[0] if report.trials else None
    if first is not None and not report.from_cache and first.status.value == "disqualified":
        # The user's model and loader did not train at all: say so now,
        # not at fit. Nothing measured ships; the plan keeps only what
        # needs no measurement.
        message = (f"measured tuning could not train this model on this loader: "
                   f"{first.reason}")
        hint = ("HINT: check the batch contract -- (inputs, targets) with loss_fn, a dict "
                "batch for model(**batch), or step_fn(model, batch) (docs/engine.md)")
        if raise_untrainable:
            raise TrainingError(f"{message}; {hint}")
        events.add(NAME, Kind.WARNING, f"{message}; nothing measured is applied; {hint}")
        return
    if report.from_cache:
        events.add(NAME, Kind.APPLIED, f"measured settings from the tuning cache "
                   f"({report.cache_path}); no trials ran")
    elif confirmation is not None and not confirmation.shipped:
        events.add(NAME, Kind.WARNING, f"{len(report.measured_trials())} trials in "
                   f"{report.search_s:.1f} s; {confirmation.verdict}")
    elif report.winner is not None:
        speed = confirmation.gain if confirmation is not None else report.speedup
        events.add(NAME, Kind.APPLIED, f"{len(report.measured_trials())} trials in "
                   f"{report.search_s:.1f} s; winner: {report.winner.label}"
                   + (f" ({speed:.2f}x PyTorch defaults)" if speed else ""))
    else:
        events.add(NAME, Kind.WARNING, "nothing could be measured; the plan keeps its "
                   "rule-based values: " + (report.trials[0].reason if report.trials else ""))
    if report.interrupted:
        events.add(NAME, Kind.WARNING, "tuning was interrupted; nothing unconfirmed is "
                   "applied, and the next call continues the search")
    elif not report.complete and not report.from_cache:
        events.add(NAME, Kind.WARNING, f"the {report.budget_s:g} s budget ran out before the "
                   "search finished; cached as partial: the next call continues it")
    if report.cache_error:
        events.add(NAME, Kind.WARNING, f"{report.cache_error}: the result is used, not cached")
