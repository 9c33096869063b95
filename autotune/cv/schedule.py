"""How the folds share the machine: backend, folds at once, threads per
fold, devices, and the plan every fold trains with.

The numbers come from the ``parallel_folds`` plugin's rules
(``autotune.plugins.parallel_folds``) and, on CUDA, from a measurement: the
peak memory of a real training step of the user's model. Whatever is
decided is written into the fold plan, so ``CVResult.plan`` shows how the
folds ran (``parallel_folds.*``, ``threads.intra_op`` and the capped
``dataloader.num_workers``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from autotune.cv.backends import BACKENDS, dask_threads_per_fold, default_client
from autotune.cv.errors import CrossValidationError
from autotune.cv.fold import force_values
from autotune.hardware import GIB, Hardware
from autotune.plan import Plan, Source
from autotune.plugins import parallel_folds as rules

log = logging.getLogger("autotune.cv")


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

    @property
    def shared_process(self) -> bool:
        return self.backend == "threading"

    def device_for(self, fold: int) -> str:
        if self.gpus > 0:
            return rules.fold_device(fold, self.gpus)
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


def _user_settings(plan: Plan, max_concurrent: int | None, threads_per_fold: int | None,
                   backend: str | None) -> Plan:
    values: dict[str, Any] = {}
    for key, value in (("max_concurrent", max_concurrent), ("threads_per_fold", threads_per_fold)):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CrossValidationError(f"{key} must be an integer >= 1, got {value!r}")
            values[key] = value
    if backend in rules.BACKENDS:
        values["backend"] = backend
    if values and rules.NAME in plan:
        plan = plan.with_overrides({rules.NAME: values})
    return plan


def _cuda_context_bytes(device: int) -> int:
    """Memory a CUDA context of this process holds beyond torch's caching
    allocator (NVML's per-process figure minus what torch reserved); 0 when
    NVML cannot say (no NVML, or another PID namespace)."""
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


def decide(plan: Plan, hardware: Hardware, *, folds_to_run: int, backend: Any = None,
           max_concurrent: int | None = None, threads_per_fold: int | None = None,
           device: str | torch.device | None = None,
           measure_fold_memory: Callable[[str], int] | None = None,
           estimate_fold_seconds: Callable[[], float] | None = None) -> Schedule:
    """Settle how ``folds_to_run`` folds run (see the module docstring).

    :param backend: None (the plan's ``parallel_folds.backend``), a name in
        :data:`~autotune.cv.backends.BACKENDS`, or a ``dask.distributed.Client``.
    :param measure_fold_memory: ``f(device) -> bytes``: the peak memory of a
        training step of one fold on ``device`` (CUDA only).
    :param estimate_fold_seconds: ``f() -> seconds`` one fold takes alone
        (timed steps); folds too short to pay for worker processes stay here.
    """
    client = None
    if _is_client(backend):
        client, backend = backend, "dask"
    if backend is not None and backend not in BACKENDS:
        raise CrossValidationError(f"backend={backend!r} is not one of {BACKENDS} or a "
                                   "dask.distributed.Client")
    plan = _user_settings(plan, max_concurrent, threads_per_fold, backend)
    enabled = rules.NAME in plan
    name = backend or (plan.get(rules.NAME, "backend", "loky") if enabled else "sequential")
    target = _resolve_device(device)
    cores = hardware.cpu.worker_budget
    cap = int(plan.get(rules.NAME, "max_concurrent", 1) or 1) if enabled else (max_concurrent or 1)
    threads_setting = plan.setting(rules.NAME, "threads_per_fold")
    fixed_threads = threads_per_fold or (threads_setting.value if threads_setting is not None
                                         and threads_setting.source is not Source.DEFAULT else None)
    gpus, per_fold, memory_why = 0, 0, ""
    measured_short = False

    if name == "dask":
        client = client or default_client()
        slots, dask_threads, why = dask_threads_per_fold(client)
        concurrency = max(1, min(max_concurrent or slots, folds_to_run))
        threads = fixed_threads or dask_threads
        reason = why
    elif name == "sequential" or not folds_to_run:
        concurrency, threads = 1, None
        reason = "sequential: one fold after another in this process"
    elif target.startswith("cuda"):
        # device="cuda" spreads the folds over every GPU; "cuda:1" pins them.
        spread = target == "cuda"
        indices = list(range(torch.cuda.device_count())) if spread else \
            [torch.device(target).index or 0]
        concurrency = min(cap, folds_to_run)
        if concurrency > 1 and measure_fold_memory is not None:
            per_fold = measure_fold_memory(f"cuda:{indices[0]}")
            if name == "loky":
                per_fold += _cuda_context_bytes(indices[0])  # one context per worker process
            free = [torch.cuda.mem_get_info(i)[0] for i in indices]
            slots = rules.gpu_slots(free, per_fold)
            concurrency = min(concurrency, slots * len(indices))
            memory_why = (f"measured {per_fold / GIB:.2f} GiB per fold; {min(free) / GIB:.1f} GiB "
                          f"free on the fullest of {len(indices)} GPU(s) -> {slots} per GPU "
                          f"(x{rules.GPU_MEMORY_SHARE} of free memory), at most {cap}")
        gpus = min(len(indices), concurrency) if spread else 0
        threads = fixed_threads or rules.threads_for(cores, concurrency)
        reason = memory_why or f"{concurrency} fold(s) at once on {max(gpus, 1)} GPU(s)"
    else:
        concurrency = min(cap, folds_to_run)
        threads = fixed_threads or rules.threads_for(cores, concurrency)
        reason = (f"{concurrency} fold(s) at once on {cores} usable cores, "
                  f"{threads} thread(s) each")
        # Only a default choice is second-guessed: an explicit backend or
        # max_concurrent (argument, override or profile) is what runs.
        chosen = plan.setting(rules.NAME, "max_concurrent") if enabled else None
        automatic = (backend is None and max_concurrent is None and chosen is not None
                     and chosen.source is Source.DEFAULT)
        if (name == "loky" and concurrency > 1 and automatic
                and estimate_fold_seconds is not None):
            seconds = estimate_fold_seconds()
            if not rules.worth_worker_processes(seconds):
                concurrency, measured_short = 1, True
                reason = (f"a fold takes about {seconds:.2f} s here (timed training steps), "
                          f"less than the {rules.MIN_FOLD_SECONDS_FOR_WORKERS} s that pays for "
                          "starting worker processes: one fold after another")
            else:
                reason += f"; a fold takes about {seconds:.1f} s alone (timed training steps)"
    if concurrency <= 1 and name != "dask":
        name = "sequential"
        plugin_threads = plan.get("threads", "intra_op")
        threads = fixed_threads or (int(plugin_threads) if plugin_threads else cores)
        if not reason.startswith("sequential"):
            reason = f"sequential: {reason}"
    assert threads is not None
    plan = _fold_plan(plan, name, concurrency, int(threads), reason,
                      measured=bool(memory_why) or measured_short)
    log.info("cross-validation schedule: %s, %d at once, %d threads per fold (%s)", name,
             concurrency, threads, reason)
    return Schedule(backend=name, concurrency=concurrency, threads_per_fold=int(threads),
                    gpus=gpus if name != "dask" else 0,
                    device=target if gpus == 0 else "cuda:0",
                    plan=plan, reason=reason, per_fold_memory_bytes=per_fold, client=client)


def _fold_plan(plan: Plan, backend: str, concurrency: int, threads: int, reason: str,
               measured: bool) -> Plan:
    """Write the schedule into the plan the folds train with."""
    if rules.NAME in plan:
        values = {"max_concurrent": concurrency, "threads_per_fold": threads}
        if backend in rules.BACKENDS:
            values["backend"] = backend
        for key, value in values.items():
            current = plan.setting(rules.NAME, key)
            source = Source.MEASURED if measured and key == "max_concurrent" else Source.DEFAULT
            if current is not None and current.value == value:
                if source is not Source.MEASURED:
                    continue  # already says so: keep its provenance and reason
                # A measurement that agrees with the user's cap: keep "override".
                source = max(source, current.source, key=lambda s: s.rank)
            plan = force_values(plan, rules.NAME, {key: value}, f"cross_validate: {reason}", source)
    share = f"{concurrency} fold(s) at once, {threads} thread(s) each"
    if "threads" in plan and plan.setting("threads", "intra_op") is not None:
        current = plan.setting("threads", "intra_op")
        if current.source is not Source.OVERRIDE and current.value != threads:
            plan = force_values(plan, "threads", {"intra_op": threads},
                                f"cross_validate: {share}", Source.DEFAULT)
        if backend == "threading" and plan.get("threads", "set_env"):
            plan = force_values(plan, "threads", {"set_env": False},
                                "cross_validate: folds in threads share one environment",
                                Source.DEFAULT)
    workers = int(plan.get("dataloader", "num_workers", 0) or 0)
    allowed = rules.loader_workers_cap(threads, concurrency)
    if workers > allowed:
        plan = force_values(plan, "dataloader", {"num_workers": allowed},
                            f"cross_validate: {share}; loader workers come out of the "
                            "fold's share", Source.DEFAULT)
        if allowed == 0:
            plan = force_values(plan, "dataloader", {"persistent_workers": False,
                                                     "prefetch_factor": None},
                                "no loader workers", Source.DEFAULT)
    return plan
