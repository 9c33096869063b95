"""DistributedDataParallel with the shared engine, launched by ``torchrun``.

What the engine does by itself under DDP: ``no_sync()`` on every
micro-batch of an accumulation window but the last, so gradients are
all-reduced once per optimizer step. What this package adds around it:

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

The parts: :mod:`~autotune.distributed.ranks` (process group, rank 0's
decisions), :mod:`~autotune.distributed.loader` (the sampler),
:mod:`~autotune.distributed.prepare` (plan, DDP wrapper, engine) and
:mod:`~autotune.distributed.files` (rank 0's run files); every public name
is here, as ``autotune.distributed.<name>``.

See docs/cross_validation.md and ``examples/ddp_train.py``
(``torchrun --standalone --nproc_per_node=2 examples/ddp_train.py``).
"""

from autotune.distributed.files import write_run_files
from autotune.distributed.loader import EpochLoader, distributed_loader
from autotune.distributed.prepare import Prepared, prepare, share_cores
from autotune.distributed.ranks import (TORCHRUN_VARIABLES, DistInfo, DistributedError,
                                        broadcast_object, broadcast_plan, decide_on_rank_zero,
                                        info, init, is_initialized, is_rank_zero,
                                        quiet_other_ranks, rank, rank_zero_only, shutdown,
                                        world_size)

__all__ = [
    "TORCHRUN_VARIABLES", "DistInfo", "DistributedError", "EpochLoader", "Prepared",
    "broadcast_object", "broadcast_plan", "decide_on_rank_zero", "distributed_loader", "info",
    "init", "is_initialized", "is_rank_zero", "prepare", "quiet_other_ranks", "rank",
    "rank_zero_only", "share_cores", "shutdown", "world_size", "write_run_files",
]
