"""The epoch loop behind :meth:`autotune.engine.engine.Engine.fit`: timing, metrics,
progress bars, monitor calls and DataLoader failures."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import torch
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from autotune.errors import TrainingError
from autotune.engine.history import EpochMetrics, History
from autotune.display.progress import MIN_INTERVAL_S, bar

if TYPE_CHECKING:  # pragma: no cover
    from autotune.engine.engine import Engine
    from autotune.engine.step import Monitor

log = logging.getLogger("autotune.engine.engine")

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


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset without __len__, or a generator
        return None


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
def _worker_failures(loader: Any, epoch: int | None,
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
        _stop_workers([*iterators, getattr(loader, "_iterator", None),
                       *_under_construction(exc.__traceback__)], loader, quiet=True)
        wrapped = _loader_error(exc, loader, epoch, position())
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
        try:
            shutdown()
        except Exception as exc:  # noqa: BLE001 - see quiet
            if not quiet:
                raise
            log.debug("while a loader's workers shut down after an error: %r", exc)
        finally:
            # A signal handled during the shutdown can cut it short before
            # torch forgets the worker pids; forget them here, so its handler
            # cannot raise for these workers again.
            if getattr(iterator, "_worker_pids_set", False):
                from torch.utils.data._utils import signal_handling

                signal_handling._remove_worker_pids(id(iterator))
                iterator._worker_pids_set = False


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fit(engine: "Engine", loader: Iterable[Any], epochs: int, val_loader: Iterable[Any] | None,
            *, max_steps: int | None, monitor: "Monitor | None", show: bool) -> History:
    first_epoch = len(engine.history) + 1
    steps_left = max_steps
    if engine._window_count == 0:
        engine.optimizer.zero_grad(set_to_none=True)
    epoch_bar = bar(epochs, "epochs", enabled=show and epochs > 1, unit="epoch", leave=True)
    if monitor is not None:
        monitor.start()
    try:
        for number in range(first_epoch, first_epoch + epochs):
            metrics, used = _train_epoch(engine, loader, number, steps_left, monitor, show)
            if val_loader is not None:
                metrics = _with_validation(engine, metrics, val_loader)
            if engine.scheduler is not None and engine.scheduler_interval == "epoch":
                engine.scheduler.step()
            engine.history.append(metrics)
            log.info("%s", metrics.summary(first_epoch + epochs - 1))
            epoch_bar.update(1)
            epoch_bar.set_postfix(loss=f"{metrics.train_loss:.4f}", refresh=False)
            if steps_left is not None:
                steps_left -= used
                if steps_left <= 0:
                    break
    finally:
        epoch_bar.close()
        if monitor is not None:
            monitor.stop()
    return engine.history


def _with_validation(engine: "Engine", metrics: EpochMetrics,
                     val_loader: Iterable[Any]) -> EpochMetrics:
    return replace(metrics, val_loss=engine.evaluate(val_loader)["loss"])


def _train_epoch(engine: "Engine", loader: Iterable[Any], epoch: int, steps_left: int | None,
                 monitor: "Monitor | None", show: bool) -> tuple[EpochMetrics, int]:
    # Plugins may change the loader between epochs (workers changed live):
    # the epoch-start hooks run first, then the loader is chosen.
    engine._epoch_event(epoch, end=False)
    loader = engine._epoch_loader(loader, epoch)
    length = _length(loader)
    limit = length if steps_left is None else (steps_left if length is None
                                               else min(length, steps_left))
    # A whole epoch runs the iterator to its end, as `for batch in loader`
    # does: a sampler draws its next permutation only when resumed past its
    # last index, so stopping at len(loader) would shuffle the next epoch
    # differently from plain PyTorch. Only max_steps cuts an epoch short.
    stop_at = None if steps_left is None or (length is not None and steps_left >= length) \
        else limit
    loss_sum = torch.zeros((), device=engine.device)
    part_sums: dict[str, torch.Tensor] = {}  # a dict of losses: each part, sample-weighted
    batches = samples = 0
    data_wait = 0.0
    skipped_before, steps_before = engine.skipped_steps, engine.optimizer_steps
    batch_bar = bar(limit, f"epoch {epoch}", enabled=show)
    last_postfix = 0.0
    effective = 0
    started = time.perf_counter()
    with _worker_failures(loader, epoch, lambda: batches) as iterators, \
            contextlib.closing(batch_bar):
        iterator = iter(loader)
        iterators.append(iterator)
        while stop_at is None or batches < stop_at:
            fetch_start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            step_start = time.perf_counter()
            remaining = None if limit is None else limit - batches
            loss = engine._micro_step(batch, remaining)
            step_end = time.perf_counter()
            n = engine._last_samples
            if batches == 0:
                effective = n * engine.micro_batches_per_step
            loss_sum += loss.float() * n
            for name, part in engine.last_loss_parts.items():
                weighted = part.float() * n
                part_sums[name] = part_sums[name] + weighted if name in part_sums else weighted
            batches += 1
            samples += n
            data_wait += step_start - fetch_start
            if monitor is not None:
                monitor.record_step(step=engine.micro_steps, data_wait_s=step_start - fetch_start,
                                    step_s=step_end - step_start, samples=n)
            batch_bar.update(1)
            if show and step_end - last_postfix > MIN_INTERVAL_S:
                # .item() waits for the device, so only as often as the bar redraws.
                batch_bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                last_postfix = step_end
        engine.flush()  # a partial last window is stepped at the end of the epoch
        _synchronize(engine.device)
        elapsed = time.perf_counter() - started  # before the workers shut down
    extra = engine._epoch_event(epoch, end=True)
    for name, total in part_sums.items():
        extra.setdefault(name, float(total) / max(1, samples))
    if batches == 0:
        raise TrainingError(f"epoch {epoch}: the loader yielded no batches")
    grad_norm = extra.pop("grad_norm", None)
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=float(loss_sum) / samples,
        val_loss=None,
        epoch_time_s=elapsed,
        avg_batch_time_s=elapsed / batches,
        samples_per_s=samples / elapsed if elapsed > 0 else 0.0,
        effective_batch_size=effective,
        skipped_steps=engine.skipped_steps - skipped_before,
        data_wait_s=data_wait,
        batches=batches,
        samples=samples,
        optimizer_steps=engine.optimizer_steps - steps_before,
        grad_norm=None if grad_norm is None else float(grad_norm),
        extra={k: float(v) for k, v in extra.items()},
        threads=torch.get_num_threads(),
        loader_workers=getattr(loader, "num_workers", None),
    )
    return metrics, batches


def run_evaluate(engine: "Engine", loader: Iterable[Any],
                 metrics: Mapping[str, Callable[[Any, Any], Any]]) -> dict[str, float]:
    """The body of :meth:`Engine.evaluate`: sums stay on the device until the end."""
    was_training = engine.module.training
    engine.model.eval()
    sums: dict[str, torch.Tensor] = {}
    samples = batches = 0
    try:
        with torch.no_grad(), _worker_failures(loader, None, lambda: batches) as iterators:
            iterator = iter(loader)
            iterators.append(iterator)
            for batch in iterator:
                batch = engine.prepare_batch(batch)
                n = engine._last_samples
                targets = engine.contract.targets_of(batch)

                def forward(batch: Any = batch) -> tuple[Any, torch.Tensor]:
                    with engine.forward_context(False):
                        result = engine.contract.loss(engine.model, batch)
                        return result.outputs, result.value

                outputs, loss = engine._guarded(forward, "evaluation")
                values = {"loss": loss}
                for name, fn in metrics.items():
                    values[name] = torch.as_tensor(fn(outputs, targets), device=engine.device)
                for name, value in values.items():
                    weighted = value.detach().float() * n
                    sums[name] = sums[name] + weighted if name in sums else weighted
                samples += n
                batches += 1
    finally:
        engine.model.train(was_training)
    if samples == 0:
        raise TrainingError("evaluate: the loader yielded no batches")
    result = {name: float(total) / samples for name, total in sums.items()}
    result["samples"] = float(samples)
    return result
