"""A typed facade over pluggy's PluginManager (after tox's plugin/manager.py).

One place loads built-ins, applies blocks, loads third-party entry points
and validates hook names; one method per hook keeps call sites typed.

Order of loading matters: every disable source is applied with
``set_blocked`` *before* anything is registered, so pluggy never imports a
blocked third-party plugin.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

import pluggy

from autotune import hookspecs
from autotune.context import Context
from autotune.errors import PluginError
from autotune.hardware import Hardware
from autotune.plan import Plan, Setting, Source

log = logging.getLogger("autotune.manager")

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
    "dataloader",
    "parallel_folds",
)


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


class PluginManager:
    """Loads and calls autotune plugins.

    :param disable: plugin names to block (``disable=[...]``, ``--disable``).
        ``$AUTOTUNE_DISABLE`` (comma-separated) is added to these.
    :param autoload: load third-party entry points; default: unless
        ``$AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param plugins: extra plugin objects to register directly, as
        ``(name, object)`` pairs or objects with a ``NAME`` attribute.
    :param strict: re-raise a plugin's exception instead of leaving it out.
    """

    def __init__(self, *, disable: Iterable[str] = (), autoload: bool | None = None,
                 plugins: Iterable[Any] = (), strict: bool = False) -> None:
        self.strict = strict
        self.autoload = (not _truthy(os.environ.get(NO_AUTOLOAD_ENV))
                         if autoload is None else autoload)
        self._disable_sources: dict[str, str] = {}
        for name in _env_list(DISABLE_ENV):
            self._disable_sources[name] = f"disabled by ${DISABLE_ENV}"
        for name in disable:
            self._disable_sources[name] = "disabled by the caller (disable=...)"
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
            target = builtin if dist is not None and dist.name == DISTRIBUTION else third
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
        message = f"plugin {name!r} failed {during} and was left out: {type(exc).__name__}: {exc}"
        if self.strict:
            raise PluginError(message) from exc
        warnings.warn(message, PluginWarning, stacklevel=3)
        log.warning(message)
        self._failed[name] = f"failed {during}: {type(exc).__name__}: {exc}"
        self._infos[name] = PluginInfo(name, origin, "failed", str(exc))

    def _register(self, name: str, origin: str, load: Callable[[], Any]) -> None:
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

    def load(self) -> "PluginManager":
        """Block, register built-ins, then entry points; validate. Once."""
        if self._loaded:
            return self
        self._loaded = True
        builtin_eps, third_eps = self._entry_points()
        known = self.known_names()
        unknown = sorted(set(self._disable_sources) - set(known))
        if unknown:
            raise PluginError(f"unknown plugin name(s) to disable: {', '.join(unknown)}; "
                              f"known plugins: {', '.join(known)}")
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
                self._infos[name] = PluginInfo(name, origin, "not autoloaded",
                                               f"${NO_AUTOLOAD_ENV} is set")
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
        return sorted(impls, key=lambda i: order.get(i.plugin_name, len(order)))

    def _call_each(self, hook_name: str, kwargs: Mapping[str, Any],
                   only: Iterable[str] | None = None) -> Iterable[tuple[str, Any]]:
        """Call every implementation of a hook separately, by keyword, so the
        result is attributed to its plugin and a failure is contained."""
        wanted = set(only) if only is not None else None
        for impl in self._impls(hook_name):
            name = impl.plugin_name
            if wanted is not None and name not in wanted:
                continue
            if name in self._failed:
                continue
            try:
                yield name, impl.function(**{a: kwargs[a] for a in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                self._fail(name, self._infos[name].origin, exc, f"in {hook_name}")

    # -- hooks -------------------------------------------------------------
    def detect(self, hardware: Hardware) -> Hardware:
        for name, facts in self._call_each("autotune_detect", {"hardware": hardware}):
            if facts:
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
        for name, why in self._failed.items():
            settings.pop(name, None)
            disabled[name] = why
        return Plan(settings=settings, disabled=disabled, profile=context.profile.name,
                    hardware_fingerprint=context.hardware.fingerprint)

    def candidates(self, context: Context, plan: Plan) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for name, result in self._call_each("autotune_candidates",
                                            {"context": context, "plan": plan}, plan.plugins()):
            if result:
                out[name] = [dict(c) for c in result]
        return out

    def apply_model(self, model: Any, plan: Plan, context: Context) -> Any:
        for _name, result in self._call_each("autotune_apply_model",
                                             {"model": model, "plan": plan, "context": context},
                                             plan.plugins()):
            if result is not None:
                model = result
        return model

    def apply_loader(self, loader: Any, plan: Plan, context: Context) -> Any:
        for _name, result in self._call_each("autotune_apply_loader",
                                             {"loader": loader, "plan": plan, "context": context},
                                             plan.plugins()):
            if result is not None:
                loader = result
        return loader

    def setup_engine(self, engine: Any, plan: Plan) -> None:
        for _ in self._call_each("autotune_setup_engine", {"engine": engine, "plan": plan},
                                 plan.plugins()):
            pass


def _as_settings(plugin: str, result: Any) -> dict[str, Setting]:
    if not isinstance(result, Mapping):
        raise TypeError(f"autotune_configure must return a mapping of key -> Setting, "
                        f"got {type(result).__name__}")
    out = {}
    for key, value in result.items():
        out[str(key)] = value if isinstance(value, Setting) else Setting(
            value, Source.DEFAULT, f"proposed by {plugin}")
    return out
