"""Loader workers that die or hang: torch reports them from a signal
handler at whatever line runs, so the epoch loop and evaluation guard the
whole body that iterates a loader (:func:`worker_failures`), turn the
failure into one :class:`~autotune.errors.TrainingError` with a hint, and
shut the workers down before leaving."""

from __future__ import annotations

import contextlib
import logging
import re
from types import TracebackType
from typing import Any, Callable, Iterator

from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from autotune.errors import TrainingError
from autotune.workload.switching import stop_workers

log = logging.getLogger("autotune.engine.workers")

#: The RuntimeErrors torch.utils.data raises when a worker process dies or
#: hangs: "DataLoader worker (pid(s) 12, 13) exited unexpectedly" (found by
#: the loader itself), "DataLoader worker (pid 12) exited unexpectedly with
#: exit code 1" and "... is killed by signal: Killed." (its SIGCHLD handler),
#: "DataLoader timed out after 30 seconds", "Pin memory thread exited
#: unexpectedly". An exception inside the dataset is not one of them: torch
#: re-raises it with its own type and "Caught ... in DataLoader worker
#: process 0" before the worker's traceback.
_WORKER_FAILURE = re.compile(r"DataLoader worker \(pid|DataLoader timed out after"
                             r"|Pin memory thread exited unexpectedly")


def is_worker_failure(exc: BaseException) -> bool:
    """True when ``exc`` is torch saying a DataLoader worker died or hung
    (it can surface at any line of the training step, from a signal handler)."""
    return isinstance(exc, RuntimeError) and bool(_WORKER_FAILURE.search(str(exc)))


def _loader_error(exc: BaseException, loader: Any, epoch: int | None,
                  batch: int) -> TrainingError | None:
    """``exc`` as a :class:`TrainingError` with the hint when it says a
    loader worker died or hung; None for any other exception. ``epoch`` is
    None in evaluation."""
    message = str(exc)
    if not is_worker_failure(exc):
        return None
    workers = getattr(loader, "num_workers", "?")
    first = (message.strip().splitlines() or [""])[0]
    where = "evaluation" if epoch is None else f"epoch {epoch}"
    return TrainingError(
        f"DataLoader worker failed in {where} while loading batch {batch + 1} "
        f"(loader with num_workers={workers}): {first} HINT: a worker was killed (out of "
        "memory?) or crashed in native code; rerun with disable=['dataloader'] or "
        "overrides={'dataloader': {'num_workers': 0}} to see the failure in this process")


@contextlib.contextmanager
def worker_failures(loader: Any, epoch: int | None,
                    position: Callable[[], int]) -> Iterator[list[Any]]:
    """Turn a dying loader worker into a :class:`TrainingError`, wherever it
    surfaces while the body runs, and shut the body's iterator down before
    leaving.

    torch reports a dead worker from its SIGCHLD handler, which runs in the
    main thread at whatever Python line is current: inside ``next()``, but
    just as well inside ``iter(loader)``, the training step or the iterator's
    shutdown. The body appends its iterator to the yielded list; on every
    way out but a persistent iterator's normal end, its workers are stopped
    here, inside the guard, so a late signal from them cannot raise a bare
    RuntimeError in the caller's code afterwards. ``position()`` is the
    number of batches done so far.
    """
    iterators: list[Any] = []
    try:
        yield iterators
        if not getattr(loader, "persistent_workers", False):
            _stop_workers(iterators, loader)
    except BaseException as exc:
        # A dead worker, the step's own error or Ctrl-C: the workers go too,
        # a persistent loader's included (the next epoch starts new ones),
        # and any that iter(loader) was starting when the error struck.
        cut = _cut_off(exc, [*iterators, getattr(loader, "_iterator", None)])
        _stop_workers([*iterators, getattr(loader, "_iterator", None),
                       *_under_construction(exc.__traceback__)], loader, quiet=True)
        wrapped = _loader_error(cut or exc, loader, epoch, position())
        if wrapped is None:
            raise
        try:
            raise wrapped from exc
        finally:
            # No cycle error -> traceback -> this frame -> error: the frames
            # hold the loader, and a loader freed by the cycle collector
            # closes its queues before its workers hear "stop" (then each
            # takes torch's 5 s join timeout).
            del wrapped


def _cut_off(exc: BaseException, iterators: list[Any]) -> RuntimeError | None:
    """A worker that died while it sent a batch: the main process may see
    the socket close under it (``ConnectionResetError``, ``EOFError``)
    before torch's SIGCHLD handler reports the death. Then the error is
    torch's own, naming the dead worker; None when no worker of
    ``iterators`` has exited (the error is something else's), or when it
    came from inside a worker (torch re-raises those as "Caught ... in
    DataLoader worker process N": the dataset's own error)."""
    if not isinstance(exc, (ConnectionError, EOFError)) \
            or "in DataLoader worker process" in str(exc):
        return None
    workers = [w for it in iterators for w in getattr(it, "_workers", None) or ()]
    for wait in (0.0, 0.5):  # a worker whose socket closed may still be exiting
        for worker in workers:
            worker.join(timeout=wait)
            if worker.exitcode is not None:
                return RuntimeError(
                    f"DataLoader worker (pid {worker.pid}) exited unexpectedly with exit code "
                    f"{worker.exitcode} ({type(exc).__name__} while it sent a batch: {exc})")
    return None


def _under_construction(traceback: TracebackType | None) -> list[Any]:
    """The loader iterator a worker failure interrupted in its constructor
    (``iter(loader)``): never returned, yet its workers run until someone
    shuts them down. Only torch's own constructor frame is looked into:
    reading our frames' locals would keep the error in a reference cycle."""
    found: list[Any] = []
    constructor = _MultiProcessingDataLoaderIter.__init__.__code__
    while traceback is not None:
        if traceback.tb_frame.f_code is constructor:
            found.append(traceback.tb_frame.f_locals.get("self"))
        traceback = traceback.tb_next
    return found


def _stop_workers(iterators: list[Any], loader: Any, *, quiet: bool = False) -> None:
    """Shut down the worker processes of each iterator in ``iterators`` now
    (nothing to do for a single-process iterator or a plain iterable). A
    stopped persistent iterator is dropped from its loader, so the next epoch
    starts fresh workers. ``quiet``: another exception is on its way out, so
    what the shutdown raises (a worker failure reported meanwhile, a half-built
    iterator's missing attribute) is logged, not raised over it."""
    stopped: list[Any] = []
    while iterators:
        iterator = iterators.pop()
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is None or any(iterator is done for done in stopped):
            continue
        stopped.append(iterator)
        if getattr(loader, "_iterator", None) is iterator:
            loader._iterator = None
        stop_workers(iterator, quiet=quiet)
