"""How many cross-validation folds run at once, and with what.

Profile options::

    parallel_folds:
      max_concurrent: 2      # upper bound on folds in flight
      backend: loky          # loky | threading | dask
      threads_per_fold: null # CPU threads each fold may use (null: derived)

Rules (the pure functions below; :func:`schedule` applies them when
``cross_validate`` asks for the fold schedule, ``autotune_fold_schedule``;
without this plugin the folds run one after another):

* CPU: the folds split the usable cores (CPU quota and affinity, not the
  machine's count); each fold gets at least two intra-op threads where there
  are four cores or more (one per core below that), and the fold's share
  goes to the plugins that size thread pools (``autotune_resource_share``:
  the threads plugin sets ``intra_op`` to it), so parallel folds never
  oversubscribe the CPU.
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
* Loader workers of parallel folds come out of the fold's CPU share (the
  share's ``loader_workers``; the dataloader plugin caps ``num_workers``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from autotune.sdk import (
    GIB, PROCESS, Context, FoldPlan, Hardware, Knob, PluginOptions, Setting, Source, Workload,
    default, from_profile, hookimpl, option, parse_options, whole_number)

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
class Options(PluginOptions):
    max_concurrent: int | None = option(None, "upper bound on folds in flight", minimum=1)
    backend: str = option("loky", "where folds run: worker processes (loky), threads, or a "
                          "Dask cluster", choices=BACKENDS)
    threads_per_fold: int | None = option(None, "CPU threads each fold may use; null: derived",
                                          minimum=1, null=True)


@hookimpl
def autotune_options() -> type:
    return Options


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
    return {"max_concurrent": Knob(off=1, phase=PROCESS, check=whole_number(1)),
            "threads_per_fold": Knob(off=None, phase=PROCESS,
                                     check=whole_number(1, or_null=True)),
            "backend": Knob(off="loky", phase=PROCESS, choices=BACKENDS)}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_search_prior() -> tuple[float, str]:
    return 0.0, "a whole cross-validation run's setting, not measured per trial"


# -- the fold schedule (cross_validate) ------------------------------------------


def cuda_context_bytes(device: int) -> int:
    """Memory a CUDA context of this process holds beyond torch's caching
    allocator (NVML's per-process figure minus what torch reserved); 0 when
    NVML cannot say (no NVML, or another PID namespace)."""
    import torch

    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid() and process.usedGpuMemory:
                    return max(0, int(process.usedGpuMemory) - torch.cuda.memory_reserved(device))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - best effort: NVML is optional
        return 0
    return 0


def _with_arguments(plan: Any, max_concurrent: int | None, threads_per_fold: int | None,
                    backend: str | None) -> Any:
    """The user's ``cross_validate`` arguments, as overrides of this plugin."""
    values: dict[str, Any] = {}
    if max_concurrent is not None:
        values["max_concurrent"] = max_concurrent
    if threads_per_fold is not None:
        values["threads_per_fold"] = threads_per_fold
    if backend in BACKENDS:
        values["backend"] = backend
    return plan.with_overrides({NAME: values}) if values else plan


@dataclass(frozen=True)
class _Decision:
    """How many folds run at once and with how many threads, and why, as
    one backend's rule settles it (before one-at-a-time becomes sequential)."""

    concurrency: int
    threads: int | None
    reason: str
    gpus: int = 0
    per_fold_bytes: int = 0
    #: Whether the count rests on a measurement (memory peak, timed steps).
    measured: bool = False


def _on_dask(folds: int, max_concurrent: int | None, fixed_threads: int | None,
             dask_slots: Any) -> _Decision:
    """As many folds as the cluster has worker threads for."""
    if dask_slots is None:
        raise ValueError("backend 'dask' needs the cluster's slots (dask_slots)")
    slots, dask_threads, why = dask_slots()
    return _Decision(max(1, min(max_concurrent or slots, folds)), fixed_threads or dask_threads,
                     why)


def _on_cuda(target: str, name: str, cap: int, folds: int, cores: int,
             fixed_threads: int | None, measure_fold_memory: Any) -> _Decision:
    """As many folds per GPU as fit in its free memory, by a measured peak."""
    import torch

    # device="cuda" spreads the folds over every GPU; "cuda:1" pins them.
    spread = target == "cuda"
    indices = list(range(torch.cuda.device_count())) if spread else \
        [torch.device(target).index or 0]
    concurrency = min(cap, folds)
    per_fold, memory_why = 0, ""
    if concurrency > 1 and measure_fold_memory is not None:
        per_fold = measure_fold_memory(f"cuda:{indices[0]}")
        if name == "loky":
            per_fold += cuda_context_bytes(indices[0])  # one context per worker process
        free = [torch.cuda.mem_get_info(i)[0] for i in indices]
        slots = gpu_slots(free, per_fold)
        concurrency = min(concurrency, slots * len(indices))
        memory_why = (f"measured {per_fold / GIB:.2f} GiB per fold; {min(free) / GIB:.1f} GiB "
                      f"free on the fullest of {len(indices)} GPU(s) -> {slots} per GPU "
                      f"(x{GPU_MEMORY_SHARE} of free memory), at most {cap}")
    gpus = min(len(indices), concurrency) if spread else 0
    return _Decision(concurrency, fixed_threads or threads_for(cores, concurrency),
                     memory_why or f"{concurrency} fold(s) at once on {max(gpus, 1)} GPU(s)",
                     gpus=gpus, per_fold_bytes=per_fold, measured=bool(memory_why))


def _on_cpu(name: str, cap: int, folds: int, cores: int, fixed_threads: int | None,
            automatic: bool, estimate_fold_seconds: Any) -> _Decision:
    """The usable cores split among the folds; folds too short to pay for
    worker processes (timed) run one after another."""
    concurrency = min(cap, folds)
    threads = fixed_threads or threads_for(cores, concurrency)
    reason = (f"{concurrency} fold(s) at once on {cores} usable cores, "
              f"{threads} thread(s) each")
    if not (name == "loky" and concurrency > 1 and automatic
            and estimate_fold_seconds is not None):
        return _Decision(concurrency, threads, reason)
    seconds = estimate_fold_seconds()
    if not worth_worker_processes(seconds):
        return _Decision(1, threads, (
            f"a fold takes about {seconds:.2f} s here (timed training steps), less than the "
            f"{MIN_FOLD_SECONDS_FOR_WORKERS} s that pays for starting worker processes: one "
            "fold after another"), measured=True)
    return _Decision(concurrency, threads,
                     reason + f"; a fold takes about {seconds:.1f} s alone (timed training steps)")


def _write_schedule(plan: Any, values: Mapping[str, Any], measured: bool, reason: str) -> Any:
    """``plan`` with the schedule in this plugin's settings, as the folds run."""
    for key, value in values.items():
        current = plan.setting(NAME, key)
        source = Source.MEASURED if measured and key == "max_concurrent" else Source.DEFAULT
        if current is not None and current.value == value:
            if source is not Source.MEASURED:
                continue  # already says so: keep its provenance and reason
            # A measurement that agrees with the user's cap: keep "override".
            source = max(source, current.source, key=lambda s: s.rank)
        plan = plan.with_values(NAME, {key: value}, source, f"cross_validate: {reason}",
                                force=True)
    return plan


def schedule(context: Context, plan: Any, folds: int, backend: str | None = None,
             max_concurrent: int | None = None, threads_per_fold: int | None = None,
             device: str = "cpu", measure_fold_memory: Any = None,
             estimate_fold_seconds: Any = None, dask_slots: Any = None) -> Any:
    """How ``folds`` folds run under this plugin's settings in ``plan`` (see
    the module docstring); ``None`` when the plan has none of them."""
    if NAME not in plan:
        return None
    plan = _with_arguments(plan, max_concurrent, threads_per_fold, backend)
    name = backend or plan.get(NAME, "backend", "loky")
    cores = context.hardware.cpu.worker_budget
    cap = int(plan.get(NAME, "max_concurrent", 1) or 1)
    threads_setting = plan.setting(NAME, "threads_per_fold")
    fixed_threads = threads_per_fold or (threads_setting.value if threads_setting is not None
                                         and threads_setting.source is not Source.DEFAULT else None)
    if name == "dask":
        decision = _on_dask(folds, max_concurrent, fixed_threads, dask_slots)
    elif name == "sequential" or not folds:
        decision = _Decision(1, None, "sequential: one fold after another in this process")
    elif device.startswith("cuda"):
        decision = _on_cuda(device, name, cap, folds, cores, fixed_threads, measure_fold_memory)
    else:
        # Only a default choice is second-guessed: an explicit backend or
        # max_concurrent (argument, override or profile) is what runs.
        chosen = plan.setting(NAME, "max_concurrent")
        automatic = (backend is None and max_concurrent is None and chosen is not None
                     and chosen.source is Source.DEFAULT)
        decision = _on_cpu(name, cap, folds, cores, fixed_threads, automatic,
                           estimate_fold_seconds)
    concurrency, threads, reason = decision.concurrency, decision.threads, decision.reason
    if concurrency <= 1 and name != "dask":
        name = "sequential"
        # One fold at a time has the machine: the threads plugin's count stands.
        planned_threads = plan.get("threads", "intra_op")
        threads = fixed_threads or (int(planned_threads) if planned_threads else cores)
        if not reason.startswith("sequential"):
            reason = f"sequential: {reason}"
    assert threads is not None
    threads = int(threads)
    values: dict[str, Any] = {"max_concurrent": concurrency, "threads_per_fold": threads}
    if name in BACKENDS:
        values["backend"] = name
    plan = _write_schedule(plan, values, decision.measured, reason)
    workers = loader_workers_cap(threads, concurrency)
    gpus = decision.gpus
    return FoldPlan(backend=name, concurrency=concurrency, threads_per_fold=threads,
                    loader_workers=workers if concurrency > 1 else None,
                    devices=tuple(fold_device(i, gpus) for i in range(gpus)),
                    reason=reason, per_fold_memory_bytes=decision.per_fold_bytes,
                    settings=dict(plan.settings[NAME]))


@hookimpl
def autotune_fold_schedule(context: Context, plan: Any, folds: int, backend: str | None,
                           max_concurrent: int | None, threads_per_fold: int | None,
                           device: str, measure_fold_memory: Any, estimate_fold_seconds: Any,
                           dask_slots: Any) -> Any:
    return schedule(context, plan, folds, backend, max_concurrent, threads_per_fold, device,
                    measure_fold_memory, estimate_fold_seconds, dask_slots)
