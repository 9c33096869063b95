"""This process's place in a torchrun job, and the decisions made once.

* :func:`init` -- the process group from torchrun's environment (gloo on
  CPU, NCCL on CUDA), this rank's device, and quiet logs on ranks > 0;
* :func:`decide_on_rank_zero` / :func:`broadcast_plan` -- the plan (and any
  measured tuning) is made once, on rank 0, and broadcast with
  ``broadcast_object_list`` so every rank trains with the same settings;
* :func:`rank_zero_only` -- run a function on rank 0 only.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

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


# -- decisions made once ------------------------------------------------------------


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
