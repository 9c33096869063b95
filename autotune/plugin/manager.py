"""The plugin manager: every call autotune makes to its plugins.

Its jobs live apart: :mod:`autotune.plugin.registry` knows which plugins
there are and orders each hook's implementations; each hook's
specification (:mod:`autotune.plugin.specs`) names the check of its answers
(:mod:`autotune.plugin.answers`); this facade calls the hooks.

Every call is one of three generic ways -- :meth:`PluginManager.each`
(``{plugin: answer}``), :meth:`PluginManager.first` (the first answer) and
:meth:`PluginManager.chain` (each plugin gets the previous result) -- which
call every implementation by keyword, check its answer with the hook's own
check and contain a failure to the plugin that failed. The typed methods
below are these with the arguments and the result's shape written out, so
call sites stay typed; a new hook needs none (``manager.each("autotune_x",
{...})``), and so adding a hook touches its spec and its caller only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from autotune.errors import ProfileError
from autotune.machine.hardware import Hardware
from autotune.plan.knobs import Knob, check_overrides
from autotune.plan.plan import Plan, Setting, Source
from autotune.plan.report import Kind, Report
from autotune.plan.resources import Share
from autotune.plugin import specs
from autotune.plugin.answers import Asked, one_line
from autotune.plugin.context import Context
# Re-exported: what callers and tests import from the manager.
from autotune.plugin.registry import PluginInfo, PluginWarning, Registry

__all__ = ["OptimizerChoice", "PluginInfo", "PluginManager", "PluginWarning", "share_plan"]

log = logging.getLogger("autotune.plugin.manager")

#: What a call returns for an implementation that raised (it has failed).
_FAILED = object()


@dataclass(frozen=True)
class OptimizerChoice:
    """What ``autotune_apply_optimizer`` chose for an engine: the optimizer
    to step (the engine installs it) and the plugins left out of this engine."""

    optimizer: Any
    #: ``{plugin: why}``; pass it on to :meth:`PluginManager.setup_engine`.
    left_out: Mapping[str, str]


class PluginManager:
    """Loads and calls autotune plugins.

    :param disable: plugin names to block (``disable=[...]``, ``--disable``).
        ``$AUTOTUNE_DISABLE`` (comma-separated) is added to these.
    :param autoload: load third-party entry points; default: unless
        ``$AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param plugins: extra plugin objects to register directly, as
        ``(name, object)`` pairs or objects with a ``NAME`` attribute.
    :param strict: re-raise a plugin's exception instead of leaving it out.
    :param disabled_by: how ``disable`` is named in the reasons the plan
        records (the CLI passes ``"--disable"``).
    :param third_party: ``False``: third-party entry points are neither
        loaded nor listed (:func:`autotune.testing.plugin_manager`).
    """

    def __init__(self, *, disable: Iterable[str] = (), autoload: bool | None = None,
                 plugins: Iterable[Any] = (), strict: bool = False,
                 disabled_by: str = "disable=[...]", third_party: bool = True) -> None:
        self.registry = Registry(disable=disable, autoload=autoload, plugins=plugins,
                                 strict=strict, disabled_by=disabled_by, third_party=third_party)

    # -- the registry ----------------------------------------------------------------
    def load(self) -> "PluginManager":
        """Block, register built-ins, then entry points; validate. Once."""
        self.registry.load()
        return self

    def plugin_infos(self) -> list[PluginInfo]:
        return self.registry.infos()

    def names(self) -> list[str]:
        """Names of the registered (loaded, not blocked) plugins, in order."""
        return self.registry.names()

    def known_names(self) -> list[str]:
        return self.registry.known_names()

    def not_loaded_reasons(self) -> dict[str, str]:
        """Why each known-but-absent plugin contributes nothing."""
        return self.registry.not_loaded_reasons()

    def implementers(self, hook_name: str, plugins: Iterable[str] | None = None) -> list[str]:
        """The plugins (among ``plugins``, default all loaded) that implement
        ``hook_name`` and have not failed, in call order."""
        return [i.plugin_name for i in self.registry.impls(hook_name, plugins)]

    def drop_failed(self, plan: Plan) -> Plan:
        """``plan`` without the plugins that have failed so far, each
        recorded under ``disabled`` with the reason."""
        return plan.without({n: why for n, why in self.registry.failed.items()
                             if n in plan.settings or n not in plan.disabled})

    # -- the generic calls -------------------------------------------------------------
    def _call(self, hook: str, impl: Any, args: Mapping[str, Any]) -> Any:
        """One implementation, by keyword; :data:`_FAILED` when it raised."""
        try:
            return impl.function(**{a: args[a] for a in impl.argnames})
        except ProfileError as exc:
            # The plugin rejected its profile section: bad input, not a
            # plugin bug, so it is an error naming the profile file.
            profile = getattr(args.get("context"), "profile", None)
            raise ProfileError(one_line(str(exc)), file=getattr(profile, "path", None) or None,
                               key=f"plugins.{impl.plugin_name}") from exc
        except Exception as exc:  # noqa: BLE001 - named, and left out
            self.registry.fail(impl.plugin_name, exc, f"in {hook}")
            return _FAILED

    def answers(self, hook: str, args: Mapping[str, Any], plugins: Iterable[str] | None = None,
                *, about: Plan | None = None,
                latest_first: bool = False) -> Iterator[tuple[str, Any]]:
        """``(plugin, answer)`` for every implementation of ``hook`` among
        ``plugins`` (default: every loaded one), each called separately so
        its answer is attributed to it and a failure is contained. Each
        answer goes through the hook's check (its spec's ``@checked_by``):
        ``about`` is the plan it is about (default: ``args["plan"]``); a
        malformed answer counts as that plugin failing; no answer (``None``)
        is left out. ``latest_first``: see :meth:`Registry.impls`."""
        check = specs.check_of(hook)
        plan = about if about is not None else args.get("plan")
        for impl in self.registry.impls(hook, plugins, latest_first=latest_first):
            name = impl.plugin_name
            answer = self._call(hook, impl, args)
            if answer is _FAILED:
                continue
            if check is not None:
                try:
                    answer = check(answer, Asked(hook, name, plan))
                except (TypeError, ValueError) as exc:
                    self.registry.fail(name, exc, f"in {hook}")
                    continue
            if answer is not None:
                yield name, answer

    def each(self, hook: str, args: Mapping[str, Any], plugins: Iterable[str] | None = None,
             *, about: Plan | None = None) -> dict[str, Any]:
        """``{plugin: checked answer}`` of every plugin that answered."""
        return dict(self.answers(hook, args, plugins, about=about))

    def first(self, hook: str, args: Mapping[str, Any], plugins: Iterable[str] | None = None,
              *, about: Plan | None = None,
              latest_first: bool = False) -> tuple[str, Any] | None:
        """``(plugin, answer)``: the first well-formed answer, or ``None``."""
        return next(self.answers(hook, args, plugins, about=about, latest_first=latest_first),
                    None)

    def chain(self, hook: str, key: str, args: Mapping[str, Any],
              plugins: Iterable[str] | None = None) -> Any:
        """Each plugin gets the previous plugin's result as ``args[key]``
        (``None`` keeps it); the last result."""
        current = dict(args)
        for impl in self.registry.impls(hook, plugins):
            result = self._call(hook, impl, current)
            if result is not None and result is not _FAILED:
                current[key] = result
        return current[key]

    # -- planning ----------------------------------------------------------------------
    def detect(self, hardware: Hardware) -> Hardware:
        """``hardware`` with each plugin's facts (``autotune_detect``)."""
        for name, facts in self.answers("autotune_detect", {"hardware": hardware}):
            hardware = hardware.with_extra(name, facts)
        return hardware

    def configure(self, context: Context) -> Plan:
        """Ask every plugin for its settings; build the plan (no overrides)."""
        self.load()
        disabled = dict(self.not_loaded_reasons())
        enabled = []
        for name in self.names():
            if not context.profile.is_enabled(name):
                disabled[name] = f"disabled by profile {context.profile.name}"
            else:
                enabled.append(name)
        settings = self.each("autotune_configure", {"context": context}, enabled)
        return self.drop_failed(Plan(settings=settings, disabled=disabled,
                                     profile=context.profile.name,
                                     hardware_fingerprint=context.hardware.fingerprint))

    def knobs(self, context: Context, plan: Plan) -> dict[str, dict[str, Knob]]:
        """Each plugin's description of its settings (``autotune_knobs``)."""
        return self.each("autotune_knobs", {"context": context}, plan.plugins(), about=plan)

    def candidates(self, context: Context, plan: Plan) -> dict[str, list[dict[str, Any]]]:
        """Each plugin's alternatives worth a trial (keys it proposed only)."""
        return self.each("autotune_candidates", {"context": context, "plan": plan},
                         plan.plugins())

    def with_overrides(self, context: Context, plan: Plan,
                       overrides: Mapping[str, Mapping[str, Any]]) -> Plan:
        """``plan.with_overrides(overrides)``, each checked against its
        plugin's knob (:func:`autotune.plan.knobs.check_overrides`), then
        :meth:`follow_overrides`."""
        overridden = plan.with_overrides(overrides)
        check_overrides(overrides, self.knobs(context, plan))
        return self.follow_overrides(context, overridden, overrides)

    def follow_overrides(self, context: Context, plan: Plan,
                         overrides: Mapping[str, Mapping[str, Any]]) -> Plan:
        """Each overridden plugin's ``autotune_follow_overrides`` on ``plan``
        (which has the overrides in it): the settings that follow from an
        overridden one are recomputed from the overridden value (a key the
        user set stays as set)."""
        for plugin, values in overrides.items():
            args = {"context": context, "plan": plan, "overrides": dict(values)}
            for name, settings in self.answers("autotune_follow_overrides", args, [plugin]):
                for key, setting in settings.items():
                    if key in values:
                        continue  # the user's word stands
                    plan = plan.with_values(name, {key: setting.value}, setting.source,
                                            setting.reason, force=True)
        return plan

    # -- the search space (measured tuning) ---------------------------------------------
    def search_priors(self, context: Context, device_type: str,
                      plugins: Iterable[str]) -> dict[str, tuple[float, str]]:
        """``{plugin: (gain, reason)}`` from ``autotune_search_prior`` for
        ``plugins``; a plugin without an answer is absent (the tuner gives it
        its unknown prior)."""
        return self.each("autotune_search_prior",
                         {"context": context, "device_type": device_type}, plugins)

    def prune_reason(self, context: Context, plugin: str, values: Mapping[str, Any],
                     device_type: str) -> str | None:
        """Why ``plugin``'s own ``autotune_prune_candidate`` says the
        candidate ``values`` is not worth a trial here, or ``None``."""
        args = {"context": context, "values": dict(values), "device_type": device_type}
        answer = self.first("autotune_prune_candidate", args, [plugin])
        return None if answer is None else answer[1]

    def micro_batches(self, plan: Plan) -> int:
        """Micro-batches per optimizer step under ``plan``: the first answer
        of ``autotune_micro_batches`` among the plan's plugins, else 1."""
        answer = self.first("autotune_micro_batches", {"plan": plan}, plan.plugins())
        return 1 if answer is None else answer[1]

    def batch_size_found(self, plan: Plan, context: Context, batch_size: int,
                         effective_batch: int,
                         largest_fitting: int | None = None) -> dict[str, dict[str, Setting]]:
        """``{plugin: {key: Setting}}``: what each plugin in ``plan`` writes
        into it to keep ``effective_batch`` with micro-batches of
        ``batch_size`` (``autotune_batch_size_found``)."""
        args = {"plan": plan, "context": context, "batch_size": batch_size,
                "effective_batch": effective_batch,
                "largest_fitting": batch_size if largest_fitting is None else largest_fitting}
        return self.each("autotune_batch_size_found", args, plan.plugins())

    # -- resources ---------------------------------------------------------------------
    def fold_schedule(self, context: Context, plan: Plan, **kwargs: Any) -> "tuple[str, Any] | None":
        """``(plugin, FoldPlan)``: the first answer of ``autotune_fold_schedule``
        among the loaded plugins the plan does not list as disabled (latest
        loaded first), or ``None`` when none answers. ``kwargs`` are the
        hook's other arguments."""
        asked = [n for n in self.names() if n not in plan.disabled]
        return self.first("autotune_fold_schedule", {"context": context, "plan": plan, **kwargs},
                          asked, latest_first=True)

    def resource_share(self, plan: Plan, context: Context,
                       share: Share) -> dict[str, dict[str, Setting]]:
        """``{plugin: {key: Setting}}``: how each plugin in ``plan`` changes
        its own settings under ``share`` (``autotune_resource_share``); the
        caller writes them into the plan (:func:`share_plan`)."""
        return self.each("autotune_resource_share",
                         {"plan": plan, "context": context, "share": share}, plan.plugins())

    def machine_share(self, context: Context, plan: Plan) -> "tuple[str, Share] | None":
        """``(plugin, Share)``: the first answer of ``autotune_machine_share``
        among the plugins in ``plan`` (latest loaded first), or ``None``."""
        return self.first("autotune_machine_share", {"context": context, "plan": plan},
                          plan.plugins(), latest_first=True)

    def wrap_distributed(self, model: Any, plan: Plan, context: Context,
                         report: Report | None = None) -> Any:
        """``autotune_wrap_distributed`` of each plugin in ``plan``, each on
        the previous result, starting from the DDP module."""
        args = {"model": model, "plan": plan, "context": context, "report": _report(report)}
        return self.chain("autotune_wrap_distributed", "model", args, plan.plugins())

    # -- application -------------------------------------------------------------------
    def apply_model(self, model: Any, plan: Plan, context: Context, report: Report | None = None,
                    skip: Iterable[str] = ()) -> Any:
        """``autotune_apply_model`` of each plugin in ``plan`` but those in
        ``skip`` (under DDP: the ones that wrap the DDP module instead)."""
        skipped = set(skip)
        args = {"model": model, "plan": plan, "context": context, "report": _report(report)}
        return self.chain("autotune_apply_model", "model", args,
                          [p for p in plan.plugins() if p not in skipped])

    def apply_loader(self, loader: Any, plan: Plan, context: Context,
                     report: Report | None = None) -> Any:
        args = {"loader": loader, "plan": plan, "context": context, "report": _report(report)}
        return self.chain("autotune_apply_loader", "loader", args, plan.plugins())

    # -- the engine: it calls these while it is built, and installs what they choose ------
    def apply_optimizer(self, optimizer: Any, engine: Any, plan: Plan) -> OptimizerChoice:
        """``autotune_apply_optimizer`` of each plugin in ``plan``, each on the
        previous result, starting from ``optimizer``. A plugin that raises or
        answers something else than an optimizer is left out of this engine
        only (named in its report). The engine installs the optimizer chosen
        and passes ``left_out`` on to :meth:`setup_engine`."""
        hook = "autotune_apply_optimizer"
        check = specs.check_of(hook)
        left_out: dict[str, str] = {}
        args = {"optimizer": optimizer, "engine": engine, "plan": plan}
        for impl in self.registry.impls(hook, plan.plugins()):
            name = impl.plugin_name
            try:
                result = impl.function(**{a: args[a] for a in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - named, and left out of this engine
                left_out[name] = _left_out(engine, name, hook, exc)
                continue
            try:
                result = check(result, Asked(hook, name, plan)) if check else result
            except (TypeError, ValueError) as exc:
                left_out[name] = f"left out of this engine: {exc}"
                engine.note(name, Kind.FALLBACK, left_out[name])
                continue
            if result is not None:
                args["optimizer"] = result
        return OptimizerChoice(args["optimizer"], left_out)

    def setup_engine(self, engine: Any, plan: Plan,
                     left_out: Mapping[str, str] | None = None) -> Plan:
        """Each plugin in ``plan`` (but those ``left_out`` already) sets up its
        part of the step (``autotune_setup_engine``). A plugin that raises is
        left out of this engine only: the report names it and the returned
        plan (``engine.plan`` with what plugins revised) lists it as
        disabled, so the engine never claims a setting it does not run.
        Later engines (the next trial) ask it again."""
        hook = "autotune_setup_engine"
        left = dict(left_out or {})
        args = {"engine": engine, "plan": plan}
        for impl in self.registry.impls(hook, plan.plugins()):
            name = impl.plugin_name
            if name in left:
                continue
            try:
                impl.function(**{a: args[a] for a in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - named, and left out of this engine
                left[name] = _left_out(engine, name, hook, exc)
        return engine.plan.without(left)

    def step_hooks(self, hook_name: str, plugins: Iterable[str]) -> list[tuple[str, Any, list[str]]]:
        """``(plugin, function, argument names)`` for each implementation of
        a step hook among ``plugins``, in call order (``tryfirst`` first,
        then registration order, ``trylast`` last). The engine calls them."""
        return [(i.plugin_name, i.function, list(i.argnames))
                for i in self.registry.impls(hook_name, plugins)]


def _report(report: Report | None) -> Report:
    # Not ``report or Report()``: an empty report is falsy, and the caller's
    # (shared with the engine) must receive the events.
    return report if report is not None else Report()


def _left_out(engine: Any, plugin: str, hook: str, exc: BaseException) -> str:
    """Why ``plugin`` is left out of ``engine`` after ``hook`` raised; noted
    in the engine's report and logged."""
    why = f"left out of this engine: {hook} raised {type(exc).__name__}: {one_line(str(exc), 200)}"
    engine.note(plugin, Kind.FALLBACK, f"{why}; its part stays PyTorch's default")
    log.warning("plugin %r %s", plugin, why)
    return why


def share_plan(plan: Plan, share: Share, *, context: Context, manager: PluginManager,
               report: Report | None = None, kind: Kind | str | None = None,
               source: Source | None = None) -> Plan:
    """``plan`` with what each of its plugins says changes under ``share``
    (``autotune_resource_share``). With ``report``, each plugin whose
    settings changed gets one event of ``kind`` (default: applied) listing
    ``key old -> new``. ``source`` (e.g. ``daemon``) replaces the source the
    plugins gave, so the plan says who divided the machine."""
    for plugin, settings in manager.resource_share(plan, context, share).items():
        before = plan.values(plugin)
        for key, setting in settings.items():
            plan = plan.with_values(plugin, {key: setting.value}, source or setting.source,
                                    setting.reason, force=True)
        changed = [f"{key} {before.get(key)!r} -> {setting.value!r}"
                   for key, setting in settings.items() if before.get(key) != setting.value]
        if report is not None and changed:
            report.add(plugin, kind or Kind.APPLIED, f"{', '.join(changed)}: {share.reason}")
    return plan
