"""The epoch loop behind :meth:`Engine.fit` and :meth:`Engine.evaluate`:
timing, metrics, progress bars, monitor calls and DataLoader failures.

The loop drives the engine through its public methods only -- the ones a
loop of your own would use (:class:`LoopEngine` lists them) -- so it needs
nothing of the engine's inside, and the engine imports it, not the other
way round."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ContextManager, Iterable, Mapping, Protocol

import torch

from autotune.display.progress import MIN_INTERVAL_S, bar
from autotune.engine.history import EpochMetrics, History
from autotune.engine.step import Monitor
from autotune.engine.workers import worker_failures
from autotune.errors import TrainingError
from autotune.workload.contract import StepContract

# Epoch summaries are the engine's log lines (docs/engine.md).
log = logging.getLogger("autotune.engine.engine")


class LoopEngine(Protocol):
    """What the loops use of an engine (all public)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    contract: StepContract
    device: torch.device
    history: History
    scheduler: Any
    scheduler_interval: str
    micro_steps: int
    optimizer_steps: int
    planned_micro_steps: int | None
    last_loss_parts: dict[str, torch.Tensor]

    @property
    def module(self) -> torch.nn.Module: ...
    @property
    def micro_batches_per_step(self) -> int: ...
    @property
    def last_samples(self) -> int: ...
    @property
    def pending_micro_batches(self) -> int: ...
    def micro_step(self, batch: Any, remaining: int | None = None) -> torch.Tensor: ...
    def flush(self) -> bool: ...
    def prepare_batch(self, batch: Any) -> Any: ...
    def forward_context(self, training: bool = True) -> ContextManager[Any]: ...
    def guarded(self, run: Callable[[], Any], phase: str) -> Any: ...
    def epoch_start(self, epoch: int) -> None: ...
    def epoch_end(self, epoch: int) -> dict[str, float]: ...
    def epoch_loader(self, loader: Iterable[Any], epoch: int) -> Iterable[Any]: ...
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]: ...
    def live_status(self) -> str: ...


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset without __len__, or a generator
        return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fit(engine: LoopEngine, loader: Iterable[Any], epochs: int,
            val_loader: Iterable[Any] | None, *, max_steps: int | None,
            monitor: Monitor | None, show: bool) -> History:
    """The body of :meth:`Engine.fit`, its arguments checked."""
    first_epoch = len(engine.history) + 1
    steps_left = max_steps
    length = _length(loader)
    planned = None if length is None else length * epochs
    if max_steps is not None:
        planned = max_steps if planned is None else min(planned, max_steps)
    engine.planned_micro_steps = None if planned is None else engine.micro_steps + planned
    if engine.pending_micro_batches == 0:
        engine.optimizer.zero_grad(set_to_none=True)
    epoch_bar = bar(epochs, "epochs", enabled=show and epochs > 1, unit="epoch", leave=True)
    if monitor is not None:
        monitor.start()
    try:
        for number in range(first_epoch, first_epoch + epochs):
            metrics, used = _train_epoch(engine, loader, number, steps_left, monitor, show)
            if val_loader is not None:
                metrics = replace(metrics, val_loss=engine.evaluate(val_loader)["loss"])
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
        engine.planned_micro_steps = None
        if monitor is not None:
            monitor.stop()
    return engine.history


@dataclass
class _Tally:
    """One epoch's sums so far; the losses stay on the device until the end."""

    loss: torch.Tensor
    #: A dict of losses: each part, sample-weighted.
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    batches: int = 0
    samples: int = 0
    data_wait: float = 0.0
    #: Samples per optimizer step, from the first batch.
    effective: int = 0

    def add(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], samples: int,
            wait: float) -> None:
        self.loss += loss.float() * samples
        for name, part in parts.items():
            weighted = part.float() * samples
            self.parts[name] = self.parts[name] + weighted if name in self.parts else weighted
        self.batches += 1
        self.samples += samples
        self.data_wait += wait


def _train_epoch(engine: LoopEngine, loader: Iterable[Any], epoch: int, steps_left: int | None,
                 monitor: Monitor | None, show: bool) -> tuple[EpochMetrics, int]:
    # Plugins may change the loader between epochs (workers changed live):
    # the epoch-start events run first, then the loader is chosen.
    engine.epoch_start(epoch)
    loader = engine.epoch_loader(loader, epoch)
    length = _length(loader)
    limit = length if steps_left is None else (steps_left if length is None
                                               else min(length, steps_left))
    # A whole epoch runs the iterator to its end, as `for batch in loader`
    # does: a sampler draws its next permutation only when resumed past its
    # last index, so stopping at len(loader) would shuffle the next epoch
    # differently from plain PyTorch. Only max_steps cuts an epoch short.
    stop_at = None if steps_left is None or (length is not None and steps_left >= length) \
        else limit
    tally = _Tally(torch.zeros((), device=engine.device))
    steps_before = engine.optimizer_steps
    started = time.perf_counter()
    with worker_failures(loader, epoch, lambda: tally.batches) as iterators:
        iterator = iter(loader)
        iterators.append(iterator)
        _train_batches(engine, iterator, tally, f"epoch {epoch}", limit, stop_at, monitor, show)
        engine.flush()  # a partial last window is stepped at the end of the epoch
        _synchronize(engine.device)
        elapsed = time.perf_counter() - started  # before the workers shut down
    extra = engine.epoch_end(epoch)
    for name, total in tally.parts.items():
        extra.setdefault(name, float(total) / max(1, tally.samples))
    if tally.batches == 0:
        raise TrainingError(f"epoch {epoch}: the loader yielded no batches")
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=float(tally.loss) / tally.samples,
        val_loss=None,
        epoch_time_s=elapsed,
        avg_batch_time_s=elapsed / tally.batches,
        samples_per_s=tally.samples / elapsed if elapsed > 0 else 0.0,
        effective_batch_size=tally.effective,
        data_wait_s=tally.data_wait,
        batches=tally.batches,
        samples=tally.samples,
        optimizer_steps=engine.optimizer_steps - steps_before,
        extra={k: float(v) for k, v in extra.items()},
        threads=torch.get_num_threads(),
        loader_workers=getattr(loader, "num_workers", None),
    )
    return metrics, tally.batches


def _train_batches(engine: LoopEngine, iterator: Any, tally: _Tally, title: str,
                   limit: int | None, stop_at: int | None, monitor: Monitor | None,
                   show: bool) -> None:
    """Train on batches from ``iterator`` until it ends or ``stop_at``."""
    last_postfix = 0.0
    with contextlib.closing(bar(limit, title, enabled=show)) as batch_bar:
        while stop_at is None or tally.batches < stop_at:
            fetch_start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            step_start = time.perf_counter()
            remaining = None if limit is None else limit - tally.batches
            loss = engine.micro_step(batch, remaining)
            step_end = time.perf_counter()
            n = engine.last_samples
            if tally.batches == 0:
                tally.effective = n * engine.micro_batches_per_step
            tally.add(loss, engine.last_loss_parts, n, step_start - fetch_start)
            if monitor is not None:
                monitor.record_step(step=engine.micro_steps, data_wait_s=step_start - fetch_start,
                                    step_s=step_end - step_start, samples=n)
            batch_bar.update(1)
            if show and step_end - last_postfix > MIN_INTERVAL_S:
                # .item() waits for the device, so only as often as the bar redraws.
                status = engine.live_status()
                postfix = {"loss": f"{loss.item():.4f}", **({"tuning": status} if status else {})}
                batch_bar.set_postfix(postfix, refresh=False)
                last_postfix = step_end


def run_evaluate(engine: LoopEngine, loader: Iterable[Any],
                 metrics: Mapping[str, Callable[[Any, Any], Any]]) -> dict[str, float]:
    """The body of :meth:`Engine.evaluate`: sums stay on the device until the end."""
    was_training = engine.module.training
    engine.model.eval()
    sums: dict[str, torch.Tensor] = {}
    samples = batches = 0
    try:
        with torch.no_grad(), worker_failures(loader, None, lambda: batches) as iterators:
            iterator = iter(loader)
            iterators.append(iterator)
            for batch in iterator:
                batch = engine.prepare_batch(batch)
                n = engine.last_samples
                targets = engine.contract.targets_of(batch)

                def forward(batch: Any = batch) -> tuple[Any, torch.Tensor]:
                    with engine.forward_context(False):
                        result = engine.contract.loss(engine.model, batch)
                        return result.outputs, result.value

                outputs, loss = engine.guarded(forward, "evaluation")
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
