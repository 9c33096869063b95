"""The epoch loop behind :meth:`autotune.engine.Engine.fit`: timing, metrics,
progress bars, monitor calls and DataLoader failures."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import torch

from autotune.errors import TrainingError
from autotune.history import EpochMetrics, History
from autotune.progress import MIN_INTERVAL_S, bar

if TYPE_CHECKING:  # pragma: no cover
    from autotune.engine import Engine
    from autotune.step import Monitor

log = logging.getLogger("autotune.engine")

#: Messages of the RuntimeErrors torch.utils.data raises when a worker
#: process dies or hangs (as opposed to an exception inside the dataset,
#: which it re-raises with its own type and the worker's traceback).
_WORKER_FAILURES = ("DataLoader worker", "exited unexpectedly", "timed out")


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset without __len__, or a generator
        return None


def _loader_error(exc: BaseException, loader: Any, epoch: int, batch: int) -> TrainingError | None:
    message = str(exc)
    if not isinstance(exc, RuntimeError) or not any(m in message for m in _WORKER_FAILURES):
        return None
    workers = getattr(loader, "num_workers", "?")
    first = (message.strip().splitlines() or [""])[0]
    return TrainingError(
        f"DataLoader worker failed in epoch {epoch} while loading batch {batch + 1} "
        f"(loader with num_workers={workers}): {first} HINT: a worker was killed (out of "
        "memory?) or crashed in native code; rerun with disable=['dataloader'] or "
        "overrides={'dataloader': {'num_workers': 0}} to see the failure in this process")


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


def _next(iterator: Iterator[Any], loader: Any, epoch: int, batch: int) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        raise
    except Exception as exc:
        wrapped = _loader_error(exc, loader, epoch, batch)
        if wrapped is None:
            raise
        raise wrapped from exc


def _train_epoch(engine: "Engine", loader: Iterable[Any], epoch: int, steps_left: int | None,
                 monitor: "Monitor | None", show: bool) -> tuple[EpochMetrics, int]:
    length = _length(loader)
    limit = length if steps_left is None else (steps_left if length is None
                                               else min(length, steps_left))
    loss_sum = torch.zeros((), device=engine.device)
    batches = samples = 0
    data_wait = 0.0
    skipped_before, steps_before = engine.skipped_steps, engine.optimizer_steps
    norm_sum_before, norm_count_before = engine._norm_sum, engine._norm_count
    batch_bar = bar(limit, f"epoch {epoch}", enabled=show)
    last_postfix = 0.0
    effective = 0
    started = time.perf_counter()
    iterator = iter(loader)
    try:
        while limit is None or batches < limit:
            fetch_start = time.perf_counter()
            try:
                batch = _next(iterator, loader, epoch, batches)
            except StopIteration:
                break
            step_start = time.perf_counter()
            remaining = None if limit is None else limit - batches
            loss = engine._micro_step(batch, remaining)
            step_end = time.perf_counter()
            n = engine._last_samples
            if batches == 0:
                effective = n * engine.accumulation_steps
            loss_sum += loss.float() * n
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
    finally:
        batch_bar.close()
    elapsed = time.perf_counter() - started
    if batches == 0:
        raise TrainingError(f"epoch {epoch}: the loader yielded no batches")
    norm_count = int(engine._norm_count - norm_count_before)
    grad_norm = (float(engine._norm_sum - norm_sum_before) / norm_count
                 if engine.clipping is not None and norm_count else None)
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
        grad_norm=grad_norm,
    )
    return metrics, batches


def run_evaluate(engine: "Engine", loader: Iterable[Any],
                 metrics: Mapping[str, Callable[[Any, Any], Any]]) -> dict[str, float]:
    """The body of :meth:`Engine.evaluate`: sums stay on the device until the end."""
    was_training = engine.module.training
    engine.model.eval()
    sums: dict[str, torch.Tensor] = {}
    samples = 0
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, targets = engine._prepare(batch)
                n = engine._last_samples

                def forward() -> tuple[Any, torch.Tensor]:
                    with engine.autocast():
                        outputs = engine.model(inputs)
                        return outputs, engine.loss_fn(outputs, targets)

                outputs, loss = engine._guarded(forward, "evaluation")
                values = {"loss": loss}
                for name, fn in metrics.items():
                    values[name] = torch.as_tensor(fn(outputs, targets), device=engine.device)
                for name, value in values.items():
                    weighted = value.detach().float() * n
                    sums[name] = sums[name] + weighted if name in sums else weighted
                samples += n
    finally:
        engine.model.train(was_training)
    if samples == 0:
        raise TrainingError("evaluate: the loader yielded no batches")
    result = {name: float(total) / samples for name, total in sums.items()}
    result["samples"] = float(samples)
    return result
