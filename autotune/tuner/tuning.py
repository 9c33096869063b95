"""``tune()``: measure candidate plans on the user's own model and loader.

This is the step between planning and application in
:func:`autotune.apply`: it takes the plan the rules and the profile made,
measures the baseline and the candidates (see :mod:`autotune.tuner.search`),
confirms the winner against the baseline (:mod:`autotune.tuner.confirm`)
and returns the plan with the winner's values written with source
``measured`` (a user override still wins), together with a
:class:`~autotune.tuner.report.TuningReport`. The user's model, optimizer,
RNG and global flags are restored afterwards, bitwise (see
:mod:`autotune.tuner.state`).

Results are cached per workload (:mod:`autotune.tuner.cache`): a complete
search is reused as it is; a search the budget or Ctrl-C cut short is
cached as partial and continued by the next call, which re-measures the
baseline and the incumbent it left and goes on with the steps not done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import torch

from autotune.applying import resolve_device
from autotune.errors import AutotuneError
from autotune.plan.plan import Plan, _kind
from autotune.tuner.budget import Budget
from autotune.tuner.cache import (TuningCache, batch_signature, loader_signature, make_key,
                                  model_signature, optimizer_signature)
from autotune.tuner.candidates import (Config, Group, baseline_config, planned_config,
                                       searched_keys, searched_plugins)
from autotune.tuner.options import SearchOptions
from autotune.tuner.records import SearchState
from autotune.tuner.report import TuningReport
from autotune.tuner.runner import TrialRunner, Workbench
from autotune.tuner.search import Search, search_groups
from autotune.tuner.state import Snapshot
from autotune.workload.batches import model_device
from autotune.workload.contract import StepContract
from autotune.workload.loaders import one_shot, peek_batch

log = logging.getLogger("autotune.tuner")

DEFAULT_BUDGET_S = 120.0


@dataclass(frozen=True)
class TuningResult:
    #: The input plan with the winner's values as source "measured".
    plan: Plan
    report: TuningReport
    #: The winning configuration (``{plugin: {key: value}}``); None when
    #: nothing could be measured.
    winner: Config | None
    baseline: Config


def _check(model: Any, loader: Any, optimizer: Any, loss_fn: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise AutotuneError(f"tune: model must be a torch.nn.Module, got {type(model).__name__}")
    if loader is None:
        raise AutotuneError("tune: measured tuning needs the training DataLoader (loader=...); "
                            "HINT: pass tune=False to plan without measuring")
    if one_shot(loader):
        raise AutotuneError(f"tune: the loader is a one-shot iterator ({type(loader).__name__}): "
                            "measured tuning iterates it many times; HINT: pass a DataLoader, a "
                            "list of batches or any re-iterable object, or tune=False")
    if not hasattr(loader, "__iter__"):
        raise AutotuneError(f"tune: the loader must be iterable (a DataLoader, a list of "
                            f"batches...), got {type(loader).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise AutotuneError(f"tune: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}; HINT: apply(..., optimizer=opt, "
                            "loss_fn=fn) or tune=False")
    if not isinstance(loss_fn, StepContract) and not callable(loss_fn):
        raise AutotuneError(f"tune: loss_fn must be callable as loss_fn(outputs, targets), got "
                            f"{type(loss_fn).__name__}")


def _winner_reason(report: TuningReport, cached_at: str | None = None) -> str:
    winner, speed = report.winner, report.speedup
    suffix = f" (cached {cached_at})" if cached_at else ""
    confirmation = report.confirmation
    if confirmation is not None and not confirmation.shipped:
        return f"measured: {confirmation.verdict}{suffix}"
    if winner is None:
        return "measured" + suffix
    if winner.index == report.baseline_index:
        return "measured: no candidate beat PyTorch defaults beyond noise" + suffix
    gain = confirmation.gain if confirmation is not None and confirmation.gain else speed
    return (f"measured fastest here: {gain:.2f}x PyTorch defaults, confirmed back to back "
            f"(trial #{winner.index}){suffix}")


def valid_settings(settings: Any, plan: Plan, knobs: Any) -> dict[str, dict[str, Any]]:
    """Cached winner settings, only if every plugin, key and kind of value
    fits this plan: ``ValueError`` otherwise (the entry is measured again)."""
    if not isinstance(settings, Mapping):
        raise ValueError("winner_settings is not a mapping")
    out: dict[str, dict[str, Any]] = {}
    for plugin, values in settings.items():
        if plugin not in plan.settings or not isinstance(values, Mapping):
            raise ValueError(f"winner_settings names {plugin!r}, not a plugin of this plan")
        allowed = searched_keys(plan, plugin, knobs)
        for key, value in values.items():
            if key not in allowed:
                raise ValueError(f"winner_settings sets {plugin}.{key}, which is not searched")
            planned = plan.get(plugin, key)
            if value is not None and planned is not None and _kind(value) != _kind(planned):
                raise ValueError(f"winner_settings {plugin}.{key}={value!r} is not the kind of "
                                 f"value the plan has ({planned!r})")
        out[str(plugin)] = dict(values)
    return out


def _read_entry(store: TuningCache, key: str, plan: Plan, knobs: Any) -> dict[str, Any] | None:
    """The cache entry for ``key``, checked for shape and type; ``None`` when
    absent or not to be trusted (then removed and measured again)."""
    entry = store.load(key)
    if entry is None:
        return None
    try:
        complete = entry.get("complete", False)
        if not isinstance(complete, bool):
            raise ValueError("complete is not true/false")
        report = TuningReport.from_dict(entry["report"])
        winner = valid_settings(entry.get("winner_settings", report.winner_settings), plan, knobs)
        state = SearchState.from_dict(entry.get("state", {}))
        valid_settings(state.incumbent, plan, knobs)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring tuning cache entry %s of the wrong shape (%s); measuring again",
                    store.path(key), exc)
        store.forget(key)
        return None
    return {"complete": complete, "report": report, "winner": winner, "state": state,
            "created": str(entry.get("created", ""))}


def tune(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
         loss_fn: Callable[[Any, Any], torch.Tensor], plan: Plan, *, context: Any,
         manager: Any, device: str | torch.device | None = None,
         budget_s: float | None = DEFAULT_BUDGET_S, remeasure: bool = False, cache: bool = True,
         options: SearchOptions | None = None, progress: bool = True,
         budget: Budget | None = None) -> TuningResult:
    """Measure and return the fastest plan; see the module docstring.

    :param budget_s: seconds the search may take, everything included
        (``None``: no limit); ignored when ``budget`` is given.
    :param budget: a :class:`~autotune.tuner.budget.Budget` already running
        (``autotune.apply`` starts one before the batch-size search).
    :param remeasure: ignore a cached result and measure again.
    :param cache: read and write the tuning cache.
    :param options: search and trial options (noise margin, chunks...).
    """
    _check(model, loader, optimizer, loss_fn)
    budget = budget if budget is not None else Budget(budget_s)
    options = options or SearchOptions()
    target = resolve_device(device)
    if model_device(model) != target:
        model.to(target)  # apply_plan would move it anyway; snapshot it where it trains
    # The knobs describe this loader (the batch-size search may have rebuilt it).
    context = replace(context, workload=replace(context.workload, loader=loader))
    knobs = manager.knobs(context, plan)
    groups = search_groups(plan, context, target.type, knobs, options.only, manager=manager)
    searched = searched_plugins(knobs, groups)
    baseline = baseline_config(plan, knobs, searched)
    snapshot = Snapshot.capture(model, optimizer, loader)
    parts = cache_parts(model, loader, optimizer, loss_fn, plan, context, target, options,
                         snapshot)
    key = make_key(parts)
    store = TuningCache()
    resume: SearchState | None = None
    if cache and not remeasure:
        entry = _read_entry(store, key, plan, knobs)
        if entry is not None and entry["complete"]:
            report = entry["report"].as_cached(str(store.path(key)))
            winner = Config(entry["winner"])
            log.info("tuning cache hit %s: no trials", store.path(key))
            out = winner.to_plan(plan, _winner_reason(report, entry["created"]))
            return TuningResult(out, report, winner, baseline)
        if entry is not None:
            resume = entry["state"]
            log.info("continuing the search cached as partial in %s", store.path(key))

    bench = Workbench(model, loader, optimizer, loss_fn, plan, context, manager, target, knobs)
    runner = TrialRunner(bench, snapshot, baseline, budget=budget, options=options.trial,
                         progress=progress)
    search = Search(runner, options, resume=resume)
    interrupted = _run_search(search, runner, snapshot, plan, searched, baseline, knobs, groups)
    state = search.state()
    if interrupted:
        _withhold_unconfirmed(search, runner, baseline)
    report = _report(search, runner, budget, interrupted=interrupted, key=key, target=target,
                     resume=resume)
    winner = search.incumbent_config if search.incumbent is not None else None
    out = winner.to_plan(plan, _winner_reason(report)) if winner is not None else plan
    baseline_ok = search.baseline_trial is not None and search.baseline_trial.ok
    if cache and baseline_ok:
        report = _store(store, key, parts, report, state)
    return TuningResult(out, report, winner, baseline)


def cache_parts(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                 loss_fn: Any, plan: Plan, context: Any, target: torch.device,
                 options: SearchOptions, snapshot: Snapshot) -> dict[str, Any]:
    """What the cache key is made of: the machine, torch, the model, a batch,
    the loader, optimizer and loss, the plan and the search options. Peeking
    at a batch may advance RNG state: the snapshot is restored after."""
    try:
        try:
            batch = peek_batch(loader)
        except StopIteration:
            raise AutotuneError("tune: the loader yields no batches; measured tuning needs at "
                                "least one") from None
        parts = {
            "hardware": plan.hardware_fingerprint or context.hardware.fingerprint,
            "torch": torch.__version__, "device": str(target),
            "model": model_signature(model), "batch": batch_signature(batch),
            "loader": loader_signature(loader), "optimizer": optimizer_signature(optimizer),
            "loss": StepContract.of(loss_fn).describe(),
            "plan": {p: plan.values(p) for p in plan.plugins()},
            "search": {"min_gain": options.min_gain, "only": options.only},
        }
        del batch
    finally:
        snapshot.restore()
    return parts


def _run_search(search: Search, runner: TrialRunner, snapshot: Snapshot, plan: Plan,
                searched: list[str], baseline: Config, knobs: Any, groups: list[Group]) -> bool:
    """The search's steps in order (see :mod:`autotune.tuner.search`);
    True when Ctrl-C cut it short. Restores the user's state after."""
    try:
        if search.run_baseline().ok:
            search.resume_incumbent()
            search.try_planned(planned_config(plan, searched, baseline, knobs))
            search.run_groups(groups)
            search.run_confirmation()
        elif runner.trials and runner.trials[0].status.value == "stopped":
            log.warning("the budget ran out during the baseline (PyTorch defaults): nothing "
                        "was measured")
        else:
            log.warning("the baseline (PyTorch defaults) failed: %s; nothing else is measured",
                        runner.trials[0].reason)
    except KeyboardInterrupt:
        log.warning("tuning interrupted: keeping the best configuration measured so far")
        search.settle_interrupted()
        return True
    finally:
        snapshot.restore()
        runner.close()
    return False


def _withhold_unconfirmed(search: Search, runner: TrialRunner, baseline: Config) -> None:
    """Ctrl-C before the confirmation: nothing unconfirmed ships. The cached
    state keeps the candidate, and the next call confirms it."""
    if search.incumbent is None or search.incumbent_config.key() == baseline.key() \
            or search.confirmation is not None:
        return
    unconfirmed = search.incumbent
    log.warning("interrupted before #%d (%s) was confirmed against PyTorch defaults: "
                "defaults ship", unconfirmed.index, unconfirmed.label)
    runner.set_verdict(unconfirmed, "fastest when Ctrl-C came, not confirmed: not shipped")
    search.incumbent, search.incumbent_config = search.baseline_trial, baseline


def _report(search: Search, runner: TrialRunner, budget: Budget, *, interrupted: bool, key: str,
            target: torch.device, resume: SearchState | None) -> TuningReport:
    winner_trial = search.incumbent
    winner = search.incumbent_config if winner_trial is not None else None
    return TuningReport(
        trials=tuple(runner.trials),
        winner_settings=winner.to_dict() if winner is not None else {},
        winner_index=winner_trial.index if winner_trial is not None else None,
        baseline_index=search.baseline_trial.index if search.baseline_trial else None,
        search_s=runner.elapsed(), budget_s=budget.seconds,
        budget_exhausted=(runner.budget_exhausted or search.out_of_budget
                          or search.budget_skipped),
        interrupted=interrupted, cache_key=key, pruned=tuple(search.pruned), device=str(target),
        complete=search.complete and not interrupted, resumed=resume is not None,
        earlier_trials=resume.earlier_trials if resume else 0,
        confirmation=search.confirmation)


def _store(store: TuningCache, key: str, parts: Mapping[str, Any], report: TuningReport,
           state: SearchState) -> TuningReport:
    """Cache the result (complete or partial); the report says where, or
    why it could not be written (the result is used all the same)."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entry = {"created": created, "parts": parts, "complete": report.complete,
             "winner_settings": report.winner_settings, "report": report.to_dict(),
             "state": state.to_dict()}
    try:
        path = store.store(key, entry)
        return replace(report, cache_path=str(path))
    except OSError as exc:
        why = f"the tuning cache at {store.root} cannot be written ({exc.strerror or exc})"
        log.warning("%s; the result is used but not cached", why)
        return replace(report, cache_error=why)
