"""``autotune.apply(model, loader)``: plan, (measure,) apply; the :class:`Tuned` result.

The flow is three stages, each usable on its own:

1. :func:`autotune.planner.make_plan` -- detect, match a profile, ask the
   plugins, apply the user's overrides;
2. :func:`autotune.tuner.tune` -- measured tuning: trials on the user's own
   model and loader, the winner written into the plan as "measured"
   (when loader, optimizer and loss_fn are given; see docs/tuning.md);
3. :func:`~autotune.applying.apply_plan` -- move the model to the device
   and run the plugins' ``autotune_apply_model`` / ``autotune_apply_loader``
   hooks.

Training happens in the engine built by :meth:`Tuned.engine`, whose
plugins' ``autotune_setup_engine`` hooks install the step behaviour.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import torch

# apply_plan and the Tuned result live in autotune.applying (the tuner,
# cross-validation and DDP use them without this facade); re-exported here.
from autotune.applying import Tuned, _check_model, apply_plan, resolve_device
from autotune.errors import AutotuneError
from autotune.machine.hardware import Hardware
from autotune.plan.report import Kind, Report
from autotune.planner import make_plan
from autotune.plugin.context import Workload
from autotune.plugin.manager import PluginManager
from autotune.tuner.budget import Budget
from autotune.tuner.integration import measure
from autotune.tuner.online_setup import prepare_online
from autotune.tuner.options import OnlineOptions, SearchOptions
from autotune.tuner.rehearsal import rehearse
from autotune.tuner.tuning import DEFAULT_BUDGET_S
from autotune.workload.contract import StepContract

log = logging.getLogger("autotune.api")


def apply(model: torch.nn.Module, loader: Any = None, *, optimizer: Any = None,
          profile: str | None = None, disable: Iterable[str] = (),
          overrides: Mapping[str, Mapping[str, Any]] | None = None, plugins: Iterable[Any] = (),
          strict: bool = False, device: str | torch.device | None = None,
          hardware: Hardware | None = None,
          profile_dirs: Iterable[str | os.PathLike[str]] = (),
          manager: PluginManager | None = None,
          loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
          step_fn: Callable[[Any, Any], Any] | None = None,
          batch_size_fn: Callable[[Any], int] | None = None,
          tune: bool | str | SearchOptions | OnlineOptions | None = None,
          budget_s: float | None = None, remeasure: bool = False,
          batch_size: bool = False, allow: Iterable[str] = ()) -> Tuned:
    """Detect the machine, match a profile, plan, and apply the plan to
    ``model`` and ``loader``.

    :param optimizer: only inspected (plugins may reason about its type).
    :param profile: force a profile by name instead of matching one.
    :param disable: plugins to switch off; their part of training stays
        PyTorch's default.
    :param overrides: ``{plugin: {key: value}}``, beating every other source.
    :param plugins: extra plugin objects to register.
    :param strict: re-raise a plugin's exception instead of leaving it out.
    :param device: where to train; default: CUDA when available, else CPU.
    :param hardware: use this description instead of detecting.
    :param loss_fn: ``loss_fn(outputs, targets)``; with ``optimizer`` and
        ``loader`` it lets measured tuning run real training steps. Dict
        batches: ``loss_fn(model(**batch), batch)``; without a ``loss_fn``
        the model's own loss (``outputs.loss``, a dict of losses summed).
    :param step_fn: ``step_fn(model, batch) -> loss`` for any other batch
        (several inputs, detection, a loss that needs the inputs); measured
        like ``loss_fn``. See :mod:`autotune.workload.contract`.
    :param batch_size_fn: ``batch_size_fn(batch) -> int``, the samples in a
        batch, when the default count (targets' or first tensor's leading
        dimension; one per target dict) is wrong.
    :param tune: measure candidate settings (docs/tuning.md); default: when
        loader, optimizer and loss_fn (or step_fn) are given; ``True`` also
        with the model's own loss; a :class:`~autotune.tuner.SearchOptions`:
        yes, with those options. ``"online"`` (an ``OnlineOptions``): the
        search runs in ``tuned.engine(...)``'s training; ``"rehearse"``
        (``OnlineOptions(rehearse=True)``): that search before training,
        for up to ``budget_s``, the model restored after.
    :param allow: online or rehearsing, effects beyond speed to try: ``["precision"]``.
    :param budget_s: seconds ``apply`` may spend measuring (default 120),
        everything included, within :data:`autotune.tuner.budget.TOLERANCE_S`;
        a search cut short is cached as partial, and continued next call.
    :param remeasure: ignore the tuning cache and measure again.
    :param batch_size: also find the largest micro-batch that fits, keeping
        the effective batch with gradient accumulation.
    :raises AutotuneError: on bad input (unknown plugin/profile/key, ...).
    """
    # The budget covers all of apply from here: planning, the batch-size
    # search, every trial and the confirmation.
    budget = Budget(DEFAULT_BUDGET_S if budget_s is None else budget_s)
    for name, flag in (("remeasure", remeasure), ("batch_size", batch_size), ("strict", strict)):
        if not isinstance(flag, bool):
            raise AutotuneError(f"apply: {name} must be True or False, got {flag!r}")
    online = _online_options(tune, allow, batch_size)
    _check_model(model)
    target = resolve_device(device)
    planned = make_plan(hardware=hardware, profile=profile,
                        workload=Workload.inspect(model, loader, optimizer), disable=disable,
                        overrides=overrides, profile_dirs=profile_dirs, plugins=plugins,
                        strict=strict, manager=manager)
    contract = StepContract.of(loss_fn, step_fn, batch_size_fn)
    if online is not None and online.rehearse:
        return _apply_rehearsed(model, loader, optimizer, contract, planned, target, online,
                                budget, remeasure)
    if online is not None:
        return _apply_online(model, loader, optimizer, contract, planned, target, online,
                             remeasure)
    # Measured tuning refines the plan here: trials on the user's model and
    # loader (state restored after), the winner written with source "measured".
    measured = measure(model, loader, planned.plan, planned, device=target, optimizer=optimizer,
                       loss_fn=contract, tune=tune, budget_s=budget_s, remeasure=remeasure,
                       batch_size=batch_size, budget=budget)
    tuned = apply_plan(model, measured.loader, measured.plan, context=planned.context,
                       manager=planned.manager, device=target,
                       recommendation=planned.recommendation, report=measured.events)
    return replace(tuned, tuning=measured.report, contract=contract)


def _online_options(tune: Any, allow: Iterable[str], batch_size: bool) -> OnlineOptions | None:
    """The options of online tuning when ``tune`` asks for it, else None;
    an unknown ``tune``, an ``allow`` without online tuning or a batch-size
    search with it is an error."""
    online = tune in ("online", "rehearse") or isinstance(tune, OnlineOptions)
    if (isinstance(tune, str) and not online) or (
            tune is not None and not isinstance(tune, (bool, str, SearchOptions, OnlineOptions))):
        raise AutotuneError(f"apply: tune must be None, True, False, 'online', 'rehearse', a "
                            f"SearchOptions or an OnlineOptions, got {tune!r}")
    allowed = tuple([allow] if isinstance(allow, str) else allow)
    if allowed and not online:
        raise AutotuneError(f"apply: allow={list(allowed)} is for online tuning "
                            "(tune='online' or 'rehearse'); the up-front search measures "
                            "precision already")
    if not online:
        return None
    if batch_size:
        raise AutotuneError("apply(batch_size=True) runs with the up-front trial search; online "
                            "tuning and rehearsals never change the batch size")
    options = tune if isinstance(tune, OnlineOptions) else OnlineOptions(
        rehearse=tune == "rehearse")
    return replace(options, allow=allowed) if allowed else options


def _apply_online(model: torch.nn.Module, loader: Any, optimizer: Any, contract: StepContract,
                  planned: Any, target: torch.device, options: OnlineOptions,
                  remeasure: bool) -> Tuned:
    """No trial now: the plan starts at PyTorch defaults (or a cached online
    winner) and ``tuned.engine(...)`` searches while it trains."""
    if loader is None:
        raise AutotuneError("apply(tune='online') tunes the run that trains on loader=...; "
                            "HINT: pass the training DataLoader")
    plan, tuning = prepare_online(model, loader, optimizer, contract, planned.plan,
                                  context=planned.context, manager=planned.manager,
                                  device=target, options=options, remeasure=remeasure)
    tuned = apply_plan(model, loader, plan, context=planned.context, manager=planned.manager,
                       device=target, recommendation=planned.recommendation)
    return replace(tuned, tuning=tuning, contract=contract)


def _apply_rehearsed(model: torch.nn.Module, loader: Any, optimizer: Any,
                     contract: StepContract, planned: Any, target: torch.device,
                     options: OnlineOptions, budget: Budget, remeasure: bool) -> Tuned:
    """The online search run before training for up to the budget, on the
    user's objects restored after; the winner is applied as a fixed plan."""
    if loader is None or optimizer is None:
        raise AutotuneError("apply(tune='rehearse') trains real steps and needs loader=... and "
                            "optimizer=... (and loss_fn=..., step_fn=... or the model's own "
                            "loss)")
    plan, rehearsal = rehearse(model, loader, optimizer, contract, planned, device=target,
                               options=options, budget=budget, remeasure=remeasure)
    found = rehearsal.report
    events = Report()
    events.add("tuner", Kind.APPLIED if found.complete else Kind.WARNING,
               f"rehearsal: {found.steps} steps in {rehearsal.seconds:.1f} s, "
               f"{len(found.tried)} candidates; winner: {found.winner_label}"
               + (f" ({found.gain:.2f}x, measured in pairs)" if found.gain != 1.0 else "")
               + ("" if found.complete else "; the budget ran out before the search ended"))
    tuned = apply_plan(model, loader, plan, context=planned.context, manager=planned.manager,
                       device=target, recommendation=planned.recommendation, report=events)
    return replace(tuned, tuning=rehearsal, contract=contract)


__all__ = ["Tuned", "apply", "apply_plan", "resolve_device"]
