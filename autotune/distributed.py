"""DistributedDataParallel with the shared engine, launched by ``torchrun``.

What the engine does by itself under DDP: ``no_sync()`` on every
micro-batch of an accumulation window but the last, so gradients are
all-reduced once per optimizer step. What this module adds around it:

* :func:`init` -- the process group from torchrun's environment (gloo on
  CPU, NCCL on CUDA), this rank's device, and quiet logs on ranks > 0;
* :func:`decide_on_rank_zero` / :func:`broadcast_plan` -- the plan (and any
  measured tuning) is made once, on rank 0, and broadcast with
  ``broadcast_object_list`` so every rank trains with the same settings;
* :func:`prepare` -- a ``DistributedSampler`` loader that reshuffles every
  epoch, the plan's model and loader hooks, the ``DistributedDataParallel``
  wrapper and the plugins that wrap it in turn (``autotune_wrap_distributed``:
  ``torch.compile`` goes over DDP, as PyTorch recommends), and
  :meth:`Prepared.engine`, whose progress bars show on rank 0 only;
* :func:`write_run_files` / :func:`rank_zero_only` -- only rank 0 writes.

See docs/cross_validation.md and ``examples/ddp_train.py``
(``torchrun --standalone --nproc_per_node=2 examples/ddp_train.py``).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
import torch.distributed as dist

from autotune.errors import AutotuneError
from autotune.plan.plan import Plan

log = logging.getLogger("autotune.distributed")
T = TypeVar("T")

#: Variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(AutotuneError):
    """Distributed training was asked for but cannot work as set up."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: str

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; 0 when not distributed."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def info() -> DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""
    local = _local_rank()
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    backend = dist.get_backend() if is_initialized() else "none"
    return DistInfo(rank(), local, world_size(), str(backend), device)


def quiet_other_ranks() -> None:
    """Only rank 0 logs autotune's INFO lines (epoch summaries, plan
    events); other ranks still log warnings and errors."""
    if not is_rank_zero():
        logging.getLogger("autotune").setLevel(logging.WARNING)


def init(backend: str | None = None, *, timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun set up (idempotent).

    :param backend: ``"gloo"`` or ``"nccl"``; default NCCL with CUDA, else gloo.
    :raises DistributedError: when the torchrun variables are missing.
    """
    if not dist.is_available():
        raise DistributedError("torch.distributed is not available in this torch build")
    if not is_initialized():
        missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
        if missing:
            raise DistributedError(f"not launched by torchrun: {', '.join(missing)} unset. "
                                   "HINT: torchrun --nproc_per_node=N your_script.py")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(_local_rank())
        kwargs: dict[str, Any] = {"backend": backend}
        if timeout_s is not None:
            kwargs["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(**kwargs)
    quiet_other_ranks()
    current = info()
    log.info("rank %d of %d (%s) on %s", current.rank, current.world_size, current.backend,
             current.device)
    return current


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


# -- decisions made once --------------------------------------------------------------


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects only)."""
    if not is_initialized():
        return obj
    holder = [obj if rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_plan(plan: Plan | None, src: int = 0) -> Plan:
    """Rank ``src``'s plan on every rank, sent as ``plan.to_dict()``."""
    data = broadcast_object(plan.to_dict() if plan is not None else None, src)
    if data is None:
        raise DistributedError(f"rank {src} has no plan to broadcast")
    return Plan.from_dict(data)


def decide_on_rank_zero(decide: Callable[[], T]) -> T:
    """Run ``decide()`` on rank 0 only (planning, measured tuning) and give
    its result to every rank. When it raises on rank 0, every rank raises
    (instead of the others waiting forever)."""
    outcome: tuple[str, Any] | None = None
    error: BaseException | None = None
    if is_rank_zero():
        try:
            outcome = ("ok", decide())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
            outcome = ("error", f"{type(exc).__name__}: {exc}")
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    assert outcome is not None
    if outcome[0] == "error":
        raise DistributedError(f"rank 0 failed while deciding: {outcome[1]}")
    return outcome[1]


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate ``fn`` to run on rank 0 only (None elsewhere)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_rank_zero() else None

    return wrapper


# -- loader ------------------------------------------------------------------------------


class EpochLoader:
    """A loader whose ``DistributedSampler`` gets ``set_epoch(n)`` before
    each pass, so every epoch has a new order (the same on all ranks);
    without it each epoch repeats the first one's order."""

    def __init__(self, loader: Any, start_epoch: int = 0) -> None:
        self.loader = loader
        self.epoch = start_epoch

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # batch_size, dataset, num_workers...
        return getattr(self.__dict__["loader"], name)


def distributed_loader(loader: Any, *, shuffle: bool | None = None, seed: int = 0,
                       drop_last: bool = False) -> Any:
    """``loader`` rebuilt with a ``DistributedSampler`` (each rank sees its
    1/world_size share); other settings kept. A loader that already has one
    is returned as is. ``shuffle`` defaults to whether ``loader`` shuffles."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    if type(loader) is not DataLoader:
        raise DistributedError(f"cannot add a DistributedSampler to a {type(loader).__name__}; "
                               "pass a torch DataLoader or build it with one")
    if loader.batch_size is None:
        raise DistributedError("the loader uses its own batch_sampler; build it with a "
                               "DistributedSampler yourself")
    if shuffle is None:
        shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(),
                                 shuffle=shuffle, seed=seed, drop_last=drop_last)
    kwargs: dict[str, Any] = {"batch_size": loader.batch_size, "sampler": sampler,
                              "num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
                              "pin_memory": loader.pin_memory, "drop_last": loader.drop_last,
                              "worker_init_fn": loader.worker_init_fn}
    if loader.num_workers > 0:
        kwargs.update(prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers,
                      multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(loader.dataset, **kwargs)


# -- model, loader and engine -------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` returns: the DDP model (maybe compiled), the
    epoch-aware distributed loader, and what :meth:`engine` needs."""

    model: torch.nn.Module
    loader: Any
    plan: Plan
    report: Any
    context: Any
    manager: Any
    device: torch.device
    info: DistInfo

    @property
    def ddp(self) -> torch.nn.parallel.DistributedDataParallel:
        from autotune.workload.batches import find_ddp

        found = find_ddp(self.model)
        assert found is not None
        return found

    def engine(self, optimizer: torch.optim.Optimizer, loss_fn: Callable[[Any, Any], Any],
               **kwargs: Any) -> Any:
        """The shared engine on the DDP model: progress bars on rank 0 only."""
        from autotune.engine.engine import Engine

        kwargs["progress"] = bool(kwargs.get("progress", True)) and self.info.is_rank_zero
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("report", self.report)
        return Engine(self.model, optimizer, loss_fn, self.plan, manager=self.manager,
                      context=self.context, **kwargs)


def _make_plan_for(model: torch.nn.Module, loader: Any, disable: tuple[str, ...],
                   overrides: Mapping[str, Mapping[str, Any]] | None,
                   profile: str | None) -> Plan:
    from autotune.plugin.context import Workload
    from autotune.planner import make_plan

    return make_plan(profile=profile, workload=Workload.inspect(model, loader), disable=disable,
                     overrides=overrides).plan


def share_cores(plan: Plan, hardware: Any = None, *, context: Any = None,
                manager: Any = None) -> Plan:
    """The plan for one of the ranks on this node (``LOCAL_WORLD_SIZE``),
    which share its cores: the plugins plan for one process per machine, and
    N ranks with all cores each would oversubscribe the CPU. Each plugin in
    the plan says what changes under the share (``autotune_resource_share``;
    the threads plugin sets its intra-op threads to the rank's cores, a
    user's override kept)."""
    from autotune.machine.detect import detect
    from autotune.plan.resources import Share, share_plan

    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_ranks <= 1:
        return plan
    if context is None:
        from autotune.cv.runner import context_for_plan

        context = context_for_plan(plan, hardware=hardware)
    if manager is None:
        from autotune.plugin.manager import PluginManager

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
    from torch.nn.parallel import DistributedDataParallel

    from autotune.applying import apply_plan
    from autotune.plugin.context import Workload
    from autotune.cv.runner import context_for_plan
    from autotune.plugin.manager import PluginManager

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


# -- files -------------------------------------------------------------------------------


def write_run_files(run_dir: str | os.PathLike[str], engine: Any, *, checkpoint: bool = True,
                    barrier: bool = True) -> list[Path]:
    """On rank 0: ``plan.json``, ``history.json`` and (``checkpoint``)
    ``checkpoint.pt`` in ``run_dir``, each written atomically. Other ranks
    write nothing and get ``[]``. With ``barrier``, every rank returns only
    once the files exist."""
    from autotune.cv.store import atomic_write_bytes, atomic_write_json

    written: list[Path] = []
    if is_rank_zero():
        root = Path(run_dir)
        atomic_write_json(root / "plan.json", engine.plan.to_dict())
        written.append(root / "plan.json")
        atomic_write_json(root / "history.json", engine.history.to_dict())
        written.append(root / "history.json")
        if checkpoint:
            import io

            buffer = io.BytesIO()
            torch.save(engine.state_dict(), buffer)
            atomic_write_bytes(root / "checkpoint.pt", buffer.getvalue())
            written.append(root / "checkpoint.pt")
        log.info("rank 0 wrote %s", ", ".join(p.name for p in written))
    if barrier and is_initialized():
        dist.barrier()
    return written
