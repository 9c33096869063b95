"""Opt-in: the largest micro-batch that fits, with the effective batch kept.

``find_batch_size`` probes real training steps through the engine (the
plan's precision and compile settings included, since they change memory)
at growing micro-batch sizes -- doubling, then bisecting between the
largest size that fitted and the smallest that ran out of memory -- and
keeps a safety margin below the largest that fitted (memory fragments, and
a later batch may be larger). The effective batch (micro-batch x
micro-batches per optimizer step) stays what the user trains with: the
micro-batch is the largest divisor of it that fits, and the plugin that
accumulates micro-batches makes up the rest (``autotune_micro_batches``,
``autotune_batch_size_found``: for example gradient accumulation).

Out-of-memory is caught (``torch.cuda.OutOfMemoryError`` and RuntimeErrors
saying "out of memory"); model, optimizer, RNG and flags are restored after
every probe. With ``val_loader``, evaluation is probed at the chosen size
too; an evaluation OOM is reported (evaluate with smaller batches) but never
changes the training batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader

from autotune.applying import resolve_device
from autotune.engine.engine import Engine
from autotune.errors import AutotuneError
from autotune.plan.plan import Plan, Setting, Source
from autotune.plugin.manager import PluginManager
from autotune.tuner.budget import Budget, BudgetStop, run_bounded
from autotune.tuner.state import Snapshot
from autotune.tuner.trial import classify_failure, is_oom
from autotune.workload.loaders import rebuild_loader

log = logging.getLogger("autotune.tuner")


@dataclass(frozen=True)
class BatchSizeResult:
    micro_batch: int
    accumulation_steps: int
    effective_batch: int
    #: The largest micro-batch measured to fit, before the safety margin.
    largest_fitting: int
    #: The smallest size that ran out of memory; None if none did.
    smallest_oom: int | None
    #: ``(size, "fits" | "out of memory (...)")`` for every probe, in order.
    probes: tuple[tuple[int, str], ...]
    #: None without ``val_loader``; else whether evaluation fit at ``micro_batch``.
    eval_fits: bool | None = None
    note: str = ""

    def loader(self, loader: DataLoader) -> DataLoader:
        """``loader`` rebuilt with :attr:`micro_batch` (same dataset and sampler)."""
        return with_batch_size(loader, self.micro_batch)


def with_batch_size(loader: DataLoader, batch_size: int, *, num_workers: int | None = None) -> DataLoader:
    """A DataLoader like ``loader`` but with another batch size (and, with
    ``num_workers``, another worker count): :func:`autotune.workload.loaders.rebuild_loader`,
    so everything else the user set (sampler, timeout, in_order...) is kept."""
    if type(loader) is not DataLoader or loader.batch_size is None:
        raise AutotuneError("batch-size search needs a torch DataLoader built with batch_size=... "
                            "(not a custom batch_sampler), so the batch size can be changed")
    workers = loader.num_workers if num_workers is None else num_workers
    return rebuild_loader(loader, num_workers=workers, pin_memory=loader.pin_memory,
                          persistent_workers=loader.persistent_workers,
                          prefetch_factor=loader.prefetch_factor, batch_size=batch_size)


def with_settings(plan: Plan, settings: Mapping[str, Mapping[str, Setting]], *,
                  force: bool = False) -> Plan:
    """``plan`` with the settings plugins returned from
    ``autotune_batch_size_found`` (``{plugin: {key: Setting}}``); a user's
    override still wins unless ``force`` (a probe's own plan, never shipped)."""
    for plugin, keys in settings.items():
        for key, setting in keys.items():
            source = Source.OVERRIDE if force else setting.source
            plan = plan.with_values(plugin, {key: setting.value}, source, setting.reason)
    return plan


def kept_by_user(plan: Plan, manager: Any, context: Any, batch_size: int) -> str | None:
    """Why the micro-batch cannot change without changing the effective
    batch ("steps is set by the user" for the setting a plugin would have
    to change), or ``None`` when it can."""
    effective = batch_size * manager.micro_batches(plan)
    wanted = manager.batch_size_found(plan, context, batch_size, effective)
    for plugin, keys in wanted.items():
        for key in keys:
            setting = plan.setting(plugin, key)
            if setting is not None and setting.source is Source.OVERRIDE:
                return f"{plugin}.{key} is set by the user"
    if not wanted:
        return "no plugin in the plan makes up micro-batches (autotune_batch_size_found)"
    return None


def _divisor_at_most(n: int, limit: int) -> int:
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def find_batch_size(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable[[Any, Any], torch.Tensor], plan: Plan | None = None, *,
                    context: Any = None, manager: Any = None,
                    device: str | torch.device | None = None, effective_batch: int | None = None,
                    max_batch: int | None = None, safety_margin: float = 0.9, steps: int = 2,
                    val_loader: DataLoader | None = None, budget: Any = None) -> BatchSizeResult:
    """See the module docstring. ``effective_batch`` defaults to the loader's
    batch size times the plan's micro-batches per optimizer step
    (``autotune_micro_batches``); ``max_batch`` caps the
    probes (default: the effective batch). With a ``budget``
    (:class:`~autotune.tuner.budget.Budget`) each probe runs bounded by it;
    one the budget stops ends the search with what fitted so far."""
    if not 0 < safety_margin <= 1:
        raise AutotuneError(f"safety_margin must be in (0, 1], got {safety_margin}")
    plan = plan if plan is not None else Plan()
    manager = manager if manager is not None else PluginManager()
    start = int(loader.batch_size or 0)
    if start < 1:
        raise AutotuneError("batch-size search needs a loader with batch_size >= 1")
    effective = effective_batch or start * manager.micro_batches(plan)
    cap = min(max_batch or effective, effective)
    target = resolve_device(device)
    snapshot = Snapshot.capture(model, optimizer, loader)
    prober = _Prober(model, loader, optimizer, loss_fn, plan, manager=manager, context=context,
                     device=target, steps=steps, snapshot=snapshot, budget=budget)
    bounds = _Bounds(size=min(start, cap))
    stopped = note = ""
    eval_fits = None
    try:
        try:
            _narrow(bounds, prober.fits, cap, target)
        except BudgetStop:
            stopped = "the budget ran out during the batch-size search"
            prober.probes.append((bounds.size, "stopped: budget"))
            if not bounds.fit:  # nothing measured to fit: keep the user's batch
                bounds.fit = min(start, cap)
        fit, oom = bounds.fit, bounds.oom
        limit = fit if oom is None else max(1, int(fit * safety_margin))
        micro = _divisor_at_most(effective, limit)
        if val_loader is not None:
            eval_fits, note = prober.evaluation_fits(val_loader, micro)
    finally:
        snapshot.restore()
    if stopped:
        note = f"{stopped}; {note}" if note else stopped
    result = BatchSizeResult(micro, effective // micro, effective, fit, oom, tuple(prober.probes),
                             eval_fits, note)
    log.info("batch size: micro-batch %d x %d accumulation steps = %d (largest fitting %d)",
             result.micro_batch, result.accumulation_steps, effective, fit)
    return result


@dataclass
class _Bounds:
    """Where the search stands: the size being shrunk from, the largest size
    that fitted (0: none yet) and the smallest that ran out of memory."""

    size: int
    fit: int = 0
    oom: int | None = None


def _narrow(bounds: _Bounds, fits: Callable[[int], bool], cap: int, device: torch.device) -> None:
    """Shrink until a size fits, grow by doubling up to ``cap``, then bisect
    the gap to the smallest size that did not fit. ``bounds`` holds what was
    learnt so far when a probe raises (``BudgetStop``)."""
    while bounds.size >= 1 and not fits(bounds.size):  # shrink until one fits
        bounds.oom, bounds.size = bounds.size, bounds.size // 2
    if bounds.size < 1:
        raise AutotuneError("even a batch of 1 runs out of memory: the model does not "
                            f"fit on {device}")
    bounds.fit = bounds.size
    while bounds.oom is None and bounds.fit < cap:  # grow by doubling up to the cap
        nxt = min(bounds.fit * 2, cap)
        if fits(nxt):
            bounds.fit = nxt
        else:
            bounds.oom = nxt
    while bounds.oom is not None and bounds.oom - bounds.fit > max(1, bounds.fit // 16):
        mid = (bounds.fit + bounds.oom) // 2  # bisect the gap
        if fits(mid):
            bounds.fit = mid
        else:
            bounds.oom = mid


class _Prober:
    """Probes sizes with real training steps on the user's objects, their
    state restored around every probe, and records what each showed."""

    def __init__(self, model: torch.nn.Module, loader: DataLoader, optimizer: Any, loss_fn: Any,
                 plan: Plan, *, manager: Any, context: Any, device: torch.device, steps: int,
                 snapshot: Snapshot, budget: Budget | None) -> None:
        self.model, self.loader, self.optimizer, self.loss_fn = model, loader, optimizer, loss_fn
        self.plan, self.manager, self.context, self.device = plan, manager, context, device
        self.steps, self.snapshot, self.budget = steps, snapshot, budget
        #: ``(size, "fits" | "out of memory (...)")`` for every probe, in order.
        self.probes: list[tuple[int, str]] = []

    def _train(self, size: int) -> None:
        probe_loader = with_batch_size(self.loader, size, num_workers=0)
        # One optimizer step per micro-batch, so the optimizer's state is
        # allocated within the probe's few steps.
        probe_plan = with_settings(self.plan, self.manager.batch_size_found(
            self.plan, self.context, size, size), force=True)
        # live=(): no live adapter, so nothing changes while a probe runs.
        engine = Engine(self.model, self.optimizer, self.loss_fn, probe_plan, manager=self.manager,
                        context=self.context, device=self.device, progress=False, live=())
        try:
            engine.fit(probe_loader, epochs=self.steps, max_steps=self.steps)
        finally:
            engine.close()

    def fits(self, size: int) -> bool:
        """Whether ``size`` trains without running out of memory (any other
        failure propagates; so does ``BudgetStop``)."""
        budget = self.budget
        self.snapshot.restore()
        try:
            if budget is not None and budget.limited:
                if budget.expired():
                    raise BudgetStop
                run_bounded(lambda: self._train(size), budget, name="autotune-batch-size")
            else:
                self._train(size)
            self.probes.append((size, "fits"))
            return True
        except Exception as exc:  # noqa: BLE001 - only OOM means "too big"
            if not is_oom(exc):
                raise
            self.probes.append((size, classify_failure(exc)))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return False
        finally:
            self.snapshot.restore()

    def evaluation_fits(self, val_loader: DataLoader, size: int) -> tuple[bool, str]:
        """Whether evaluation fits at ``size``, and the note when it does not."""
        self.snapshot.restore()
        engine = Engine(self.model, self.optimizer, self.loss_fn, self.plan, manager=self.manager,
                        context=self.context, device=self.device, progress=False, live=())
        try:
            first = next(iter(with_batch_size(val_loader, size, num_workers=0)))
            engine.evaluate([first])
            return True, ""
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return False, (f"evaluation at batch {size} ran out of memory; evaluate with a "
                           "smaller batch (the training batch is unchanged)")
        finally:
            engine.close()
            self.snapshot.restore()
