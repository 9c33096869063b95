"""The shared training engine: the one place where a plan changes training.

The engine knows no plugin and has no slot for one. It runs forward, loss,
backward and ``optimizer.step()`` exactly as a hand-written PyTorch loop
does, and at each point of the step it calls the plugins' step hooks
(``autotune_prepare_inputs``, ``autotune_forward_context``,
``autotune_transform_loss``, ``autotune_window_size``,
``autotune_before_optimizer_step``, ``autotune_optimizer_step``,
``autotune_after_optimizer_step``, ``autotune_step_failed``; see
:mod:`autotune.plugin.hookspecs`). With no plugin, or every plugin disabled, a
step is bitwise plain PyTorch. One micro-batch::

    inputs = prepare_inputs(move to device)
    with no_sync() unless last micro-batch of the window:   # DDP only
        with every forward_context:
            loss = loss_fn(model(inputs), targets)
        transform_loss(loss).backward()
    when the window (window_size micro-batches) is full, or the epoch ends:
        before_optimizer_step; optimizer_step or optimizer.step();
        zero_grad; after_optimizer_step; the scheduler steps unless skipped
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Mapping

import torch

from autotune.workload.batches import find_ddp, is_compiled, model_device, move_to, unwrap_model
from autotune.workload.contract import StepContract
from autotune.errors import AutotuneError, TrainingError
from autotune.engine.history import History
from autotune.plan.plan import Plan, Source
from autotune.display.progress import progress_enabled
from autotune.plan.report import Kind, Report
from autotune.engine.step import Monitor, Recovery

log = logging.getLogger("autotune.engine.engine")


#: The step hooks, called directly (not through pluggy's loop) so that the
#: cost per step is one Python call per implementing plugin.
STEP_HOOKS = (
    "autotune_prepare_inputs", "autotune_forward_context", "autotune_transform_loss",
    "autotune_window_size", "autotune_before_optimizer_step", "autotune_optimizer_step",
    "autotune_after_optimizer_step", "autotune_step_failed", "autotune_epoch_start",
    "autotune_epoch_end", "autotune_epoch_loader", "autotune_live_candidate",
    "autotune_live_change", "autotune_engine_state", "autotune_load_engine_state",
    "autotune_describe_engine",
)


@dataclass(frozen=True)
class _Impl:
    plugin: str
    hook: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]

    def __call__(self, **kwargs: Any) -> Any:
        try:
            return self.function(**{a: kwargs[a] for a in self.argnames})
        except (TrainingError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - name the plugin
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise TrainingError(f"plugin {self.plugin!r} failed in {self.hook}: "
                                f"{type(exc).__name__}: {first}") from exc


class Engine:
    """Train a model the way ``plan`` says. See docs/engine.md."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any, Any], torch.Tensor] | StepContract | None = None,
                 plan: Plan | None = None, *,
                 step_fn: Callable[[Any, Any], Any] | None = None,
                 batch_size_fn: Callable[[Any], int] | None = None,
                 manager: Any = None, context: Any = None,
                 device: str | torch.device | None = None, scheduler: Any = None,
                 scheduler_interval: str = "step", progress: bool = True,
                 report: Report | None = None, trial: bool = False) -> None:
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
        self.plan = plan if plan is not None else Plan()
        self.context = context
        self.report = report if report is not None else Report()
        self.progress = progress
        #: A tuning trial or probe: what it measures must run as planned, so
        #: nothing changes during it (autotune.live.adapter stays still).
        self.trial = trial
        self.history = History()
        if device is None:
            self.device = model_device(model)
        else:
            self.device = torch.device(device)
            if model_device(model) != self.device:
                unwrap_model(model).to(self.device)
        # Counters, over the engine's life.
        self.micro_steps = 0
        self.optimizer_steps = 0
        self.skipped_steps = 0
        self._window_count = 0
        self._window_size = 1
        self._last_samples = 0
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._plugin_state: dict[str, dict[str, Any]] = {}
        self._hooks: dict[str, list[_Impl]] = {name: [] for name in STEP_HOOKS}
        if manager is None and self.plan.plugins():
            from autotune.plugin.manager import PluginManager

            manager = PluginManager()
        self.manager = manager
        if manager is not None:
            try:
                self.plan = manager.setup_engine(self, self.plan)
                for name in STEP_HOOKS:
                    self._hooks[name] = [_Impl(plugin, name, function, tuple(args)) for
                                         plugin, function, args in
                                         manager.step_hooks(name, self.plan.plugins())]
            except BaseException:
                self.close()
                raise

    # -- what plugins use ------------------------------------------------------
    def plugin_state(self, plugin: str) -> dict[str, Any]:
        """A plugin's per-engine objects (created empty on first use)."""
        return self._plugin_state.setdefault(plugin, {})

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at :meth:`close` (last registered, first run)."""
        self._close_callbacks.append(callback)

    def note(self, plugin: str, kind: Kind | str, message: str) -> None:
        """Record what a plugin did in the shared report."""
        self.report.add(plugin, kind, message)

    def revise_plan(self, plugin: str, values: Mapping[str, Any], reason: str) -> None:
        """Record in :attr:`plan` what training actually ran with, when it
        differs from what was planned (a fallback); observed at run time, so
        the source is ``measured``. Delegates to :meth:`Plan.with_values`."""
        self.plan = self.plan.with_values(plugin, values, Source.MEASURED, reason, force=True)

    def change_live(self, plugin: str, values: Mapping[str, Any], source: Source,
                    reason: str) -> bool:
        """Change ``plugin``'s settings during a run (at an epoch boundary):
        the plan gets ``values`` and the plugin's ``autotune_live_change``
        brings them into force. False, and the plan unchanged, when the
        plugin cannot (it does not implement the hook or says no)."""
        before = self.plan
        self.plan = self.plan.with_values(plugin, values, source, reason, force=True)
        done = False
        for impl in self._hooks["autotune_live_change"]:
            if impl.plugin == plugin:
                done = bool(impl(engine=self, values=dict(values))) or done
        if not done:
            self.plan = before
        return done

    def live_candidates(self, metrics: Any, share: Any) -> list[tuple[str, dict[str, Any]]]:
        """``(plugin, {key: value})``: what each plugin proposes to try next
        epoch (``autotune_live_candidate``), in call order."""
        out = []
        for impl in self._hooks["autotune_live_candidate"]:
            values = impl(engine=self, metrics=metrics, share=share)
            if values:
                out.append((impl.plugin, dict(values)))
        return out

    @property
    def window_size(self) -> int:
        """Micro-batches in the current optimizer-step window."""
        return self._window_size

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches in a full window (what the plugins ask for)."""
        return self._ask_window(None)

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
            "step_hooks": {name[len("autotune_"):]: [i.plugin for i in impls]
                           for name, impls in self._hooks.items() if impls},
        }
        for impl in self._hooks["autotune_describe_engine"]:
            out.update(impl(engine=self) or {})
        return out

    # -- one step ----------------------------------------------------------------
    def train_step(self, batch: Any) -> float:
        """One micro-batch; the optimizer steps when the window is full.
        Call :meth:`flush` to step a window that ends early."""
        return float(self._micro_step(batch, remaining=None))

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
        if self._window_count >= self._window_size:
            self._step_optimizer()
            return True
        return False

    def _check_open(self) -> None:
        if self._closed:
            raise TrainingError("this engine is closed (its thread and precision settings were "
                                "undone); build a new one with tuned.engine(...)")

    def prepare_batch(self, batch: Any) -> Any:
        """``batch`` on the engine's device, its inputs as the plugins want
        them (``autotune_prepare_inputs``: channels_last...); counts its
        samples. What the engine's own step does first; for your own loop."""
        contract = self.contract
        batch = move_to(batch, self.device, non_blocking=self.device.type == "cuda")
        hooks = self._hooks["autotune_prepare_inputs"]
        if hooks:
            inputs = contract.inputs_of(batch)
            for impl in hooks:
                changed = impl(engine=self, inputs=inputs)
                if changed is not None:
                    inputs = changed
            batch = contract.with_inputs(batch, inputs)
        self._last_samples = contract.samples(batch)
        return batch

    def forward_context(self, training: bool = True) -> ContextManager[Any]:
        """Every plugin's context for the forward pass (autocast, ...),
        first plugin outermost; a no-op when none gives one."""
        contexts = [c for c in (impl(engine=self, training=training)
                                for impl in self._hooks["autotune_forward_context"])
                    if c is not None]
        if not contexts:
            return nullcontext()
        if len(contexts) == 1:
            return contexts[0]
        stack = ExitStack()

        class _All:
            def __enter__(self_inner) -> Any:
                for context in contexts:
                    stack.enter_context(context)
                return stack

            def __exit__(self_inner, *exc: Any) -> Any:
                return stack.__exit__(*exc)

        return _All()

    #: The name users of autocast know; the same contexts.
    autocast = forward_context

    def _ask_window(self, remaining: int | None) -> int:
        for impl in self._hooks["autotune_window_size"]:
            size = impl(engine=self, remaining=remaining)
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                    raise TrainingError(f"plugin {impl.plugin!r}: autotune_window_size must "
                                        f"return an integer >= 1, got {size!r}")
                return size
        return 1

    def _micro_step(self, batch: Any, remaining: int | None) -> torch.Tensor:
        self._check_open()
        if self._window_count == 0:
            self._window_size = self._ask_window(remaining)
        if not self.model.training:
            self.model.train()
        batch = self.prepare_batch(batch)
        sync = self._window_count + 1 >= self._window_size
        loss = self._guarded(lambda: self._forward_backward(batch, sync), "training")
        self._window_count += 1
        self.micro_steps += 1
        if self._window_count >= self._window_size:
            self._step_optimizer()
        return loss

    def _forward_backward(self, batch: Any, sync: bool) -> torch.Tensor:
        ddp = find_ddp(self.model)
        skip_sync = ddp.no_sync() if ddp is not None and not sync else nullcontext()
        with skip_sync:
            with self.forward_context(True):
                result = self.contract.loss(self.model, batch)
            self._backward(result.value)
        self.last_loss_parts = ({k: v.detach() for k, v in result.parts.items()}
                                if result.parts else {})
        return result.value.detach()

    def _backward(self, loss: torch.Tensor) -> None:
        differentiated = loss
        for impl in self._hooks["autotune_transform_loss"]:
            changed = impl(engine=self, loss=differentiated)
            if changed is not None:
                differentiated = changed
        differentiated.backward()

    def _guarded(self, run: Callable[[], Any], phase: str) -> Any:
        """Run ``run``; when it raises, a plugin may change the engine
        (``autotune_step_failed``) and the step runs once more. Loader
        worker failures and plugin errors are not recoverable here."""
        if not self._hooks["autotune_step_failed"]:
            return run()
        try:
            return run()
        except Exception as error:  # noqa: BLE001 - offered to the plugins
            from autotune.engine.loop import is_worker_failure

            if is_worker_failure(error) or isinstance(error, TrainingError):
                raise
            recovery: Recovery | None = None
            for impl in self._hooks["autotune_step_failed"]:
                recovery = impl(engine=self, error=error, phase=phase)
                if recovery is not None:
                    break
            if recovery is None:
                raise
            if phase == "training" and self._window_count == 0:
                self.optimizer.zero_grad(set_to_none=True)
            try:
                result = run()
            except Exception:
                recovery.undo()
                raise
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            recovery.done(f"{type(error).__name__} during {phase}: {first_line}")
            return result

    def _step_optimizer(self) -> None:
        count = self._window_count
        for impl in self._hooks["autotune_before_optimizer_step"]:
            impl(engine=self, optimizer=self.optimizer, micro_batches=count)
        stepped: bool | None = None
        for impl in self._hooks["autotune_optimizer_step"]:
            stepped = impl(engine=self, optimizer=self.optimizer)
            if stepped is not None:
                break
        if stepped is None:
            self.optimizer.step()
            stepped = True
        self.optimizer.zero_grad(set_to_none=True)
        self._window_count = 0
        self.optimizer_steps += 1
        skipped = not stepped
        for impl in self._hooks["autotune_after_optimizer_step"]:
            impl(engine=self, optimizer=self.optimizer, skipped=skipped)
        if skipped:
            self.skipped_steps += 1
        elif self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()

    def _epoch_event(self, epoch: int, end: bool) -> dict[str, float]:
        metrics: dict[str, float] = {}
        name = "autotune_epoch_end" if end else "autotune_epoch_start"
        for impl in self._hooks[name]:
            result = impl(engine=self, epoch=epoch)
            if end and result:
                metrics.update(result)
        return metrics

    def _epoch_loader(self, loader: Iterable[Any], epoch: int) -> Iterable[Any]:
        for impl in self._hooks["autotune_epoch_loader"]:
            replacement = impl(engine=self, loader=loader, epoch=epoch)
            if replacement is not None:
                return replacement
        return loader

    # -- loops -------------------------------------------------------------------
    def fit(self, loader: Iterable[Any], epochs: int = 1, val_loader: Iterable[Any] | None = None,
            *, max_steps: int | None = None, monitor: Monitor | None = None) -> History:
        """Train for ``epochs`` (or until ``max_steps`` micro-batches in
        total); validate on ``val_loader`` after each epoch. Returns (and
        extends) :attr:`history`."""
        from autotune.engine.loop import run_fit

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
        from autotune.engine.loop import run_evaluate

        self._check_open()
        return run_evaluate(self, loader, metrics or {})

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model (keys as in the user's module: no ``_orig_mod.``), optimizer,
        scaler, scheduler, counters, history and plan."""
        from autotune.engine.checkpoint import engine_state

        return engine_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from autotune.engine.checkpoint import load_engine_state

        load_engine_state(self, state)

    def plugin_checkpoint(self) -> dict[str, Any]:
        """Each plugin's ``autotune_engine_state``, by plugin name."""
        out: dict[str, Any] = {}
        for impl in self._hooks["autotune_engine_state"]:
            state = impl(engine=self)
            if state is not None:
                out[impl.plugin] = dict(state)
        return out

    def load_plugin_checkpoint(self, states: Mapping[str, Any]) -> None:
        for impl in self._hooks["autotune_load_engine_state"]:
            if states.get(impl.plugin) is not None:
                impl(engine=self, state=states[impl.plugin])

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
