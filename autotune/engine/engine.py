"""The shared training engine: the one place where a plan changes training.

The engine knows no plugin and has no slot for one. It runs forward, loss,
backward and ``optimizer.step()`` exactly as a hand-written PyTorch loop
does, and at each point of the step it calls the plugins' step hooks
(``autotune_prepare_inputs``, ``autotune_forward_context``,
``autotune_transform_loss``, ``autotune_window_size``,
``autotune_before_optimizer_step``, ``autotune_optimizer_step``,
``autotune_after_optimizer_step``, ``autotune_step_failed``; see
:mod:`autotune.plugin.specs`). With no plugin, or every plugin disabled, a
step is bitwise plain PyTorch. One micro-batch::

    inputs = prepare_inputs(move to device)
    with no_sync() unless last micro-batch of the window:   # DDP only
        with every forward_context:
            loss = loss_fn(model(inputs), targets)
        transform_loss(loss).backward()
    when the window (window_size micro-batches) is full, or the epoch ends:
        before_optimizer_step; optimizer_step or optimizer.step();
        zero_grad; after_optimizer_step; the scheduler steps unless skipped

What a plugin measures (a gradient norm, the steps it skipped) it reports
as its own metrics (``autotune_epoch_end``); what changes the settings
during a run is given to the engine by whoever builds it (``live``). The
epoch loop (:mod:`autotune.engine.loop`) and checkpoints
(:mod:`autotune.engine.checkpoint`) use the engine's public methods only.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch

from autotune.display.progress import progress_enabled
from autotune.engine.checkpoint import engine_state, load_engine_state
from autotune.engine.history import History
from autotune.engine.host import LiveMaker, PluginHost
from autotune.engine.hooks import nested
from autotune.engine.loop import run_evaluate, run_fit
from autotune.engine.guard import check_finite, guarded, watching
from autotune.engine.step import Monitor
from autotune.errors import AutotuneError, TrainingError
from autotune.plan.plan import Plan
from autotune.plan.report import Report
from autotune.workload.batches import find_ddp, is_compiled, model_device, move_to, unwrap_model
from autotune.workload.contract import StepContract

log = logging.getLogger("autotune.engine.engine")


class Engine(PluginHost):
    """Train a model the way ``plan`` says. See docs/engine.md.

    :param live: what changes this engine's settings during its run
        (:class:`~autotune.engine.step.LiveHook`), each made from the engine
        by a callable; ``None`` (the default): those the plugins in the plan
        make (``autotune_live_adapter``: the daemon's share, speed changes
        tried between epochs); ``()``: none, as for a tuner's trial, whose
        measurement must run as planned.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any, Any], torch.Tensor] | StepContract | None = None,
                 plan: Plan | None = None, *,
                 step_fn: Callable[[Any, Any], Any] | None = None,
                 batch_size_fn: Callable[[Any], int] | None = None,
                 manager: Any = None, context: Any = None,
                 device: str | torch.device | None = None, scheduler: Any = None,
                 scheduler_interval: str = "step", progress: bool = True,
                 report: Report | None = None,
                 live: Sequence[LiveMaker] | None = None,
                 tuners: Sequence[LiveMaker] = ()) -> None:
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
        #: How a batch becomes a loss and how many samples it holds
        #: (autotune.workload.contract): loss_fn, step_fn, or the model's own loss.
        self.contract = StepContract.of(loss_fn, step_fn, batch_size_fn)
        self.loss_fn = self.contract.loss_fn
        #: The parts of the last loss, when it was a dict of losses (detached).
        self.last_loss_parts: dict[str, torch.Tensor] = {}
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.progress = progress
        self.history = History()
        if device is None:
            self.device = model_device(model)
        else:
            self.device = torch.device(device)
            if model_device(model) != self.device:
                unwrap_model(model).to(self.device)
        # Counters, over the engine's life.
        self.micro_steps = self.optimizer_steps = self.samples_trained = 0
        #: micro_steps once the running fit ends (None: unknown), for live changes.
        self.planned_micro_steps: int | None = None
        self._window_count = 0
        self._window_size = 1
        self._last_samples = 0
        super().__init__(plan if plan is not None else Plan(), manager=manager, context=context,
                         report=report if report is not None else Report(), live=live,
                         tuners=tuners)

    @property
    def window_size(self) -> int:
        """Micro-batches in the current optimizer-step window."""
        return self._window_size

    @property
    def pending_micro_batches(self) -> int:
        """Micro-batches since the last optimizer step (0: between windows)."""
        return self._window_count

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches in a full window (what the plugins ask for)."""
        return self._ask_window(None)

    @property
    def last_samples(self) -> int:
        """Samples in the batch :meth:`prepare_batch` prepared last."""
        return self._last_samples

    # -- properties ------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The user's module, without compile or DDP wrappers."""
        return unwrap_model(self.model)

    @property
    def compiled(self) -> bool:
        return is_compiled(self.model)

    def describe(self) -> dict[str, Any]:
        """The step behaviour in force, for logs and tests: the engine's
        own facts and each plugin's ``autotune_describe_engine``."""
        out: dict[str, Any] = {
            "device": str(self.device),
            "micro_batches_per_step": self.micro_batches_per_step,
            "compiled": self.compiled,
            "ddp": find_ddp(self.model) is not None,
            "step_hooks": self.hooks.implementers(),
        }
        out.update(self.hooks.merged("autotune_describe_engine", engine=self))
        return out

    # -- one step ----------------------------------------------------------------
    def train_step(self, batch: Any) -> float:
        """One micro-batch; the optimizer steps when the window is full.
        Call :meth:`flush` to step a window that ends early."""
        return float(self.micro_step(batch))

    def micro_step(self, batch: Any, remaining: int | None = None) -> torch.Tensor:
        """:meth:`train_step` without waiting for the device: the loss as a
        detached tensor. ``remaining``: micro-batches left in the epoch, so
        a last window that cannot be full is as long as what is left."""
        self._check_open()
        if self._window_count == 0:
            self._window_size = self._ask_window(remaining)
        if not self.model.training:
            self.model.train()
        batch = self.prepare_batch(batch)
        sync = self._window_count + 1 >= self._window_size
        loss = self.guarded(lambda: self._forward_backward(batch, sync), "training")
        self._window_count += 1
        self.micro_steps += 1
        self.samples_trained += self._last_samples
        if self._window_count >= self._window_size:
            self._step_optimizer()
        return loss

    def flush(self) -> bool:
        """Step the optimizer on a partial window; True when a step ran."""
        if self._window_count == 0:
            return False
        self._step_optimizer()
        return True

    # -- your own loop ----------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Your loop's ``loss.backward()``, with the plan's step behaviour:
        the plugins' loss transforms (÷ the accumulation window, the fp16
        scale) before it. Pair it with :meth:`step`; see docs/engine.md
        ("Your own loop")."""
        self._check_open()
        if self._window_count == 0:
            self._window_size = self._ask_window(None)
        self._backward(loss)

    def step(self) -> bool:
        """After :meth:`backward`: count the micro-batch and, when the window
        is full, run the optimizer step the plugins shape (unscale, clip,
        the scaler's step, zero_grad, the scheduler). True when it stepped."""
        self._check_open()
        self._window_count += 1
        self.micro_steps += 1
        self.samples_trained += self._last_samples
        if self._window_count >= self._window_size:
            self._step_optimizer()
            return True
        return False

    def _check_open(self) -> None:
        if self.closed:
            raise TrainingError("this engine is closed (its thread and precision settings were "
                                "undone); build a new one with tuned.engine(...)")

    def prepare_batch(self, batch: Any) -> Any:
        """``batch`` on the engine's device, its inputs as the plugins want
        them (``autotune_prepare_inputs``: channels_last...); counts its
        samples. What the engine's own step does first; for your own loop."""
        contract = self.contract
        batch = move_to(batch, self.device, non_blocking=self.device.type == "cuda")
        if self.hooks["autotune_prepare_inputs"]:
            inputs = self.hooks.chain("autotune_prepare_inputs", "inputs",
                                       contract.inputs_of(batch), engine=self)
            batch = contract.with_inputs(batch, inputs)
        self._last_samples = contract.samples(batch)
        return batch

    def forward_context(self, training: bool = True) -> ContextManager[Any]:
        """Every plugin's context for the forward pass (autocast, ...),
        first plugin outermost; a no-op when none gives one."""
        contexts = [context for _plugin, context in self.hooks.each(
            "autotune_forward_context", engine=self, training=training) if context is not None]
        if not contexts:
            return nullcontext()
        return contexts[0] if len(contexts) == 1 else nested(contexts)

    #: The name users of autocast know; the same contexts.
    autocast = forward_context

    def _ask_window(self, remaining: int | None) -> int:
        found = self.hooks.first("autotune_window_size", engine=self, remaining=remaining)
        if found is None:
            return 1
        plugin, size = found
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise TrainingError(f"plugin {plugin!r}: autotune_window_size must "
                                f"return an integer >= 1, got {size!r}")
        return size

    def _forward_backward(self, batch: Any, sync: bool) -> torch.Tensor:
        ddp = find_ddp(self.model)
        skip_sync = ddp.no_sync() if ddp is not None and not sync else nullcontext()
        with skip_sync:
            with self.forward_context(True):
                result = self.contract.loss(self.model, batch)
            if watching(self):  # a setting is being tried: NaN takes it back
                check_finite(result.value)
            self._backward(result.value)
        self.last_loss_parts = ({k: v.detach() for k, v in result.parts.items()}
                                if result.parts else {})
        return result.value.detach()

    def _backward(self, loss: torch.Tensor) -> None:
        self.hooks.chain("autotune_transform_loss", "loss", loss, engine=self).backward()

    def guarded(self, run: Callable[[], Any], phase: str) -> Any:
        """Run ``run`` (a forward, or forward and backward); when it fails, a
        plugin or a live adapter may put things right and it runs once more
        (see :mod:`autotune.engine.guard`). ``phase``: ``"training"`` or
        ``"evaluation"``."""
        return guarded(self, run, phase)

    def _step_optimizer(self) -> None:
        hooks, optimizer = self.hooks, self.optimizer
        hooks.each("autotune_before_optimizer_step", engine=self, optimizer=optimizer,
                   micro_batches=self._window_count)
        answer = hooks.first("autotune_optimizer_step", engine=self, optimizer=optimizer)
        if answer is None:
            optimizer.step()
        skipped = answer is not None and not answer[1]
        optimizer.zero_grad(set_to_none=True)
        self._window_count = 0
        self.optimizer_steps += 1
        hooks.each("autotune_after_optimizer_step", engine=self, optimizer=optimizer,
                   skipped=skipped)
        for adapter in self.live_adapters:
            adapter.at_step()
        if not skipped and self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()

    # -- epochs ------------------------------------------------------------------
    def epoch_start(self, epoch: int) -> None:
        """The start of epoch ``epoch`` (counted from 1 over the engine's
        life): the plugins' ``autotune_epoch_start``, then each live
        adapter's. :meth:`fit` calls it; so may a loop of your own."""
        self.hooks.each("autotune_epoch_start", engine=self, epoch=epoch)
        for adapter in self.live_adapters:
            adapter.at_epoch_start(epoch)

    def epoch_loader(self, loader: Iterable[Any], epoch: int) -> Iterable[Any]:
        """The loader to iterate in epoch ``epoch``: a plugin's replacement
        (``autotune_epoch_loader``: workers changed during the run) or ``loader``."""
        found = self.hooks.first("autotune_epoch_loader", engine=self, loader=loader, epoch=epoch)
        return loader if found is None else found[1]

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """What the plugins measured in epoch ``epoch`` (``autotune_epoch_end``),
        under their own keys; :meth:`fit` keeps it in ``EpochMetrics.extra``."""
        return self.hooks.merged("autotune_epoch_end", engine=self, epoch=epoch)

    # -- loops -------------------------------------------------------------------
    def fit(self, loader: Iterable[Any], epochs: int = 1, val_loader: Iterable[Any] | None = None,
            *, max_steps: int | None = None, monitor: Monitor | None = None) -> History:
        """Train for ``epochs`` (or until ``max_steps`` micro-batches in
        total); validate on ``val_loader`` after each epoch. Returns (and
        extends) :attr:`history`."""
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
        self._check_open()
        return run_evaluate(self, loader, metrics or {})

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model (keys as in the user's module: no ``_orig_mod.``), optimizer,
        each plugin's state (the fp16 scaler's), scheduler, counters, history
        and plan."""
        return engine_state(module=self.module, optimizer=self.optimizer,
                            plugins=self.plugin_checkpoint(), scheduler=self.scheduler,
                            counters={"micro_steps": self.micro_steps,
                                      "optimizer_steps": self.optimizer_steps},
                            history=self.history, plan=self.plan)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        restored = load_engine_state(state, module=self.module, optimizer=self.optimizer,
                                     load_plugins=self.load_plugin_checkpoint,
                                     scheduler=self.scheduler)
        self.micro_steps = restored.counters.get("micro_steps", 0)
        self.optimizer_steps = restored.counters.get("optimizer_steps", 0)
        self.history = restored.history

    def plugin_checkpoint(self) -> dict[str, Any]:
        """Each plugin's ``autotune_engine_state``, by plugin name."""
        return {plugin: dict(state) for plugin, state in
                self.hooks.each("autotune_engine_state", engine=self) if state is not None}

    def load_plugin_checkpoint(self, states: Mapping[str, Any]) -> None:
        for call in self.hooks["autotune_load_engine_state"]:
            if states.get(call.plugin) is not None:
                call(engine=self, state=states[call.plugin])

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({self.describe()})"
