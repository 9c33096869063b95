"""How many cross-validation folds run at once, and with what.

Profile options::

    parallel_folds:
      max_concurrent: 2      # upper bound on folds in flight
      backend: loky          # loky | threading | dask
      threads_per_fold: null # CPU threads each fold may use (null: derived)

Rules: on CPU, folds split the usable cores and each fold gets at least two
threads where there are enough cores, so parallel folds never oversubscribe
the CPU. On CUDA, one fold per GPU unless the profile allows more (the
cross-validation runner refines this with a measured per-fold memory peak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile

NAME = "parallel_folds"
BACKENDS = ("loky", "threading", "dask")


@dataclass(frozen=True)
class Options:
    max_concurrent: int | None = None
    backend: str = "loky"
    threads_per_fold: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"parallel_folds.backend={self.backend!r} is not one of {BACKENDS}")


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    cores = hardware.cpu.worker_budget
    if hardware.has_cuda:
        folds, why = len(hardware.gpus), f"one fold per GPU ({len(hardware.gpus)})"
    else:
        folds, why = max(1, cores // 2), f"{cores} usable cores, at least 2 threads per fold"
        if cores < 4:
            folds, why = cores, f"{cores} usable cores: one thread per fold"
    if options.max_concurrent is not None:
        capped = min(folds, options.max_concurrent) if not hardware.has_cuda else options.max_concurrent
        concurrent = from_profile(capped, f"profile allows at most {options.max_concurrent} folds at once")
    else:
        concurrent = default(folds, why)
    threads_value = options.threads_per_fold or max(1, cores // max(1, concurrent.value))
    threads = (from_profile(threads_value, "profile sets threads_per_fold") if "threads_per_fold" in given
               else default(threads_value, f"{cores} cores / {concurrent.value} folds"))
    backend = (from_profile(options.backend, "profile sets backend") if "backend" in given
               else default("loky", "processes on one machine; dask for a cluster"))
    return {"max_concurrent": concurrent, "threads_per_fold": threads, "backend": backend}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
