"""Train and evaluate one fold: the function every backend runs.

:func:`run_fold` takes one picklable :class:`FoldTask` and never raises for
a failure of the fold itself: the exception comes back as a
:class:`~autotune.cv.result.FoldFailure` with its traceback, so a loky pool,
a Dask cluster or the sequential loop carries on with the other folds.
It trains with the same engine and plugins as :func:`autotune.apply`:
``apply_plan`` (model and loader hooks), then ``Tuned.engine`` (step
behaviour), ``fit`` and ``evaluate``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import multiprocessing
import os
import random
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Subset

from autotune.applying import apply_plan
from autotune.cv.result import FoldFailure, FoldResult
from autotune.cv.splits import Fold
from autotune.machine.detect import detect
from autotune.plan.plan import Plan
from autotune.plan.report import Kind, Report
from autotune.plan.resources import Share, set_threads
from autotune.plugin.context import Context, Workload
from autotune.plugin.manager import PluginManager, share_plan

log = logging.getLogger("autotune.cv")

#: Torch's default RNG is one per process; folds in threads of one process
#: build their models under this lock so every fold's initial weights
#: depend on its own seed only.
_SEED_LOCK = threading.Lock()
#: Folds in threads running now, and how to restore the thread count.
_SHARED_THREADS: dict[str, Any] = {"folds": 0}
_SHARED_THREADS_LOCK = threading.Lock()


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """``optimizer_fn`` when none is given: Adam with PyTorch's defaults."""
    return torch.optim.Adam(params)


def default_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` when none is given: cross-entropy (classification)."""
    return torch.nn.functional.cross_entropy(outputs, targets)


@dataclass(frozen=True)
class FoldTask:
    """Everything one fold needs, picklable (module-level functions and
    classes; loky and Dask use cloudpickle, which also carries lambdas and
    closures, but not open files or CUDA tensors)."""

    fold: Fold
    model_fn: Callable[[], torch.nn.Module]
    dataset: Any
    #: ``Plan.to_dict()`` of the fold's plan (plain data crosses processes safely).
    plan: Mapping[str, Any]
    #: The planning context; hardware is re-detected where the fold runs.
    context: Context
    epochs: int
    batch_size: int
    seed: int
    device: str = "cpu"
    threads: int = 1
    optimizer_fn: Callable[[Any], torch.optim.Optimizer] = default_optimizer
    loss_fn: Callable[[Any, Any], torch.Tensor] = default_loss
    metrics: Mapping[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    disable: tuple[str, ...] = ()
    checkpoint: bool = False
    max_steps: int | None = None
    #: True when the fold runs in a thread of a shared process (threading
    #: backend): process-wide settings (OMP env) are left alone.
    shared_process: bool = False
    #: Plugin objects registered beside the installed ones (``plugins=``).
    plugins: tuple[Any, ...] = ()


@dataclass(frozen=True)
class FoldOutcome:
    """What comes back from a worker: a result or a failure, and the
    checkpoint bytes (written by the caller, who owns ``run_dir``)."""

    fold: int
    result: FoldResult | None = None
    failure: FoldFailure | None = None
    checkpoint: bytes | None = None


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold``: distinct per fold, the same on every run."""
    return (int(seed) * 1_000_003 + fold) % (2**63)


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy (when loaded) and torch (CPU and CUDA), and put
    the caller's generator states back afterwards: a sequential run does
    not change the user's random streams."""
    np = sys.modules.get("numpy")
    py_state = random.getstate()
    np_state = np.random.get_state() if np is not None else None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        if np is not None:
            np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


@contextmanager
def thread_limit(threads: int, shared_process: bool) -> Iterator[None]:
    """At most ``threads`` intra-op threads for this fold (and, in a worker
    process of its own, for the processes it starts: OMP/MKL variables).

    Folds in threads share torch's one process-wide thread count: the first
    fold in sets it, the last one out restores it. (Restoring when each fold
    ends gave the folds still running the process's full count half-way,
    and with it other floating-point sums than the sequential run's.)"""
    if not shared_process:
        restore = set_threads(threads, set_env=True)
        try:
            yield
        finally:
            restore()
        return
    with _SHARED_THREADS_LOCK:
        if _SHARED_THREADS["folds"] == 0:
            _SHARED_THREADS["restore"] = set_threads(threads, set_env=False)
        _SHARED_THREADS["folds"] += 1
    try:
        yield
    finally:
        with _SHARED_THREADS_LOCK:
            _SHARED_THREADS["folds"] -= 1
            if _SHARED_THREADS["folds"] == 0:
                _SHARED_THREADS.pop("restore")()


def _in_daemon_process() -> bool:
    # Dask's worker processes are daemonic, and daemonic processes may not
    # start children: DataLoader workers would fail at the first batch.
    return multiprocessing.current_process().daemon


@dataclass
class _Built:
    tuned: Any
    loader: Any
    val_loader: Any
    model: torch.nn.Module
    device: torch.device


def _build(task: FoldTask, dataset: Any) -> _Built:
    """The fold's model, loaders and plan applied, as ``autotune.apply`` would."""
    plan = Plan.from_dict(task.plan)
    report = Report()
    fold = task.fold
    generator = torch.Generator().manual_seed(task.seed)
    loader = DataLoader(Subset(dataset, list(fold.train)), batch_size=task.batch_size,
                        shuffle=True, generator=generator)
    val_loader = DataLoader(Subset(dataset, list(fold.val)), batch_size=task.batch_size)
    with _SEED_LOCK, seeded(task.seed):
        model = task.model_fn()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}")
    manager = PluginManager(disable=task.disable, plugins=task.plugins)
    manager.load()
    context = replace(task.context, hardware=detect(), workload=Workload.inspect(model, loader))
    if _in_daemon_process():
        # No loader workers here: the plugins that start them say what changes.
        share = Share(loader_workers=0, shared_process=task.shared_process,
                      reason="this fold runs in a daemonic worker process (Dask), which cannot "
                             "start DataLoader workers")
        plan = share_plan(plan, share, context=context, manager=manager, report=report,
                          kind=Kind.FALLBACK)
    device = torch.device(task.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tuned = apply_plan(model, loader, plan, context=context, manager=manager, device=device,
                       report=report)
    return _Built(tuned, tuned.loader or loader, val_loader, model, device)


def measure_step_memory(task: FoldTask, steps: int = 2, dataset: Any = None) -> int:
    """Peak CUDA memory (bytes the caching allocator reserved) of ``steps``
    training steps of this fold on ``task.device``, in this process: what
    each fold running beside it will need."""
    device = torch.device(task.device)
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    with seeded(task.seed):
        built = _build(task, task.dataset if dataset is None else dataset)
        optimizer = task.optimizer_fn(built.model.parameters())
        with built.tuned.engine(optimizer, task.loss_fn, progress=False) as engine:
            engine.fit(built.loader, epochs=1, max_steps=steps)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_reserved(device) - before
    del built, optimizer, engine
    torch.cuda.empty_cache()
    return int(max(peak, 0))


def estimate_fold_seconds(task: FoldTask, steps: int = 3, dataset: Any = None) -> float:
    """Seconds one fold would take here, alone with ``task.threads``
    threads: ``steps`` timed training steps of the real model (after one
    untimed warm-up step) times the fold's steps. Runs in this process."""
    with thread_limit(task.threads, shared_process=True), seeded(task.seed):
        built = _build(task, task.dataset if dataset is None else dataset)
        optimizer = task.optimizer_fn(built.model.parameters())
        with built.tuned.engine(optimizer, task.loss_fn, progress=False) as engine:
            batches = iter(built.loader)
            engine.train_step(next(batches))  # warm-up: kernel selection, allocations
            timed, started = 0, time.perf_counter()
            for batch in batches:
                engine.train_step(batch)
                timed += 1
                if timed == steps:
                    break
            elapsed = time.perf_counter() - started
    per_step = elapsed / max(1, timed) if timed else 0.0
    fold_steps = task.epochs * math.ceil(len(task.fold.train) / task.batch_size)
    if task.max_steps is not None:
        fold_steps = min(fold_steps, task.max_steps)
    return per_step * fold_steps


def _train(task: FoldTask, dataset: Any) -> tuple[FoldResult, bytes | None]:
    built = _build(task, dataset)
    device = built.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = task.optimizer_fn(built.model.parameters())
    # Dropout and friends draw from the fold's own stream; threads share one
    # process-wide generator, so there the draws interleave (documented).
    stream = nullcontext() if task.shared_process else seeded(task.seed + 1)
    with stream:
        with built.tuned.engine(optimizer, task.loss_fn, progress=False) as engine:
            history = engine.fit(built.loader, epochs=task.epochs, max_steps=task.max_steps)
            evaluation = engine.evaluate(built.val_loader, metrics=dict(task.metrics))
            state = engine.state_dict() if task.checkpoint else None
            weights = engine.module.state_dict()
    metrics = {"val_loss": float(evaluation["loss"])}
    for name in task.metrics:
        metrics[f"val_{name}"] = float(evaluation[name])
    if history.last is not None:
        metrics["train_loss"] = float(history.last.train_loss)
    checkpoint = None
    if state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        checkpoint = buffer.getvalue()
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
    events = tuple(str(e) for e in built.tuned.report.events
                   if e.kind in (Kind.FALLBACK, Kind.WARNING))
    result = FoldResult(fold=task.fold.index, metrics=metrics, history=tuple(history.epochs),
                        train_size=len(task.fold.train), val_size=len(task.fold.val),
                        device=str(device), threads=task.threads, duration_s=0.0,
                        weights_sha256=weights_digest(weights), peak_memory_bytes=peak,
                        events=events)
    return result, checkpoint


def run_fold(task: FoldTask, dataset: Any = None) -> FoldOutcome:
    """Train fold ``task.fold``; any exception becomes a failure outcome.
    ``dataset`` (when given) replaces ``task.dataset``: Dask hands over a
    dataset scattered once to the workers instead of one copy per task."""
    started = time.perf_counter()
    worker = f"{os.getpid()}@{socket.gethostname()}"
    try:
        with thread_limit(task.threads, task.shared_process):
            result, checkpoint = _train(task, task.dataset if dataset is None else dataset)
    except Exception as exc:  # noqa: BLE001 - reported with its traceback, others go on
        message = (str(exc).strip().splitlines() or [""])[0][:500]
        log.debug("fold %d failed: %s: %s", task.fold.index, type(exc).__name__, message)
        failure = FoldFailure(fold=task.fold.index, error=type(exc).__name__, message=message,
                              traceback=traceback.format_exc(),
                              duration_s=time.perf_counter() - started, worker=worker)
        return FoldOutcome(task.fold.index, failure=failure)
    result = replace(result, duration_s=time.perf_counter() - started, worker=worker)
    return FoldOutcome(task.fold.index, result=result, checkpoint=checkpoint)
