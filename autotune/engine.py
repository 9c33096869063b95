"""The shared training engine: the one place where a plan changes training.

The engine itself knows no plugin. Its step behaviour has slots whose
defaults are exactly plain PyTorch (no autocast, no loss scaling, one
optimizer step per batch, no clipping, inputs as they come); each plugin's
``autotune_setup_engine`` fills the slots it owns through the small API
below (:meth:`Engine.set_precision`, :attr:`Engine.accumulation_steps`,
:meth:`Engine.set_clipping`, :attr:`Engine.input_memory_format`,
:meth:`Engine.set_eager_fallback`) and registers the undo of any global
state with :meth:`Engine.on_close`. A disabled plugin fills nothing, so its
part of training is PyTorch's default.

One step, for one micro-batch (``k`` = accumulation steps)::

    with no_sync() unless last micro-batch of the window:   # DDP only
        with autocast(dtype):                               # when set
            loss = loss_fn(model(inputs), targets)
        scale(loss / window_size).backward()                # scale: fp16 only
    every k-th micro-batch (and at the end of an epoch):
        unscale; clip (record the pre-clip norm); step; update scale;
        zero grads; step the scheduler unless the step was skipped
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable, ContextManager, Iterable, Mapping

import torch

from autotune.batches import (count_samples, find_ddp, is_compiled, model_device, move_to,
                              split_batch, unwrap_model)
from autotune.errors import AutotuneError, TrainingError
from autotune.history import History
from autotune.plan import Plan, Setting, Source
from autotune.progress import progress_enabled
from autotune.report import Kind, Report
from autotune.step import Clipping, EagerFallback, Monitor, clip_gradients, scale_gradients

log = logging.getLogger("autotune.engine")


class Engine:
    """Train a model the way ``plan`` says. See docs/engine.md."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any, Any], torch.Tensor], plan: Plan | None = None, *,
                 manager: Any = None, context: Any = None,
                 device: str | torch.device | None = None, scheduler: Any = None,
                 scheduler_interval: str = "step", progress: bool = True,
                 report: Report | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise AutotuneError(f"Engine: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise AutotuneError(f"Engine: optimizer must be a torch.optim.Optimizer, "
                                f"got {type(optimizer).__name__}")
        if scheduler_interval not in ("step", "epoch"):
            raise AutotuneError(f"Engine: scheduler_interval={scheduler_interval!r}; use 'step' "
                                "(after every optimizer step) or 'epoch'")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.plan = plan if plan is not None else Plan()
        self.context = context
        self.report = report if report is not None else Report()
        self.progress = progress
        self.history = History()
        if device is None:
            self.device = model_device(model)
        else:
            self.device = torch.device(device)
            if model_device(model) != self.device:
                unwrap_model(model).to(self.device)
        # Step behaviour. These defaults are plain PyTorch; plugins change them.
        self.autocast_dtype: torch.dtype | None = None
        self.scaler: Any = None
        self._accumulation_steps = 1
        self.clipping: Clipping | None = None
        self.input_memory_format: torch.memory_format | None = None
        self._fallback: EagerFallback | None = None
        # Counters, over the engine's life.
        self.micro_steps = 0
        self.optimizer_steps = 0
        self.skipped_steps = 0
        self._window_count = 0
        self._window_size = 1
        # Pre-clip gradient norms, summed on the device (no sync per step).
        self._norm_sum = torch.zeros((), device=self.device)
        self._norm_count = torch.zeros((), device=self.device)
        self._last_norm: torch.Tensor | None = None
        self._last_samples = 0
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = False
        if manager is None and self.plan.plugins():
            from autotune.manager import PluginManager

            manager = PluginManager()
        self.manager = manager
        if manager is not None:
            try:
                manager.setup_engine(self, self.plan)
            except BaseException:
                self.close()
                raise

    # -- the API plugins use in autotune_setup_engine ------------------------
    def set_precision(self, dtype: torch.dtype | None, *, scaler: Any = None) -> None:
        """Autocast to ``dtype`` (``None``: off) and scale losses with ``scaler``."""
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise AutotuneError(f"autocast dtype must be torch.bfloat16, torch.float16 or None, "
                                f"got {dtype}")
        self.autocast_dtype, self.scaler = dtype, scaler

    @property
    def accumulation_steps(self) -> int:
        return self._accumulation_steps

    @accumulation_steps.setter
    def accumulation_steps(self, steps: int) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise AutotuneError(f"accumulation steps must be an integer >= 1, got {steps!r}")
        if self._window_count:
            raise TrainingError("cannot change accumulation steps in the middle of a window; "
                                "call engine.flush() first")
        self._accumulation_steps = steps

    def set_clipping(self, max_norm: float | None, norm_type: float = 2.0,
                     clip_value: float | None = None) -> None:
        self.clipping = Clipping(max_norm, float(norm_type), clip_value)

    def set_eager_fallback(self, eager_model: torch.nn.Module,
                           on_fallback: Callable[[str], None]) -> None:
        """Train ``eager_model`` instead when a forward or backward of
        :attr:`model` raises; ``on_fallback(reason)`` is called once."""
        self._fallback = EagerFallback(eager_model, on_fallback)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at :meth:`close` (last registered, first run)."""
        self._close_callbacks.append(callback)

    def note(self, plugin: str, kind: Kind | str, message: str) -> None:
        """Record what a plugin did in the shared report."""
        self.report.add(plugin, kind, message)

    def revise_plan(self, plugin: str, values: Mapping[str, Any], reason: str) -> None:
        """Record in :attr:`plan` what training actually ran with, when it
        differs from what was planned (a fallback); observed at run time, so
        the source is ``measured``."""
        settings = {p: dict(keys) for p, keys in self.plan.settings.items()}
        current = settings.setdefault(plugin, {})
        for key, value in values.items():
            old = current.get(key)
            current[key] = (replace(old, value=value, source=Source.MEASURED, reason=reason)
                            if old is not None else Setting(value, Source.MEASURED, reason))
        self.plan = replace(self.plan, settings=settings)

    # -- properties ------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The user's module, without compile or DDP wrappers."""
        return unwrap_model(self.model)

    @property
    def compiled(self) -> bool:
        return is_compiled(self.model)

    @property
    def last_grad_norm(self) -> float | None:
        """Pre-clip gradient norm of the last optimizer step (clipping on)."""
        return None if self._last_norm is None else float(self._last_norm)

    def describe(self) -> dict[str, Any]:
        """The step behaviour in force, for logs and tests."""
        return {
            "device": str(self.device),
            "autocast_dtype": None if self.autocast_dtype is None else str(self.autocast_dtype),
            "grad_scaler": self.scaler is not None,
            "accumulation_steps": self._accumulation_steps,
            "clipping": None if self.clipping is None else vars(self.clipping).copy(),
            "input_memory_format": None if self.input_memory_format is None
            else str(self.input_memory_format),
            "compiled": self.compiled,
            "ddp": find_ddp(self.model) is not None,
        }

    # -- one step ----------------------------------------------------------------
    def train_step(self, batch: Any) -> float:
        """One micro-batch; the optimizer steps every ``accumulation_steps``.
        Call :meth:`flush` to step a window that ends early."""
        return float(self._micro_step(batch, remaining=None))

    def flush(self) -> bool:
        """Step the optimizer on a partial window; True when a step ran."""
        if self._window_count == 0:
            return False
        self._step_optimizer()
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise TrainingError("this engine is closed (its thread and precision settings were "
                                "undone); build a new one with tuned.engine(...)")

    def _prepare(self, batch: Any) -> tuple[Any, Any]:
        inputs, targets = split_batch(batch)
        non_blocking = self.device.type == "cuda"
        inputs = move_to(inputs, self.device, non_blocking=non_blocking,
                         memory_format=self.input_memory_format)
        targets = move_to(targets, self.device, non_blocking=non_blocking)
        self._last_samples = count_samples(inputs, targets)
        return inputs, targets

    def autocast(self) -> ContextManager[Any]:
        """The autocast context of this engine (a no-op when precision is off)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _micro_step(self, batch: Any, remaining: int | None) -> torch.Tensor:
        self._check_open()
        if self._window_count == 0:
            # The loss is divided by the window's true size; fit() knows it
            # (fewer batches may be left than k); train_step alone assumes k
            # and flush() rescales a window that ends early.
            k = self._accumulation_steps
            self._window_size = k if remaining is None else max(1, min(k, remaining))
        if not self.model.training:
            self.model.train()
        inputs, targets = self._prepare(batch)
        sync = self._window_count + 1 >= self._window_size
        loss = self._guarded(lambda: self._forward_backward(inputs, targets, sync), "training")
        self._window_count += 1
        self.micro_steps += 1
        if self._window_count >= self._window_size:
            self._step_optimizer()
        return loss

    def _forward_backward(self, inputs: Any, targets: Any, sync: bool) -> torch.Tensor:
        ddp = find_ddp(self.model)
        skip_sync = ddp.no_sync() if ddp is not None and not sync else nullcontext()
        with skip_sync:
            with self.autocast():
                loss = self.loss_fn(self.model(inputs), targets)
            scaled = loss / self._window_size if self._window_size > 1 else loss
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        return loss.detach()

    def _guarded(self, run: Callable[[], Any], phase: str) -> Any:
        """Run ``run``; when an eager fallback is installed and it raises,
        switch to the eager model and run it again. A failure of the eager
        run is the user's own error and propagates unchanged."""
        if self._fallback is None:
            return run()
        try:
            return run()
        except Exception as compiled_error:  # noqa: BLE001 - any compile failure
            from autotune.loop import is_worker_failure

            if is_worker_failure(compiled_error) or isinstance(compiled_error, TrainingError):
                raise  # a loader worker died during the step: not the compiler's fault
            compiled, fallback = self.model, self._fallback
            self.model, self._fallback = fallback.model, None
            if phase == "training" and self._window_count == 0:
                self.optimizer.zero_grad(set_to_none=True)
            try:
                result = run()
            except Exception:
                self.model, self._fallback = compiled, fallback  # not a compile problem
                raise
            first_line = (str(compiled_error).strip().splitlines() or [""])[0][:300]
            fallback.on_fallback(f"{type(compiled_error).__name__} during {phase}: {first_line}")
            return result

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _step_optimizer(self) -> None:
        count, size = self._window_count, self._window_size
        if count != size:
            # A window that ended early was divided by more micro-batches than
            # it had: scale its gradients to the mean over the true count.
            scale_gradients(self._params(), size / count)
        scaler = self.scaler
        if scaler is not None and self.clipping is not None:
            scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        if self.clipping is not None:
            self._clip()
        skipped = False
        if scaler is not None:
            before = scaler.get_scale()
            scaler.step(self.optimizer)
            scaler.update()
            # GradScaler lowers its scale exactly when it found inf/NaN
            # gradients and so skipped optimizer.step().
            skipped = scaler.get_scale() < before
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window_count = 0
        self.optimizer_steps += 1
        if skipped:
            self.skipped_steps += 1
        elif self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()

    def _clip(self) -> None:
        assert self.clipping is not None
        norm = clip_gradients(self._params(), self.clipping)
        if norm is None:
            return
        norm = norm.detach().float()
        finite = torch.isfinite(norm)  # fp16 steps that overflow have inf norms
        self._norm_sum = self._norm_sum + torch.where(finite, norm, torch.zeros_like(norm))
        self._norm_count = self._norm_count + finite
        self._last_norm = norm

    # -- loops -------------------------------------------------------------------
    def fit(self, loader: Iterable[Any], epochs: int = 1, val_loader: Iterable[Any] | None = None,
            *, max_steps: int | None = None, monitor: Monitor | None = None) -> History:
        """Train for ``epochs`` (or until ``max_steps`` micro-batches in
        total); validate on ``val_loader`` after each epoch. Returns (and
        extends) :attr:`history`."""
        from autotune.loop import run_fit

        self._check_open()
        if not isinstance(epochs, int) or epochs < 1:
            raise AutotuneError(f"fit: epochs must be an integer >= 1, got {epochs!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise AutotuneError(f"fit: max_steps must be an integer >= 1 or None, got {max_steps!r}")
        return run_fit(self, loader, epochs, val_loader, max_steps=max_steps, monitor=monitor,
                       show=progress_enabled(self.progress))

    def evaluate(self, loader: Iterable[Any], *,
                 metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None) -> dict[str, float]:
        """Mean loss (and each ``metrics[name](outputs, targets)``) over
        ``loader``, weighted by batch size, with autocast as in training and
        no gradients. Returns ``{"loss": ..., name: ..., "samples": n}``."""
        from autotune.loop import run_evaluate

        self._check_open()
        return run_evaluate(self, loader, metrics or {})

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model (keys as in the user's module: no ``_orig_mod.``), optimizer,
        scaler, scheduler, counters, history and plan."""
        from autotune.checkpoint import engine_state

        return engine_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from autotune.checkpoint import load_engine_state

        load_engine_state(self, state)

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    # -- life cycle ------------------------------------------------------------------
    def close(self) -> None:
        """Undo global state the plugins changed (threads, TF32, env). Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._close_callbacks:
            callback = self._close_callbacks.pop()
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - undo the rest regardless
                log.warning("engine close: %r failed: %s", callback, exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({self.describe()})"
