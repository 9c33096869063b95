"""The engine as its plugins see it: what a plugin's hooks may use of the
``engine`` they receive, and how the plugins come to take part in it.

An engine is set up once, when it is built: the plugins in its plan change
the optimizer (the engine installs the one they chose), set up their part
of the step, and make its live adapters unless its builder gave others. A
plugin that fails in the first two is left out of that engine only
(``plan.disabled`` says why); the next engine asks it again. From then on a
plugin keeps its per-engine objects in :meth:`PluginHost.plugin_state`,
registers the undo of every global change with :meth:`PluginHost.on_close`,
records what it did with :meth:`PluginHost.note` and what ran instead of
the plan with :meth:`PluginHost.revise_plan`.

:class:`~autotune.engine.engine.Engine` is a :class:`PluginHost`; its
training (the step, epochs, checkpoints) is in :mod:`autotune.engine.engine`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import torch

from autotune.engine.hooks import PluginHooks
from autotune.engine.step import LiveHook
from autotune.plan.plan import Plan, Source
from autotune.plan.report import Kind, Report
from autotune.plugin.manager import PluginManager

log = logging.getLogger("autotune.engine.engine")

#: Makes one live adapter for the engine it is given (``Engine(live=...)``).
LiveMaker = Callable[[Any], LiveHook]


class PluginHost:
    """The part of an engine its plugins use; built last by the engine's
    constructor, once the model, optimizer and device are in place."""

    optimizer: torch.optim.Optimizer

    def __init__(self, plan: Plan, *, manager: Any, context: Any, report: Report,
                 live: Sequence[LiveMaker] | None, tuners: Sequence[LiveMaker] = ()) -> None:
        self.plan = plan
        self.context = context
        self.report = report
        self._plugin_state: dict[str, dict[str, Any]] = {}
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._hooks = PluginHooks()
        self._live: tuple[LiveHook, ...] = ()
        if manager is None and plan.plugins():
            manager = PluginManager()
        self.manager = manager
        try:
            self._set_up(manager, live, tuners)
        except BaseException:
            self.close()
            raise

    def _set_up(self, manager: Any, live: Sequence[LiveMaker] | None,
                tuners: Sequence[LiveMaker]) -> None:
        """The plugins change the optimizer (the engine installs the one
        they chose), set up their part of the step, and (unless ``live``
        says otherwise) make the live adapters. One that fails in the first
        two is left out of this engine only (``plan.disabled`` says why)."""
        if manager is not None:
            plan = self.plan
            choice = manager.apply_optimizer(self.optimizer, self, plan)
            self.optimizer = choice.optimizer
            self.plan = manager.setup_engine(self, plan, choice.left_out)
            self._hooks = PluginHooks.of(manager, self.plan.plugins())
        if live is None:
            made = [adapter for _plugin, adapter in
                    self._hooks.each("autotune_live_adapter", engine=self, plan=self.plan)]
        else:
            made = [make(self) for make in live]
        made += [make(self) for make in tuners]
        self._live = tuple(adapter for adapter in made if adapter is not None)

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
        for call in self._hooks["autotune_live_change"]:
            if call.plugin == plugin:
                done = bool(call(engine=self, values=dict(values))) or done
        if not done:
            self.plan = before
        return done

    def live_candidates(self, metrics: Any, share: Any) -> list[tuple[str, dict[str, Any]]]:
        """``(plugin, {key: value})``: what each plugin proposes to try next
        epoch (``autotune_live_candidate``), in call order."""
        return [(plugin, dict(values)) for plugin, values in self._hooks.each(
            "autotune_live_candidate", engine=self, metrics=metrics, share=share) if values]

    def recover_live(self, error: BaseException, phase: str) -> bool:
        """A step or a batch failed: True when a live adapter took back the
        change it was trying (so the step is worth running once more under
        the settings that worked), False when none had anything to take back."""
        return any(recover(error, phase) for adapter in self._live
                   if (recover := getattr(adapter, "recover", None)) is not None)

    @property
    def changes_mid_epoch(self) -> bool:
        """True when a live adapter may change settings between any two
        steps, not only at epoch boundaries (online tuning): a plugin that
        owns the loader then makes it switchable mid-epoch."""
        return any(getattr(adapter, "mid_epoch", False) for adapter in self._live)

    def live_status(self) -> str:
        """What the live adapters are doing now, for the progress bar ("" when nothing)."""
        return "; ".join(text for adapter in self._live
                         if (status := getattr(adapter, "status", None)) is not None
                         and (text := status()))

    @property
    def live_adapters(self) -> tuple[LiveHook, ...]:
        """What changes this engine's settings during its run (see
        :class:`~autotune.engine.engine.Engine`'s ``live``)."""
        return self._live

    @property
    def hooks(self) -> PluginHooks:
        """The hooks this engine calls, of the plugins in its plan."""
        return self._hooks

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
