"""How many cross-validation folds run at once, and with what.

Profile options::

    parallel_folds:
      max_concurrent: 2      # upper bound on folds in flight
      backend: loky          # loky | threading | dask
      threads_per_fold: null # CPU threads each fold may use (null: derived)

Rules (the pure functions below; ``autotune.cross_validate`` applies them):

* CPU: the folds split the usable cores (CPU quota and affinity, not the
  machine's count); each fold gets at least two intra-op threads where there
  are four cores or more (one per core below that), and ``threads.intra_op``
  of every fold is set to its share, so parallel folds never oversubscribe
  the CPU.
* Short folds stay in this process: loky workers are new Python processes
  that import torch before they train. ``cross_validate`` times a few
  training steps of the real model and runs the folds one after another
  when a fold would take less than ``MIN_FOLD_SECONDS_FOR_WORKERS``. On the
  2-core machine of ``benchmarks/results/cv_folds.json`` two one-thread folds
  in loky workers were 0.84x as fast as sequential for folds of about 1 s and
  1.08-1.21x for folds of about 2.5 s.
* CUDA: one fold per GPU until measured. ``cross_validate`` then measures
  the peak memory of a training step of the real model
  (``torch.cuda.max_memory_reserved``) and runs ``free memory x 0.9 / peak``
  folds per GPU (at most ``max_concurrent``), fold ``i`` on ``cuda:i % n``.
* Loader workers of parallel folds come out of the fold's CPU share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.knobs import PROCESS, Knob
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile

NAME = "parallel_folds"
BACKENDS = ("loky", "threading", "dask")
#: From this many usable cores on, each parallel fold gets at least
#: ``MIN_THREADS_PER_FOLD`` threads; below, one thread per fold.
MIN_CORES_FOR_PARALLEL = 4
MIN_THREADS_PER_FOLD = 2
#: A fold shorter than this (seconds, sequential estimate) does not pay for
#: starting worker processes: the break-even between the ~1 s folds (loky
#: slower) and ~2.5 s folds (loky faster) of benchmarks/results/cv_folds.json.
MIN_FOLD_SECONDS_FOR_WORKERS = 1.5
#: Share of a GPU's free memory parallel folds may plan to use; the rest is
#: slack for allocator fragmentation and memory the first step did not touch.
GPU_MEMORY_SHARE = 0.9


@dataclass(frozen=True)
class Options:
    max_concurrent: int | None = None
    backend: str = "loky"
    threads_per_fold: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"parallel_folds.backend={self.backend!r} is not one of {BACKENDS}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"parallel_folds.max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.threads_per_fold is not None and self.threads_per_fold < 1:
            raise ValueError(f"parallel_folds.threads_per_fold must be >= 1, "
                             f"got {self.threads_per_fold}")


def cpu_concurrency(cores: int) -> tuple[int, str]:
    """Folds at once on a CPU with ``cores`` usable cores, and why."""
    if cores < MIN_CORES_FOR_PARALLEL:
        if cores == 1:
            return 1, "1 usable core: one fold at a time"
        return cores, f"{cores} usable cores: one fold per core, one thread each"
    folds = cores // MIN_THREADS_PER_FOLD
    return folds, f"{cores} usable cores, {MIN_THREADS_PER_FOLD} threads per fold"


def worth_worker_processes(fold_seconds: float) -> bool:
    """Whether folds of ``fold_seconds`` (run alone, all cores) are long
    enough to pay for starting worker processes."""
    return fold_seconds >= MIN_FOLD_SECONDS_FOR_WORKERS


def threads_for(cores: int, concurrency: int) -> int:
    """Intra-op threads per fold: an equal share of the usable cores."""
    return max(1, cores // max(1, concurrency))


def loader_workers_cap(threads_per_fold: int, concurrency: int) -> int:
    """DataLoader workers one fold may start when ``concurrency`` folds
    share the machine: its core share minus the core its step uses. One
    fold alone keeps whatever the dataloader plugin planned."""
    return max(0, threads_per_fold - 1) if concurrency > 1 else 1 << 30


def gpu_slots(free_bytes: Sequence[int], per_fold_bytes: int,
              share: float = GPU_MEMORY_SHARE) -> int:
    """Folds each GPU holds at once: the smallest GPU's ``free x share /
    per-fold peak``, at least one (a fold that alone does not fit fails the
    same way run sequentially)."""
    if not free_bytes:
        return 0
    if per_fold_bytes <= 0:
        return 1
    return max(1, min(int(free * share) // per_fold_bytes for free in free_bytes))


def fold_device(fold: int, gpus: int) -> str:
    """The device of fold ``fold``: ``cuda:fold % gpus``, or the CPU."""
    return f"cuda:{fold % gpus}" if gpus > 0 else "cpu"


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    cores = hardware.cpu.worker_budget
    if hardware.has_cuda:
        folds, why = len(hardware.gpus), (f"one fold per GPU ({len(hardware.gpus)}) until "
                                          "cross_validate measures a fold's memory peak")
    else:
        folds, why = cpu_concurrency(cores)
    if options.max_concurrent is not None:
        # On CUDA the profile's number is the cap for the measured count; on
        # a CPU it can only lower the core-based count.
        capped = options.max_concurrent if hardware.has_cuda else min(folds, options.max_concurrent)
        concurrent = from_profile(capped, f"profile allows at most {options.max_concurrent} "
                                          "folds at once")
    else:
        concurrent = default(folds, why)
    if "threads_per_fold" in given and options.threads_per_fold is not None:
        threads = from_profile(options.threads_per_fold, "profile sets threads_per_fold")
    else:
        threads = default(threads_for(cores, concurrent.value),
                          f"{cores} cores / {concurrent.value} folds at once")
    backend = (from_profile(options.backend, "profile sets backend") if "backend" in given
               else default("loky", "processes on one machine; dask for a cluster"))
    return {"max_concurrent": concurrent, "threads_per_fold": threads, "backend": backend}


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    # A whole cross-validation run's setting: not measured per trial.
    return {"max_concurrent": Knob(off=1, phase=PROCESS),
            "threads_per_fold": Knob(off=None, phase=PROCESS),
            "backend": Knob(off="loky", phase=PROCESS)}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
