"""``tune()``: measure candidate plans on the user's own model and loader.

This is the step between planning and application in
:func:`autotune.apply`: it takes the plan the rules and the profile made,
measures the baseline and the candidates (see :mod:`autotune.tuner.search`),
and returns the plan with the winner's values written with source
``measured`` (a user override still wins), together with a
:class:`~autotune.tuner.report.TuningReport`. The user's model, optimizer,
RNG and global flags are restored afterwards, bitwise (see
:mod:`autotune.tuner.state`); results are cached per workload (see
:mod:`autotune.tuner.cache`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from autotune.errors import AutotuneError
from autotune.plan import Plan
from autotune.tuner.cache import (TuningCache, batch_signature, loader_signature, make_key,
                                  model_signature, optimizer_signature)
from autotune.tuner.candidates import Config, baseline_config, planned_config
from autotune.tuner.report import TuningReport
from autotune.tuner.runner import TrialRunner, Workbench
from autotune.tuner.search import Search, SearchOptions, search_groups
from autotune.tuner.state import Snapshot

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


def _peek_batch(loader: Any) -> Any:
    """The first batch, loaded in this process (no worker start-up). The
    caller restores the RNG state this consumes."""
    from torch.utils.data import DataLoader

    probe = loader
    if type(loader) is DataLoader and loader.num_workers > 0:
        from autotune.plugins.dataloader import rebuild_loader

        probe = rebuild_loader(loader, num_workers=0)
    try:
        return next(iter(probe))
    except StopIteration:
        raise AutotuneError("tune: the loader yields no batches; measured tuning needs at "
                            "least one") from None


def _check(model: Any, loader: Any, optimizer: Any, loss_fn: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise AutotuneError(f"tune: model must be a torch.nn.Module, got {type(model).__name__}")
    if loader is None:
        raise AutotuneError("tune: measured tuning needs the training DataLoader (loader=...); "
                            "HINT: pass tune=False to plan without measuring")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise AutotuneError(f"tune: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}; HINT: apply(..., optimizer=opt, "
                            "loss_fn=fn) or tune=False")
    if not callable(loss_fn):
        raise AutotuneError(f"tune: loss_fn must be callable as loss_fn(outputs, targets), got "
                            f"{type(loss_fn).__name__}")


def _winner_reason(report: TuningReport, cached_at: str | None = None) -> str:
    winner, speed = report.winner, report.speedup
    suffix = f" (cached {cached_at})" if cached_at else ""
    if winner is None:
        return "measured" + suffix
    if winner.index == report.baseline_index:
        return "measured: no candidate beat PyTorch defaults beyond noise" + suffix
    return (f"measured fastest here: {speed:.2f}x PyTorch defaults "
            f"({winner.samples_per_s:.0f} samples/s, trial #{winner.index}){suffix}")


def tune(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
         loss_fn: Callable[[Any, Any], torch.Tensor], plan: Plan, *, context: Any,
         manager: Any, device: str | torch.device | None = None,
         budget_s: float | None = DEFAULT_BUDGET_S, remeasure: bool = False, cache: bool = True,
         options: SearchOptions | None = None, progress: bool = True) -> TuningResult:
    """Measure and return the fastest plan; see the module docstring.

    :param budget_s: seconds the search may take (None: no limit). The
        baseline is always measured, whatever the budget.
    :param remeasure: ignore a cached result and measure again.
    :param cache: read and write the tuning cache.
    :param options: search and trial options (noise margin, chunks...).
    """
    from autotune.api import resolve_device

    _check(model, loader, optimizer, loss_fn)
    options = options or SearchOptions()
    target = resolve_device(device)
    from autotune.batches import model_device

    if model_device(model) != target:
        model.to(target)  # apply_plan would move it anyway; snapshot it where it trains
    groups = search_groups(plan, context, target.type, options.only)
    baseline = baseline_config(plan, loader, threads_now=torch.get_num_threads(),
                               searched=[g.plugin for g in groups])
    snapshot = Snapshot.capture(model, optimizer, loader)
    try:
        batch = _peek_batch(loader)
        parts = {
            "hardware": plan.hardware_fingerprint or context.hardware.fingerprint,
            "torch": torch.__version__, "device": str(target),
            "model": model_signature(model), "batch": batch_signature(batch),
            "loader": loader_signature(loader), "optimizer": optimizer_signature(optimizer),
            "loss": getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__),
            "plan": {p: plan.values(p) for p in plan.plugins()},
            "search": {"min_gain": options.min_gain, "only": options.only},
        }
        del batch
    finally:
        snapshot.restore()
    key = make_key(parts)
    store = TuningCache()
    if cache and not remeasure:
        entry = store.load(key)
        if entry is not None:
            report = TuningReport.from_dict(entry["report"]).as_cached(str(store.path(key)))
            winner = Config(entry["report"].get("winner_settings") or {})
            log.info("tuning cache hit %s: no trials", store.path(key))
            out = winner.to_plan(plan, _winner_reason(report, entry.get("created")))
            return TuningResult(out, report, winner, baseline)

    bench = Workbench(model, loader, optimizer, loss_fn, plan, context, manager, target)
    runner = TrialRunner(bench, snapshot, baseline, budget_s=budget_s, options=options.trial,
                         progress=progress)
    search = Search(runner, options)
    interrupted = False
    try:
        if search.run_baseline().ok:
            plugins = list(dict.fromkeys([*baseline.values, *(g.plugin for g in groups)]))
            search.try_planned(planned_config(plan, plugins, baseline))
            search.run_groups(groups)
        else:
            log.warning("the baseline (PyTorch defaults) failed: %s; nothing else is measured",
                        runner.trials[0].reason)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("tuning interrupted: keeping the best configuration measured so far")
        search.settle_interrupted()
    finally:
        snapshot.restore()
        runner.close()
    winner_trial = search.incumbent
    winner = search.incumbent_config if winner_trial is not None else None
    report = TuningReport(
        trials=tuple(runner.trials),
        winner_settings=winner.to_dict() if winner is not None else {},
        winner_index=winner_trial.index if winner_trial is not None else None,
        baseline_index=search.baseline_trial.index if search.baseline_trial else None,
        search_s=runner.elapsed(), budget_s=budget_s,
        budget_exhausted=runner.budget_exhausted, interrupted=interrupted,
        cache_key=key, pruned=tuple(search.pruned), device=str(target))
    out = winner.to_plan(plan, _winner_reason(report)) if winner is not None else plan
    if cache and winner is not None and not interrupted:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = store.store(key, {"created": created, "parts": parts, "report": report.to_dict()})
        report = replace(report, cache_path=str(path))
    return TuningResult(out, report, winner, baseline)
