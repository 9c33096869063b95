"""How the folds share the machine: backend, folds at once, threads per
fold, devices, and the plan every fold trains with.

The schedule comes from the plugins (``autotune_fold_schedule``: the
built-in ``parallel_folds`` plugin's rules, for example) and, on CUDA, from
a measurement: the peak memory of a real training step of the user's model.
Without a plugin that answers, the folds run one after another in this
process. Whatever is decided is written into the fold plan, so
``CVResult.plan`` shows how the folds ran: the scheduling plugin's own
settings, and what the other plugins change under each fold's share of the
machine (``autotune_resource_share``: intra-op threads, capped loader
workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from autotune.cv.backends import BACKENDS, dask_threads_per_fold, default_client
from autotune.cv.context import context_for_plan
from autotune.cv.errors import CrossValidationError
from autotune.machine.hardware import Hardware
from autotune.plan.plan import Plan
from autotune.plan.resources import FoldPlan, Share
from autotune.plugin.context import Context
from autotune.plugin.manager import PluginManager, share_plan

log = logging.getLogger("autotune.cv")

#: Why the folds run one after another when no plugin schedules them.
NO_SCHEDULER = ("sequential: one fold after another in this process (no plugin schedules "
                "parallel folds: none that implements autotune_fold_schedule is enabled)")


@dataclass(frozen=True)
class Schedule:
    #: "sequential" (in this process), "loky", "threading" or "dask".
    backend: str
    concurrency: int
    threads_per_fold: int
    #: Local GPUs the folds are spread over (0: CPU, or whatever a Dask
    #: worker's default device is).
    gpus: int
    device: str
    #: The plan each fold trains with.
    plan: Plan
    reason: str
    per_fold_memory_bytes: int = 0
    client: Any = field(default=None, compare=False, repr=False)
    #: The devices the folds are spread over (fold ``i`` on ``devices[i % n]``).
    devices: tuple[str, ...] = ()
    #: The plugin that scheduled the folds ("" when none did).
    scheduled_by: str = ""

    @property
    def shared_process(self) -> bool:
        return self.backend == "threading"

    def device_for(self, fold: int) -> str:
        if self.devices:
            return self.devices[fold % len(self.devices)]
        return self.device


def _is_client(obj: Any) -> bool:
    return type(obj).__name__ == "Client" and hasattr(obj, "submit") and hasattr(obj, "scheduler_info")


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CrossValidationError(f"device={str(device)!r}, but CUDA is not available here")
    return str(resolved)


def _check_count(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise CrossValidationError(f"{name} must be an integer >= 1, got {value!r}")


def _backend_asked(backend: Any, max_concurrent: int | None,
                   threads_per_fold: int | None) -> tuple[Any, str | None]:
    """``(dask client or None, backend name or None)`` from the arguments,
    refused when they are not ones :func:`decide` takes."""
    client = None
    if _is_client(backend):
        client, backend = backend, "dask"
    if backend is not None and backend not in BACKENDS:
        raise CrossValidationError(f"backend={backend!r} is not one of {BACKENDS} or a "
                                   "dask.distributed.Client")
    _check_count("max_concurrent", max_concurrent)
    _check_count("threads_per_fold", threads_per_fold)
    return client, backend


def _fold_plan(plan: Plan, scheduler: str, folds: FoldPlan, context: Context,
               manager: PluginManager) -> Plan:
    """``plan`` as every fold trains with it: the scheduling plugin's
    settings, and what the plugins change under each fold's share."""
    for key, setting in folds.settings.items():
        plan = plan.with_values(scheduler, {key: setting.value}, setting.source,
                                setting.reason, force=True)
    threads = folds.threads_per_fold
    if threads is not None or folds.loader_workers is not None:
        shown = threads if threads is not None else "all"
        share = Share(threads=threads, loader_workers=folds.loader_workers,
                      shared_process=folds.backend == "threading",
                      reason=f"cross_validate: {folds.concurrency} fold(s) at once, "
                             f"{shown} thread(s) each")
        plan = share_plan(plan, share, context=context, manager=manager)
    return plan


def decide(plan: Plan, hardware: Hardware, *, folds_to_run: int, backend: Any = None,
           max_concurrent: int | None = None, threads_per_fold: int | None = None,
           device: str | torch.device | None = None,
           measure_fold_memory: Callable[[str], int] | None = None,
           estimate_fold_seconds: Callable[[], float] | None = None,
           context: Context | None = None,
           manager: PluginManager | None = None) -> Schedule:
    """Settle how ``folds_to_run`` folds run (see the module docstring).

    :param backend: None (the scheduling plugin's choice), a name in
        :data:`~autotune.cv.backends.BACKENDS`, or a ``dask.distributed.Client``.
    :param measure_fold_memory: ``f(device) -> bytes``: the peak memory of a
        training step of one fold on ``device`` (CUDA only).
    :param estimate_fold_seconds: ``f() -> seconds`` one fold takes alone
        (timed steps); folds too short to pay for worker processes stay here.
    :param context: the planning context (default: this machine's, for the
        plan's profile); ``hardware`` replaces its hardware.
    :param manager: the plugins to ask (default: the built-ins and installed
        plugins).
    """
    client, backend = _backend_asked(backend, max_concurrent, threads_per_fold)
    target = _resolve_device(device)
    if manager is None:
        manager = PluginManager()
    manager.load()
    if context is None:
        context = context_for_plan(plan, hardware=hardware)
    elif context.hardware is not hardware:
        context = replace(context, hardware=hardware)

    def dask_slots() -> tuple[int, int, str]:
        nonlocal client
        client = client or default_client()
        return dask_threads_per_fold(client)

    answer = manager.fold_schedule(context, plan, folds=folds_to_run, backend=backend,
                                   max_concurrent=max_concurrent,
                                   threads_per_fold=threads_per_fold, device=target,
                                   measure_fold_memory=measure_fold_memory,
                                   estimate_fold_seconds=estimate_fold_seconds,
                                   dask_slots=dask_slots)
    if answer is None:
        if backend not in (None, "sequential"):
            log.warning("backend=%r was asked for, but %s", backend, NO_SCHEDULER)
        scheduler, folds = "", FoldPlan(backend="sequential", threads_per_fold=threads_per_fold,
                                        reason=NO_SCHEDULER)
    else:
        scheduler, folds = answer
    if folds.backend == "dask":
        client = client or default_client()
    plan = _fold_plan(plan, scheduler, folds, context, manager)
    threads = folds.threads_per_fold
    threads = threads if threads is not None else hardware.cpu.worker_budget
    log.info("cross-validation schedule: %s, %d at once, %d threads per fold (%s)",
             folds.backend, folds.concurrency, threads, folds.reason)
    devices = folds.devices if folds.backend != "dask" else ()
    return Schedule(backend=folds.backend, concurrency=folds.concurrency,
                    threads_per_fold=int(threads), gpus=len(devices),
                    device=devices[0] if devices else target, plan=plan, reason=folds.reason,
                    per_fold_memory_bytes=folds.per_fold_memory_bytes, client=client,
                    devices=devices, scheduled_by=scheduler)
