"""DataLoader: worker processes, pinned memory, prefetching.

Profile options (an int, or ``[min, max]`` for the rules to pick within)::

    dataloader:
      num_workers: [10, 18]
      prefetch_factor: [6, 8]
      pin_memory: true
      persistent_workers: true

Rules: with a GPU, the loader should keep it fed, so ``num_workers`` is the
usable CPU count minus two (one for the training loop, one for the system),
at most 8 without a profile, clamped into the profile's range, and never
above the cores this process may use (cgroup quota and affinity). On a
CPU-only machine the workers compete with the compute threads, so the rule
keeps ``num_workers`` at a quarter of the cores; the tuner measures more.
``pin_memory`` only with CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.options import clamp_to, describe_bounds, parse_options
from autotune.plan import Setting, default, from_profile

NAME = "dataloader"
#: Without a profile, more workers than this rarely help one GPU.
MAX_DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class Options:
    num_workers: int | Sequence[int] | None = None
    prefetch_factor: int | Sequence[int] | None = None
    pin_memory: bool | None = None
    persistent_workers: bool | None = None


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    options = parse_options(NAME, Options, dict(profile_options or {}))
    cores = hardware.cpu.worker_budget
    if hardware.has_cuda:
        rule = max(1, min(cores - 2, MAX_DEFAULT_WORKERS)) if options.num_workers is None else max(1, cores - 2)
        why = f"{cores} usable cores, keep the GPU fed"
    else:
        rule = cores // 4
        why = f"CPU training: workers compete with {cores} compute cores"
    if options.num_workers is not None:
        wanted = clamp_to(rule, options.num_workers)
        workers_n = min(wanted, cores)
        note = "" if workers_n == wanted else f", capped at the {cores} usable cores"
        workers = from_profile(workers_n, f"profile range {describe_bounds(options.num_workers)}{note}")
    else:
        workers = default(rule, why)
    n = workers.value
    settings = {"num_workers": workers}
    if n > 0:
        if options.prefetch_factor is not None:
            pf = options.prefetch_factor
            value = pf if isinstance(pf, int) else pf[0]
            settings["prefetch_factor"] = from_profile(value, f"profile range {describe_bounds(pf)}")
        else:
            settings["prefetch_factor"] = default(2, "PyTorch's default")
        settings["persistent_workers"] = (
            from_profile(options.persistent_workers, "profile") if options.persistent_workers is not None
            else default(True, "keep workers alive between epochs"))
    else:
        settings["prefetch_factor"] = default(None, "no workers: loading runs in the main process")
        settings["persistent_workers"] = default(False, "no workers")
    if options.pin_memory is not None:
        pin = options.pin_memory and hardware.has_cuda
        settings["pin_memory"] = from_profile(pin, "profile" if pin == options.pin_memory
                                              else "profile asks for pinning, but there is no CUDA")
    else:
        settings["pin_memory"] = default(hardware.has_cuda, "page-locked host memory for fast H2D copies"
                                         if hardware.has_cuda else "no CUDA: nothing to pin for")
    return settings


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
