"""Where folds run: in this process, in a joblib pool (loky processes or
threads) on this machine, or on a Dask cluster. Each backend yields
:class:`~autotune.cv.fold.FoldOutcome` s in the order the folds *finish*,
so the caller can store each one at once.

A fold's own exception comes back inside its outcome (see
:func:`~autotune.cv.fold.run_fold`). What a backend raises is a failure of
the machinery itself (a loky worker killed by the OOM killer, a Dask worker
lost): :class:`BackendFailure`, after which the caller records the folds
that did not come back.

loky workers die with the process that started them: each runs a watchdog
thread (:func:`exit_with_parent`, as the pool's initializer) that ends the
worker within about a second of its parent's death, even a SIGKILL. loky
itself has no such check on POSIX: an idle worker waits for work until its
idle timeout (300 s) and a busy one finishes its fold first.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import uuid
from dataclasses import replace
from typing import Any, Iterator, Sequence

import psutil
from joblib import Parallel, delayed, parallel_config

from autotune.cv.errors import CrossValidationError
from autotune.cv.fold import FoldOutcome, FoldTask, run_fold
from autotune.machine.detect import detect
from autotune.plan.resources import FOLD_BACKENDS

log = logging.getLogger("autotune.cv")

BACKENDS = FOLD_BACKENDS

#: How often a loky worker checks that its parent is alive.
PARENT_CHECK_S = 0.5


class BackendFailure(RuntimeError):
    """The execution backend itself failed; the folds in flight are lost
    (finished ones are already stored)."""


def run_sequential(tasks: Sequence[FoldTask]) -> Iterator[FoldOutcome]:
    """One fold after another, in this process (no worker start-up cost)."""
    for task in tasks:
        yield run_fold(task)


def run_joblib(tasks: Sequence[FoldTask], backend: str, n_jobs: int,
               threads: int) -> Iterator[FoldOutcome]:
    """A joblib pool of ``n_jobs`` loky worker processes or threads.

    For loky, ``inner_max_num_threads`` makes joblib start the workers with
    OMP/MKL/OpenBLAS thread limits, so BLAS libraries initialised before
    :func:`~autotune.cv.fold.thread_limit` runs are bounded too. One fold per
    dispatch (``batch_size=1``): results are yielded, and stored, fold by fold.
    """
    config: dict[str, Any] = {"backend": backend}
    if backend == "loky":
        config["inner_max_num_threads"] = threads
        # The same function and pid on every call, so joblib reuses the pool.
        config["initializer"] = exit_with_parent
        config["initargs"] = (os.getpid(),)
    try:
        with parallel_config(**config):
            parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1,
                                pre_dispatch="n_jobs")
            yield from parallel(delayed(run_fold)(task) for task in tasks)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. loky's TerminatedWorkerError
        raise BackendFailure(f"joblib {backend} backend failed: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from exc


def exit_with_parent(parent_pid: int, interval_s: float = PARENT_CHECK_S) -> None:
    """In a worker process: start a daemon thread that ends this process
    (``os._exit``) once ``parent_pid`` is no longer its parent, i.e. the
    parent died and the worker was handed to init or a subreaper. Polling
    ``getppid`` works whatever thread started the worker (Linux's
    ``PR_SET_PDEATHSIG`` follows the forking thread, and loky forks from
    its manager thread too) and on every POSIX system. The fold's own
    DataLoader workers notice their parent's death themselves.
    """
    if os.getpid() == parent_pid or any(t.name == "autotune-parent-watchdog"
                                        for t in threading.enumerate()):
        return  # not a child (threading backend), or already watching

    def alive() -> bool:
        if os.name == "posix":
            return os.getppid() == parent_pid
        # Windows: the parent pid stays; ask whether it runs.
        return psutil.pid_exists(parent_pid)

    def watch() -> None:
        while alive():
            threading.Event().wait(interval_s)
        try:
            sys.stderr.write(f"autotune: cv worker {os.getpid()}: parent {parent_pid} exited; "
                             "stopping\n")
            sys.stderr.flush()
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="autotune-parent-watchdog", daemon=True).start()


def default_client() -> Any:
    """The Dask client of this process (``Client(...)`` made one current)."""
    try:
        from distributed import get_client
    except ImportError:
        raise CrossValidationError("backend='dask' needs dask.distributed: pip install "
                                   "'torch-autotune[dask]'") from None
    try:
        return get_client()
    except ValueError:
        raise CrossValidationError("backend='dask' needs a dask.distributed Client: create one "
                                   "first (Client(LocalCluster(...)) or Client('tcp://scheduler:"
                                   "8786')), or pass backend=client") from None


def dask_threads_per_fold(client: Any) -> tuple[int, int, str]:
    """(fold slots, threads per fold, why) for a Dask cluster: one fold per
    worker thread; each fold gets its host's usable cores divided by the
    worker threads on that host (the smallest host decides)."""
    info = client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(client) \
        else client.scheduler_info()["workers"]
    slots_per_host: dict[str, int] = {}
    for address, worker in info.items():
        host = worker.get("host") or address.rsplit(":", 1)[0]
        slots_per_host[host] = slots_per_host.get(host, 0) + int(worker.get("nthreads", 1))
    slots = sum(slots_per_host.values())
    if not slots:
        raise CrossValidationError("the Dask cluster has no workers; start some (or wait for "
                                   "them: client.wait_for_workers(n))")
    cores = client.run(_usable_cores)
    per_host_cores: dict[str, int] = {}
    for address, count in cores.items():
        host = info.get(address, {}).get("host") or address.rsplit(":", 1)[0]
        per_host_cores[host] = int(count)
    shares = [max(1, per_host_cores.get(host, 1) // n) for host, n in slots_per_host.items()]
    threads = min(shares)
    why = (f"{slots} Dask worker threads on {len(slots_per_host)} host(s); each fold gets its "
           f"host's cores / worker threads there ({threads})")
    return slots, threads, why


def _accepts_n_workers(client: Any) -> bool:
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _usable_cores() -> int:
    return detect().cpu.worker_budget


def run_dask(tasks: Sequence[FoldTask], client: Any, n_jobs: int) -> Iterator[FoldOutcome]:
    """Submit the folds to a Dask cluster, at most ``n_jobs`` in flight.

    The dataset is scattered to the cluster once and every task refers to
    it, instead of pickling one copy into each task. ``pure=False`` because
    training is not a pure function of its arguments to Dask's cache.
    """
    from distributed import as_completed

    if not tasks:
        return
    run_id = uuid.uuid4().hex[:8]
    # In a list, so that a dataset that is itself a list is sent as one object.
    (dataset,) = client.scatter([tasks[0].dataset], broadcast=False, hash=False)
    pending = [replace(task, dataset=None) for task in tasks]
    pending.reverse()

    def submit() -> Any:
        task = pending.pop()
        return client.submit(run_fold, task, dataset, pure=False, retries=0,
                             key=f"autotune-fold-{task.fold.index}-{run_id}")

    in_flight = as_completed([submit() for _ in range(min(n_jobs, len(pending)))])
    try:
        for future in in_flight:
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the worker died
                raise BackendFailure(f"Dask lost a fold: {type(exc).__name__}: "
                                     f"{_first_line(exc)}") from exc
            finally:
                future.release()
            if pending:
                in_flight.add(submit())
            yield outcome
    finally:
        for future in in_flight.futures:
            future.cancel()
        dataset.release()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
