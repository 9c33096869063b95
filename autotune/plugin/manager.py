"""A typed facade over pluggy's PluginManager (after tox's plugin/manager.py).

One place loads built-ins, applies blocks, loads third-party entry points
and validates hook names; one method per hook keeps call sites typed.

Order of loading matters: every disable source is applied with
``set_blocked`` *before* anything is registered, so pluggy never imports a
blocked third-party plugin.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import os
import warnings
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from autotune.plugin import hookspecs
from autotune.plugin.context import Context
from autotune.errors import PluginError, ProfileError
from autotune.machine.hardware import Hardware
from autotune.plan.knobs import Knob
from autotune.plan.plan import Plan, Setting, Source

log = logging.getLogger("autotune.plugin.manager")

ENTRY_POINT_GROUP = "autotune"
DISTRIBUTION = "torch-autotune"
DISABLE_ENV = "AUTOTUNE_DISABLE"
NO_AUTOLOAD_ENV = "AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD"

#: The built-ins, in the order they are applied. Used to order them and as a
#: fallback when the package metadata (and so its entry points) is missing,
#: e.g. when running from a source tree that was never installed.
BUILTIN_PLUGINS = (
    "threads",
    "mixed_precision",
    "accumulation",
    "clipping",
    "channels_last",
    "compile",
    "optimizer",
    "dataloader",
    "parallel_folds",
    "daemon",
)


#: Every hook a plugin may implement (the functions in autotune.plugin.hookspecs).
HOOK_NAMES = frozenset(n for n in vars(hookspecs) if n.startswith(hookspecs.PROJECT_NAME + "_"))


class PluginWarning(UserWarning):
    """A plugin failed and was left out."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    #: "builtin", or "<distribution> <version>" for an entry point, or "object".
    origin: str
    #: "loaded", "blocked", "failed", or "not autoloaded".
    status: str
    detail: str = ""
    hooks: tuple[str, ...] = ()


def _env_list(name: str) -> list[str]:
    return [s.strip() for s in os.environ.get(name, "").split(",") if s.strip()]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _canonical(dist_name: str) -> str:
    """PEP 503 normalisation: metadata may spell it torch_autotune."""
    return re.sub(r"[-_.]+", "-", dist_name).lower()


#: The longest plugin failure message; the rest is cut (the CLI prints one line).
MAX_MESSAGE_CHARS = 500


def _one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message as one line: lines joined with "; ", runs of whitespace
    collapsed, cut to ``limit`` characters. pluggy's PluginValidationError
    and many exceptions span several lines; a warning or error the CLI prints
    must not."""
    lines = (" ".join(line.split()) for line in str(text).splitlines())
    folded = "; ".join(line for line in lines if line)
    return folded if len(folded) <= limit else folded[:limit - 3].rstrip() + "..."


def _check_json(value: Any, what: str) -> None:
    """Plans and hardware facts are saved as JSON; refuse what would not
    round-trip (a tuple comes back as a list, a dtype not at all)."""
    try:
        if json.loads(json.dumps(value)) != value:
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be plain JSON data (str, int, float, bool, None, "
                        f"list, dict with str keys), got {value!r}") from None


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
    """

    def __init__(self, *, disable: Iterable[str] = (), autoload: bool | None = None,
                 plugins: Iterable[Any] = (), strict: bool = False,
                 disabled_by: str = "disable=[...]") -> None:
        self.strict = strict
        if autoload is None:
            self.autoload = not _truthy(os.environ.get(NO_AUTOLOAD_ENV))
            self._no_autoload_reason = f"${NO_AUTOLOAD_ENV} is set"
        else:
            self.autoload = autoload
            self._no_autoload_reason = "autoload=False"
        self._disable_sources: dict[str, str] = {}
        for name in _env_list(DISABLE_ENV):
            self._disable_sources[name] = f"disabled by ${DISABLE_ENV}"
        for name in disable:
            self._disable_sources[name] = f"disabled by {disabled_by}"
        self._extra = list(plugins)
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._failed: dict[str, str] = {}
        self._loaded = False

    # -- loading -----------------------------------------------------------
    @staticmethod
    def _entry_points() -> tuple[dict[str, metadata.EntryPoint], dict[str, metadata.EntryPoint]]:
        builtin: dict[str, metadata.EntryPoint] = {}
        third: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            ours = dist is not None and _canonical(dist.name) == DISTRIBUTION
            target = builtin if ours else third
            target.setdefault(ep.name, ep)
        return builtin, third

    def known_names(self) -> list[str]:
        _, third = self._entry_points()
        extra = [self._object_name(p) for p in self._extra]
        return sorted({*BUILTIN_PLUGINS, *third, *extra})

    @staticmethod
    def _object_name(plugin: Any) -> str:
        if isinstance(plugin, tuple):
            return plugin[0]
        name = getattr(plugin, "NAME", None)
        if not name:
            raise PluginError(f"plugin object {plugin!r} has no NAME; pass (name, plugin)")
        return str(name)

    def _fail(self, name: str, origin: str, exc: BaseException, during: str) -> None:
        reason = _one_line(f"{type(exc).__name__}: {exc}")
        message = f"plugin {name!r} failed {during} and was left out: {reason}"
        if self.strict:
            raise PluginError(message) from exc
        # The warning is what users see (the CLI prints it as one line);
        # logging it as well would show it twice.
        warnings.warn(message, PluginWarning, stacklevel=3)
        log.debug(message)
        self._failed[name] = f"failed {during}: {reason}"
        self._infos[name] = PluginInfo(name, origin, "failed", _one_line(str(exc)))

    def _register(self, name: str, origin: str, load: Callable[[], Any]) -> None:
        if self._infos.get(name, PluginInfo(name, "", "")).status == "not autoloaded":
            # An installed plugin that was not loaded does not hold its name:
            # the same plugin passed as an object (a test, a notebook) may.
            del self._infos[name]
        if name in self._infos:
            # Two plugins with one name: keep the first (built-ins come first),
            # so a third-party package cannot silently replace a built-in.
            message = (f"plugin name {name!r} from {origin} is already taken by "
                       f"{self._infos[name].origin}; the second one was ignored")
            if self.strict:
                raise PluginError(message)
            warnings.warn(message, PluginWarning, stacklevel=3)
            return
        if self._pm.is_blocked(name):
            self._infos[name] = PluginInfo(name, origin, "blocked", self._disable_sources[name])
            return
        try:
            plugin = load()
            self._pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - any plugin bug is reported, not fatal
            self._fail(name, origin, exc, "to load")
            return
        hooks = tuple(sorted(h.name for h in self._pm.get_hookcallers(plugin) or ()))
        self._infos[name] = PluginInfo(name, origin, "loaded", hooks=hooks)
        self._warn_undecorated(name, plugin, hooks)

    def _warn_undecorated(self, name: str, plugin: Any, hooks: tuple[str, ...]) -> None:
        """pluggy only sees functions marked ``@autotune.hookimpl``; a hook
        that lacks the marker would be ignored without a word."""
        for attr in dir(plugin):
            if not attr.startswith(hookspecs.PROJECT_NAME + "_") or attr in hooks:
                continue
            if not callable(getattr(plugin, attr, None)):
                continue
            known = attr in HOOK_NAMES
            warnings.warn(
                f"plugin {name!r} has {attr}() without @autotune.hookimpl, so it is never "
                + ("called; add the decorator" if known else "called (and no hook has that "
                   "name: a typo?)"), PluginWarning, stacklevel=4)

    def load(self) -> "PluginManager":
        """Block, register built-ins, then entry points; validate. Once."""
        if self._loaded:
            return self
        builtin_eps, third_eps = self._entry_points()
        known = self.known_names()
        unknown = sorted(set(self._disable_sources) - set(known))
        if unknown:
            raise PluginError(f"unknown plugin name(s) to disable: {', '.join(unknown)}; "
                              f"known plugins: {', '.join(known)}")
        self._loaded = True
        for name in self._disable_sources:
            self._pm.set_blocked(name)

        for name in BUILTIN_PLUGINS:
            ep = builtin_eps.get(name)
            loader = ep.load if ep is not None else (
                lambda n=name: importlib.import_module(f"autotune.plugins.{n}"))
            self._register(name, "builtin", loader)
        for name, ep in sorted(third_eps.items()):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            if not self.autoload:
                if name not in self._infos:
                    self._infos[name] = PluginInfo(name, origin, "not autoloaded",
                                                   f"not autoloaded: {self._no_autoload_reason}")
                continue
            self._register(name, origin, ep.load)
        for plugin in self._extra:
            name = self._object_name(plugin)
            obj = plugin[1] if isinstance(plugin, tuple) else plugin
            self._register(name, "object", lambda obj=obj: obj)
        self._check_pending()
        return self

    def _check_pending(self) -> None:
        """Misspelled hook names: pluggy raises for the first; we name and
        drop each offending plugin in turn (strict mode re-raises)."""
        while True:
            try:
                self._pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self._pm.get_name(exc.plugin) or repr(exc.plugin)
                origin = self._infos.get(name, PluginInfo(name, "?", "")).origin
                self._pm.unregister(exc.plugin)
                self._fail(name, origin, exc, "validation")

    # -- introspection -----------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        self.load()
        return list(self._infos.values())

    def names(self) -> list[str]:
        """Names of the registered (loaded, not blocked) plugins, in order."""
        self.load()
        return [n for n, i in self._infos.items() if i.status == "loaded"]

    def not_loaded_reasons(self) -> dict[str, str]:
        """Why each known-but-absent plugin contributes nothing."""
        self.load()
        return {n: (i.detail or i.status) for n, i in self._infos.items() if i.status != "loaded"}

    def _impls(self, hook_name: str) -> list[Any]:
        self.load()
        caller = getattr(self._pm.hook, hook_name)
        order = {n: i for i, n in enumerate(self._infos)}
        impls = [i for i in caller.get_hookimpls()
                 if not (getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False))]
        # pluggy's markers decide first and last; registration order (the
        # built-ins' documented order, then third-party plugins) the rest.
        return sorted(impls, key=lambda i: (0 if i.tryfirst else 2 if i.trylast else 1,
                                            order.get(i.plugin_name, len(order))))

    def _call_each(self, hook_name: str, kwargs: Mapping[str, Any],
                   only: Iterable[str] | None = None,
                   latest_first: bool = False) -> Iterable[tuple[str, Any]]:
        """Call every implementation of a hook separately, by keyword, so the
        result is attributed to its plugin and a failure is contained.
        ``latest_first``: the latest-registered plugin first (``tryfirst`` /
        ``trylast`` still first / last), as pluggy orders a ``firstresult``
        hook, so a third-party plugin's answer comes before a built-in's."""
        wanted = set(only) if only is not None else None
        impls = self._impls(hook_name)
        if latest_first:
            impls = sorted(reversed(impls),
                           key=lambda i: 0 if i.tryfirst else 2 if i.trylast else 1)
        for impl in impls:
            name = impl.plugin_name
            if wanted is not None and name not in wanted:
                continue
            if name in self._failed:
                continue
            try:
                yield name, impl.function(**{a: kwargs[a] for a in impl.argnames})
            except ProfileError as exc:
                # The plugin rejected its profile section: bad input, not a
                # plugin bug, so it is an error naming the profile file.
                context = kwargs.get("context")
                profile = getattr(context, "profile", None)
                raise ProfileError(_one_line(str(exc)),
                                   file=getattr(profile, "path", None) or None,
                                   key=f"plugins.{name}") from exc
            except Exception as exc:  # noqa: BLE001
                self._fail(name, self._infos[name].origin, exc, f"in {hook_name}")

    # -- hooks -------------------------------------------------------------
    def detect(self, hardware: Hardware) -> Hardware:
        for name, facts in self._call_each("autotune_detect", {"hardware": hardware}):
            if not facts:
                continue
            try:
                if not isinstance(facts, Mapping):
                    raise TypeError(f"autotune_detect must return a mapping of facts, "
                                    f"got {type(facts).__name__}")
                _check_json(dict(facts), "autotune_detect facts")
            except TypeError as exc:
                self._fail(name, self._infos[name].origin, exc, "in autotune_detect")
                continue
            hardware = hardware.with_extra(name, facts)
        return hardware

    def configure(self, context: Context) -> Plan:
        """Ask every plugin for its settings; build the plan (no overrides)."""
        self.load()
        settings: dict[str, dict[str, Setting]] = {}
        disabled = dict(self.not_loaded_reasons())
        enabled = []
        for name in self.names():
            if not context.profile.is_enabled(name):
                disabled[name] = f"disabled by profile {context.profile.name}"
            else:
                enabled.append(name)
        for name, result in self._call_each("autotune_configure", {"context": context}, enabled):
            if not result:
                continue
            try:
                settings[name] = _as_settings(name, result)
            except TypeError as exc:
                self._fail(name, self._infos[name].origin, exc, "in autotune_configure")
        return self.drop_failed(Plan(settings=settings, disabled=disabled,
                                     profile=context.profile.name,
                                     hardware_fingerprint=context.hardware.fingerprint))

    def drop_failed(self, plan: Plan) -> Plan:
        """``plan`` without the plugins that have failed so far, each
        recorded under ``disabled`` with the reason."""
        failed = {n: why for n, why in self._failed.items()
                  if n in plan.settings or n not in plan.disabled}
        if not failed:
            return plan
        settings = {p: k for p, k in plan.settings.items() if p not in failed}
        return replace(plan, settings=settings, disabled={**plan.disabled, **failed})

    def knobs(self, context: Context, plan: Plan) -> dict[str, dict[str, Knob]]:
        """Each plugin's description of its settings (``autotune_knobs``); a
        malformed answer counts as that plugin failing."""
        out: dict[str, dict[str, Knob]] = {}
        for name, result in self._call_each("autotune_knobs", {"context": context},
                                            plan.plugins()):
            if not result:
                continue
            try:
                out[name] = _as_knobs(name, result, plan)
            except (TypeError, ValueError) as exc:
                self._fail(name, self._infos[name].origin, exc, "in autotune_knobs")
        return out

    def candidates(self, context: Context, plan: Plan) -> dict[str, list[dict[str, Any]]]:
        """Each plugin's alternatives worth a trial; a malformed answer (a
        key the plugin did not propose) counts as that plugin failing."""
        out: dict[str, list[dict[str, Any]]] = {}
        for name, result in self._call_each("autotune_candidates",
                                            {"context": context, "plan": plan}, plan.plugins()):
            if not result:
                continue
            try:
                out[name] = _as_candidates(name, result, plan)
            except TypeError as exc:
                self._fail(name, self._infos[name].origin, exc, "in autotune_candidates")
        return out

    # -- the search space (measured tuning) ---------------------------------
    def search_priors(self, context: Context, device_type: str,
                      plugins: Iterable[str]) -> dict[str, tuple[float, str]]:
        """``{plugin: (gain, reason)}`` from ``autotune_search_prior`` for
        ``plugins``; a plugin without an answer is absent (the tuner gives it
        its unknown prior). A malformed answer counts as that plugin failing."""
        out: dict[str, tuple[float, str]] = {}
        for name, result in self._call_each("autotune_search_prior",
                                            {"context": context, "device_type": device_type},
                                            plugins):
            if result is None:
                continue
            try:
                out[name] = _as_prior(result)
            except (TypeError, ValueError) as exc:
                self._fail(name, self._infos[name].origin, exc, "in autotune_search_prior")
        return out

    def prune_reason(self, context: Context, plugin: str, values: Mapping[str, Any],
                     device_type: str) -> str | None:
        """Why ``plugin``'s own ``autotune_prune_candidate`` says the
        candidate ``values`` is not worth a trial here, or ``None``."""
        kwargs = {"context": context, "values": dict(values), "device_type": device_type}
        for name, result in self._call_each("autotune_prune_candidate", kwargs, [plugin]):
            if result is None or result == "":
                continue
            if not isinstance(result, str):
                self._fail(name, self._infos[name].origin,
                           TypeError(f"autotune_prune_candidate must return a reason (str) or "
                                     f"None, got {type(result).__name__}"),
                           "in autotune_prune_candidate")
                continue
            return _one_line(result)
        return None

    def micro_batches(self, plan: Plan) -> int:
        """Micro-batches per optimizer step under ``plan``: the first answer
        of ``autotune_micro_batches`` among the plan's plugins, else 1."""
        for name, result in self._call_each("autotune_micro_batches", {"plan": plan},
                                            plan.plugins()):
            if result is None:
                continue
            if isinstance(result, bool) or not isinstance(result, int) or result < 1:
                self._fail(name, self._infos[name].origin,
                           TypeError(f"autotune_micro_batches must return an integer >= 1 or "
                                     f"None, got {result!r}"), "in autotune_micro_batches")
                continue
            return result
        return 1

    def batch_size_found(self, plan: Plan, context: Context, batch_size: int,
                         effective_batch: int,
                         largest_fitting: int | None = None) -> dict[str, dict[str, Setting]]:
        """``{plugin: {key: Setting}}``: what each plugin in ``plan`` writes
        into it to keep ``effective_batch`` with micro-batches of
        ``batch_size`` (``autotune_batch_size_found``). Keys the plugin did
        not propose count as that plugin failing."""
        kwargs = {"plan": plan, "context": context, "batch_size": batch_size,
                  "effective_batch": effective_batch,
                  "largest_fitting": batch_size if largest_fitting is None else largest_fitting}
        return self._own_settings("autotune_batch_size_found", kwargs, plan)

    def _own_settings(self, hook_name: str, kwargs: Mapping[str, Any], plan: Plan,
                      only: Iterable[str] | None = None) -> dict[str, dict[str, Setting]]:
        """``{plugin: {key: Setting}}`` from a hook whose answer changes the
        plugin's own settings (asking ``only`` these plugins, default every
        one in ``plan``); a key the plugin did not propose counts as that
        plugin failing."""
        out: dict[str, dict[str, Setting]] = {}
        asked = plan.plugins() if only is None else only
        for name, result in self._call_each(hook_name, kwargs, asked):
            if not result:
                continue
            try:
                settings = _as_settings(name, result)
                unknown = sorted(set(settings) - set(plan.values(name)))
                if unknown:
                    raise TypeError(f"{hook_name} set key(s) {unknown} that "
                                    f"{name} did not propose")
                out[name] = settings
            except TypeError as exc:
                self._fail(name, self._infos[name].origin, exc, f"in {hook_name}")
        return out

    # -- overrides ---------------------------------------------------------
    def with_overrides(self, context: Context, plan: Plan,
                       overrides: Mapping[str, Mapping[str, Any]]) -> Plan:
        """``plan.with_overrides(overrides)``, each checked against its
        plugin's knob (:func:`autotune.plan.knobs.check_overrides`), then
        :meth:`follow_overrides`."""
        from autotune.plan.knobs import check_overrides

        overridden = plan.with_overrides(overrides)
        check_overrides(overrides, self.knobs(context, plan))
        return self.follow_overrides(context, overridden, overrides)

    def follow_overrides(self, context: Context, plan: Plan,
                         overrides: Mapping[str, Mapping[str, Any]]) -> Plan:
        """Each overridden plugin's ``autotune_follow_overrides`` on ``plan``
        (which has the overrides in it): the settings that follow from an
        overridden one are recomputed from the overridden value (a key the
        user set stays as set). A malformed answer counts as that plugin
        failing."""
        for plugin, values in overrides.items():
            kwargs = {"context": context, "plan": plan, "overrides": dict(values)}
            answers = self._own_settings("autotune_follow_overrides", kwargs, plan, [plugin])
            for name, settings in answers.items():
                for key, setting in settings.items():
                    if key in values:
                        continue  # the user's word stands
                    plan = plan.with_values(name, {key: setting.value}, setting.source,
                                            setting.reason, force=True)
        return plan

    # -- resources ---------------------------------------------------------
    def fold_schedule(self, context: Context, plan: Plan, **kwargs: Any) -> "tuple[str, Any] | None":
        """``(plugin, FoldPlan)``: the first answer of ``autotune_fold_schedule``
        among the loaded plugins the plan does not list as disabled (latest
        loaded first), or ``None`` when none answers. ``kwargs`` are the
        hook's other arguments. An answer that is not a FoldPlan counts as
        that plugin failing, and the next one is asked."""
        from autotune.plan.resources import FoldPlan

        asked = [n for n in self.names() if n not in plan.disabled]
        call = {"context": context, "plan": plan, **kwargs}
        for name, result in self._typed_answers("autotune_fold_schedule", call, asked, FoldPlan):
            try:
                settings = _as_settings(name, result.settings)
            except TypeError as exc:
                self._fail(name, self._infos[name].origin, exc, "in autotune_fold_schedule")
                continue
            return name, replace(result, settings=settings)
        return None

    def resource_share(self, plan: Plan, context: Context,
                       share: Any) -> dict[str, dict[str, Setting]]:
        """``{plugin: {key: Setting}}``: how each plugin in ``plan`` changes
        its own settings under ``share`` (``autotune_resource_share``); the
        caller writes them into the plan (:func:`autotune.plan.resources.share_plan`).
        Keys the plugin did not propose count as that plugin failing."""
        return self._own_settings("autotune_resource_share",
                                  {"plan": plan, "context": context, "share": share}, plan)

    def machine_share(self, context: Context, plan: Plan) -> "tuple[str, Any] | None":
        """``(plugin, Share)``: the first answer of ``autotune_machine_share``
        among the plugins in ``plan`` (latest loaded first), or ``None``. An
        answer that is not a Share counts as that plugin failing."""
        from autotune.plan.resources import Share

        for answer in self._typed_answers("autotune_machine_share",
                                          {"context": context, "plan": plan}, plan.plugins(),
                                          Share):
            return answer
        return None

    def _typed_answers(self, hook_name: str, call: Mapping[str, Any], asked: Iterable[str],
                       kind: type) -> Iterator[tuple[str, Any]]:
        """``(plugin, answer)`` for each non-``None`` answer of a
        ``firstresult``-style hook (latest-loaded plugin first); an answer
        not of ``kind`` counts as that plugin failing and is skipped."""
        for name, result in self._call_each(hook_name, call, asked, latest_first=True):
            if result is None:
                continue
            if not isinstance(result, kind):
                self._fail(name, self._infos[name].origin,
                           TypeError(f"{hook_name} must return an {kind.__module__}."
                                     f"{kind.__name__} or None, got {type(result).__name__}"),
                           f"in {hook_name}")
                continue
            yield name, result

    def implementers(self, hook_name: str, plugins: Iterable[str] | None = None) -> list[str]:
        """The plugins (among ``plugins``, default all loaded) that implement
        ``hook_name`` and have not failed, in call order."""
        wanted = set(plugins) if plugins is not None else None
        return [i.plugin_name for i in self._impls(hook_name)
                if (wanted is None or i.plugin_name in wanted)
                and i.plugin_name not in self._failed]

    def wrap_distributed(self, model: Any, plan: Plan, context: Context,
                         report: Any = None) -> Any:
        """``autotune_wrap_distributed`` of each plugin in ``plan``, each on
        the previous result, starting from the DDP module."""
        return self._chain("autotune_wrap_distributed", "model", model, plan, context, report)

    def _chain(self, hook_name: str, key: str, value: Any, plan: Plan, context: Context,
               report: Any = None, skip: Iterable[str] = ()) -> Any:
        """Each plugin gets the previous plugin's result: ``_call_each``
        reads ``kwargs`` afresh for every call, so updating it passes it on."""
        if report is None:
            from autotune.plan.report import Report

            report = Report()
        kwargs = {key: value, "plan": plan, "context": context, "report": report}
        skipped = set(skip)
        only = [p for p in plan.plugins() if p not in skipped]
        for _name, result in self._call_each(hook_name, kwargs, only):
            if result is not None:
                kwargs[key] = result
        return kwargs[key]

    def apply_model(self, model: Any, plan: Plan, context: Context, report: Any = None,
                    skip: Iterable[str] = ()) -> Any:
        """``autotune_apply_model`` of each plugin in ``plan`` but those in
        ``skip`` (under DDP: the ones that wrap the DDP module instead)."""
        return self._chain("autotune_apply_model", "model", model, plan, context, report, skip)

    def apply_loader(self, loader: Any, plan: Plan, context: Context, report: Any = None) -> Any:
        return self._chain("autotune_apply_loader", "loader", loader, plan, context, report)

    def setup_engine(self, engine: Any, plan: Plan) -> Plan:
        """Each plugin in ``plan`` gets the engine's optimizer
        (``autotune_apply_optimizer``), then sets up its part of the step
        (``autotune_setup_engine``). A plugin that raises is left out of
        this engine only: the report names it and the returned plan lists
        it as disabled, so the engine never claims a setting it does not
        run. Later engines (the next trial) ask it again."""
        from autotune.plan.report import Kind

        left_out: dict[str, str] = {}
        for hook in ("autotune_apply_optimizer", "autotune_setup_engine"):
            for impl in self._impls(hook):
                name = impl.plugin_name
                if name not in plan.settings or name in self._failed or name in left_out:
                    continue
                kwargs = {"engine": engine, "plan": plan, "optimizer": engine.optimizer}
                try:
                    result = impl.function(**{a: kwargs[a] for a in impl.argnames})
                except Exception as exc:  # noqa: BLE001 - named, and left out of this engine
                    why = f"{hook} raised {type(exc).__name__}: {_one_line(str(exc), 200)}"
                    left_out[name] = f"left out of this engine: {why}"
                    engine.note(name, Kind.FALLBACK, f"{left_out[name]}; its part stays "
                                "PyTorch's default")
                    log.warning("plugin %r %s", name, left_out[name])
                    continue
                if hook == "autotune_apply_optimizer" and result is not None:
                    import torch

                    if not isinstance(result, torch.optim.Optimizer):
                        why = (f"autotune_apply_optimizer returned {type(result).__name__}, "
                               "not a torch.optim.Optimizer")
                        left_out[name] = f"left out of this engine: {why}"
                        engine.note(name, Kind.FALLBACK, left_out[name])
                        continue
                    engine.optimizer = result
        revised = engine.plan  # with whatever the plugins revised (fallbacks)
        if not left_out:
            return revised
        settings = {p: k for p, k in revised.settings.items() if p not in left_out}
        return replace(revised, settings=settings, disabled={**revised.disabled, **left_out})

    def step_hooks(self, hook_name: str, plugins: Iterable[str]) -> list[tuple[str, Any, list[str]]]:
        """``(plugin, function, argument names)`` for each implementation of
        a step hook among ``plugins``, in call order (``tryfirst`` first,
        then registration order, ``trylast`` last). The engine calls them."""
        wanted = set(plugins)
        return [(i.plugin_name, i.function, list(i.argnames)) for i in self._impls(hook_name)
                if i.plugin_name in wanted and i.plugin_name not in self._failed]


def _as_settings(plugin: str, result: Any) -> dict[str, Setting]:
    if not isinstance(result, Mapping):
        raise TypeError(f"autotune_configure must return a mapping of key -> Setting, "
                        f"got {type(result).__name__}")
    out = {}
    for key, value in result.items():
        setting = value if isinstance(value, Setting) else Setting(
            value, Source.DEFAULT, f"proposed by {plugin}")
        _check_json(setting.value, f"{plugin}.{key}")
        out[str(key)] = setting
    return out


def _as_knobs(plugin: str, result: Any, plan: Plan) -> dict[str, Knob]:
    if not isinstance(result, Mapping):
        raise TypeError(f"autotune_knobs must return a mapping of key -> Knob, "
                        f"got {type(result).__name__}")
    known = set(plan.values(plugin))
    out = {}
    for key, knob in result.items():
        if not isinstance(knob, Knob):
            raise TypeError(f"autotune_knobs: {plugin}.{key} must be an autotune.plan.knobs.Knob, "
                            f"got {type(knob).__name__}")
        if key not in known:
            continue  # a setting the plugin did not propose this time
        _check_json(knob.off, f"{plugin}.{key} off value")
        out[str(key)] = knob
    return out


def _as_prior(result: Any) -> tuple[float, str]:
    """``(gain, reason)`` from an ``autotune_search_prior`` answer."""
    if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, (tuple, list)) \
            or len(result) != 2:
        raise TypeError(f"autotune_search_prior must return (gain, reason) or None, "
                        f"got {result!r}")
    gain, reason = result
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) \
            or gain < 0:
        raise ValueError(f"autotune_search_prior: the gain must be a number >= 0, got {gain!r}")
    if not isinstance(reason, str):
        raise TypeError(f"autotune_search_prior: the reason must be a str, got {reason!r}")
    return float(gain), _one_line(reason)


def _as_candidates(plugin: str, result: Any, plan: Plan) -> list[dict[str, Any]]:
    if isinstance(result, Mapping) or not isinstance(result, (list, tuple)):
        raise TypeError(f"autotune_candidates must return a list of {{key: value}} "
                        f"mappings, got {type(result).__name__}")
    known = set(plan.values(plugin))
    out = []
    for candidate in result:
        if not isinstance(candidate, Mapping):
            raise TypeError(f"a candidate must be a mapping, got {candidate!r}")
        unknown = sorted(set(candidate) - known)
        if unknown:
            raise TypeError(f"candidate {dict(candidate)!r} has key(s) {unknown} that "
                            f"{plugin} did not propose; known: {sorted(known)}")
        _check_json(dict(candidate), f"{plugin} candidate")
        out.append(dict(candidate))
    return out
