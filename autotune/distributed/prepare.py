"""Apply a plan under DDP: the distributed loader, the plan's model and
loader hooks, the ``DistributedDataParallel`` wrapper and the plugins that
wrap it in turn (``autotune_wrap_distributed``: ``torch.compile`` goes over
DDP, as PyTorch recommends), and :meth:`Prepared.engine`, whose progress
bars show on rank 0 only. The ranks on one node share its cores
(:func:`share_cores`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.nn.parallel import DistributedDataParallel

from autotune.applying import apply_plan
from autotune.cv.context import context_for_plan
from autotune.distributed.loader import EpochLoader, distributed_loader
from autotune.distributed.ranks import (DistInfo, DistributedError, broadcast_plan,
                                        decide_on_rank_zero, info, is_initialized)
from autotune.engine.engine import Engine
from autotune.machine.detect import detect
from autotune.machine.hardware import Hardware
from autotune.plan.plan import Plan
from autotune.plan.report import Report
from autotune.plan.resources import Share
from autotune.planner import make_plan
from autotune.plugin.context import Context, Workload
from autotune.plugin.manager import PluginManager, share_plan
from autotune.workload.batches import find_ddp


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` returns: the DDP model (maybe compiled), the
    epoch-aware distributed loader, and what :meth:`engine` needs."""

    model: torch.nn.Module
    loader: Any
    plan: Plan
    report: Report
    context: Context
    manager: PluginManager
    device: torch.device
    info: DistInfo

    @property
    def ddp(self) -> DistributedDataParallel:
        found = find_ddp(self.model)
        assert found is not None
        return found

    def engine(self, optimizer: torch.optim.Optimizer, loss_fn: Callable[[Any, Any], Any],
               **kwargs: Any) -> Engine:
        """The shared engine on the DDP model: progress bars on rank 0 only."""
        kwargs["progress"] = bool(kwargs.get("progress", True)) and self.info.is_rank_zero
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("report", self.report)
        return Engine(self.model, optimizer, loss_fn, self.plan, manager=self.manager,
                      context=self.context, **kwargs)


def _make_plan_for(model: torch.nn.Module, loader: Any, disable: tuple[str, ...],
                   overrides: Mapping[str, Mapping[str, Any]] | None,
                   profile: str | None) -> Plan:
    return make_plan(profile=profile, workload=Workload.inspect(model, loader), disable=disable,
                     overrides=overrides).plan


def share_cores(plan: Plan, hardware: Hardware | None = None, *, context: Context | None = None,
                manager: PluginManager | None = None) -> Plan:
    """The plan for one of the ranks on this node (``LOCAL_WORLD_SIZE``),
    which share its cores: the plugins plan for one process per machine, and
    N ranks with all cores each would oversubscribe the CPU. Each plugin in
    the plan says what changes under the share (``autotune_resource_share``;
    the threads plugin sets its intra-op threads to the rank's cores, a
    user's override kept)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_ranks <= 1:
        return plan
    if context is None:
        context = context_for_plan(plan, hardware=hardware)
    if manager is None:
        manager = PluginManager()
    manager.load()
    cores = (hardware or context.hardware or detect()).cpu.worker_budget
    share = Share(threads=max(1, cores // local_ranks),
                  reason=f"{local_ranks} ranks on this node share {cores} cores")
    return share_plan(plan, share, context=context, manager=manager)


def prepare(model: torch.nn.Module, loader: Any = None,
            plan: Plan | Callable[[], Plan] | None = None, *,
            device: str | torch.device | None = None, disable: tuple[str, ...] = (),
            overrides: Mapping[str, Mapping[str, Any]] | None = None,
            profile: str | None = None, seed: int = 0, shuffle: bool | None = None,
            ddp_kwargs: Mapping[str, Any] | None = None) -> Prepared:
    """Apply a plan under DDP. Call :func:`init` first.

    :param plan: a plan (rank 0's copy is used on every rank), a function
        that makes one (run on rank 0 only, e.g. ``lambda:
        autotune.apply(model, loader, optimizer=..., loss_fn=...).plan`` to
        measure), or None: ``make_plan`` on rank 0 with ``disable``,
        ``overrides`` and ``profile``.
    :param device: default ``cuda:LOCAL_RANK`` with CUDA, else the CPU.
    :param seed: the DistributedSampler's shuffling seed (same on all ranks).
    """
    if not is_initialized():
        raise DistributedError("prepare() needs the process group; call "
                               "autotune.distributed.init() first (under torchrun)")
    if plan is None:
        plan = decide_on_rank_zero(lambda: _make_plan_for(model, loader, tuple(disable),
                                                          overrides, profile))
    elif callable(plan) and not isinstance(plan, Plan):
        plan = decide_on_rank_zero(plan)
    else:
        plan = broadcast_plan(plan)
    if not isinstance(plan, Plan):
        raise DistributedError(f"the plan function returned {type(plan).__name__}, not a Plan")
    current = info()
    target = torch.device(device if device is not None else current.device)
    manager = PluginManager(disable=disable)
    manager.load()
    dist_loader = distributed_loader(loader, shuffle=shuffle, seed=seed) if loader is not None \
        else None
    context = context_for_plan(plan, Workload.inspect(model, dist_loader))
    plan = share_cores(plan, context.hardware, context=context, manager=manager)
    # A plugin that wraps the DDP module (torch.compile goes over DDP: its
    # graph-break optimizer splits the graph at bucket boundaries) sits out
    # the model hooks, which run first, on the plain module.
    wrappers = manager.implementers("autotune_wrap_distributed", plan.plugins())
    tuned = apply_plan(model, dist_loader, plan, context=context, manager=manager,
                       device=target, skip_model_hooks=wrappers)
    ddp_options = dict(ddp_kwargs or {})
    if target.type == "cuda":
        ddp_options.setdefault("device_ids", [target.index if target.index is not None else 0])
    wrapped: torch.nn.Module = DistributedDataParallel(tuned.model, **ddp_options)
    wrapped = manager.wrap_distributed(wrapped, plan, context, tuned.report)
    out_loader = EpochLoader(tuned.loader) if tuned.loader is not None else None
    return Prepared(model=wrapped, loader=out_loader, plan=plan, report=tuned.report,
                    context=context, manager=manager, device=target, info=current)
