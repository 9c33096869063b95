"""The plugin registry: which plugins there are, which are loaded, and in what
order their hooks are called (after tox's plugin/manager.py).

Plugins come from one place, the ``autotune`` entry-point group: the
built-ins are the entry points of the distribution ``torch-autotune``,
third-party plugins those of any other, so no roster of built-in names
exists in the code. Plugin objects passed directly (a test, a notebook)
come last.

Order of loading matters: every disable source is applied with
``set_blocked`` *before* anything is registered, so pluggy never imports a
blocked plugin. Built-ins register first (a third-party plugin cannot take
a built-in's name), each group in the order of its names; the order hooks
are called in is pluggy's markers first (``tryfirst`` / ``trylast``, which
each plugin states on its own implementations), registration order after.

A plugin that fails to load, fails validation or raises in a hook is named
in a :class:`PluginWarning` and left out (re-raised in strict mode).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

import pluggy

from autotune.errors import PluginError
from autotune.plugin import specs
from autotune.plugin.answers import one_line
from autotune.plugin.markers import PROJECT_NAME

log = logging.getLogger("autotune.plugin.registry")

ENTRY_POINT_GROUP = "autotune"
DISTRIBUTION = "torch-autotune"
DISABLE_ENV = "AUTOTUNE_DISABLE"
NO_AUTOLOAD_ENV = "AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD"

#: ``{name: entry point}`` of one group (built-in or third-party).
EntryPoints = dict[str, metadata.EntryPoint]


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


def entry_points() -> tuple[EntryPoints, EntryPoints]:
    """``(built-in, third-party)`` entry points of the ``autotune`` group, each
    by name; the built-ins are the ones ``torch-autotune`` declares."""
    builtin: EntryPoints = {}
    third: EntryPoints = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        ours = dist is not None and _canonical(dist.name) == DISTRIBUTION
        (builtin if ours else third).setdefault(ep.name, ep)
    return dict(sorted(builtin.items())), dict(sorted(third.items()))


def builtin_names() -> tuple[str, ...]:
    """The built-in plugins as installed, in registration order (by name)."""
    return tuple(entry_points()[0])


def _object_name(plugin: Any) -> str:
    if isinstance(plugin, tuple):
        return plugin[0]
    name = getattr(plugin, "NAME", None)
    if not name:
        raise PluginError(f"plugin object {plugin!r} has no NAME; pass (name, plugin)")
    return str(name)


def _tier(impl: Any) -> int:
    """pluggy's markers: ``tryfirst`` first, ``trylast`` last."""
    return 0 if impl.tryfirst else 2 if impl.trylast else 1


class Registry:
    """Loads plugins once, knows each one's state, orders each hook's
    implementations. See :class:`autotune.plugin.manager.PluginManager` for
    the parameters.

    :param third_party: ``False`` leaves third-party entry points out
        entirely (not loaded, not listed), as :func:`autotune.testing.plugin_manager`
        does so that what is installed cannot change a test.
    """

    def __init__(self, *, disable: Iterable[str] = (), autoload: bool | None = None,
                 plugins: Iterable[Any] = (), strict: bool = False,
                 disabled_by: str = "disable=[...]", third_party: bool = True) -> None:
        self.strict = strict
        self.third_party = third_party
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
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        for module in specs.MODULES:
            self._pm.add_hookspecs(module)
        self._infos: dict[str, PluginInfo] = {}
        self._failed: dict[str, str] = {}
        self._loaded = False

    def _entry_points(self) -> tuple[EntryPoints, EntryPoints]:
        builtin, third = entry_points()
        return builtin, (third if self.third_party else {})

    # -- loading ---------------------------------------------------------------------
    def known_names(self) -> list[str]:
        builtin, third = self._entry_points()
        extra = [_object_name(p) for p in self._extra]
        return sorted({*builtin, *third, *extra})

    def load(self) -> None:
        """Block, register built-ins, then entry points, then objects; validate. Once."""
        if self._loaded:
            return
        builtin_eps, third_eps = self._entry_points()
        known = self.known_names()
        unknown = sorted(set(self._disable_sources) - set(known))
        if unknown:
            raise PluginError(f"unknown plugin name(s) to disable: {', '.join(unknown)}; "
                              f"known plugins: {', '.join(known)}")
        self._loaded = True
        if not builtin_eps:
            log.warning("no built-in plugins: the %s entry points of %s are missing "
                        "(install the package, e.g. pip install -e .)",
                        ENTRY_POINT_GROUP, DISTRIBUTION)
        for name in self._disable_sources:
            self._pm.set_blocked(name)
        for name, ep in builtin_eps.items():
            self._register(name, "builtin", ep.load)
        for name, ep in third_eps.items():
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            if not self.autoload:
                if name not in self._infos:
                    self._infos[name] = PluginInfo(name, origin, "not autoloaded",
                                                   f"not autoloaded: {self._no_autoload_reason}")
                continue
            self._register(name, origin, ep.load)
        for plugin in self._extra:
            obj = plugin[1] if isinstance(plugin, tuple) else plugin
            self._register(_object_name(plugin), "object", lambda obj=obj: obj)
        self._check_pending()

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
            warnings.warn(message, PluginWarning, stacklevel=4)
            return
        if self._pm.is_blocked(name):
            self._infos[name] = PluginInfo(name, origin, "blocked", self._disable_sources[name])
            return
        try:
            plugin = load()
            self._pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - any plugin bug is reported, not fatal
            self.fail(name, exc, "to load", origin=origin)
            return
        hooks = tuple(sorted(h.name for h in self._pm.get_hookcallers(plugin) or ()))
        self._infos[name] = PluginInfo(name, origin, "loaded", hooks=hooks)
        self._warn_undecorated(name, plugin, hooks)

    def _warn_undecorated(self, name: str, plugin: Any, hooks: tuple[str, ...]) -> None:
        """pluggy only sees functions marked ``@hookimpl``; a hook that lacks
        the marker would be ignored without a word."""
        for attr in dir(plugin):
            if not attr.startswith(PROJECT_NAME + "_") or attr in hooks:
                continue
            if not callable(getattr(plugin, attr, None)):
                continue
            known = attr in specs.HOOK_NAMES
            warnings.warn(
                f"plugin {name!r} has {attr}() without @autotune.hookimpl, so it is never "
                + ("called; add the decorator" if known else "called (and no hook has that "
                   "name: a typo?)"), PluginWarning, stacklevel=5)

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
                self.fail(name, exc, "validation", origin=origin)

    def fail(self, name: str, exc: BaseException, during: str, *, origin: str | None = None) -> None:
        """Leave plugin ``name`` out from now on: a warning naming it and why
        (``during``: "to load", "in autotune_configure"...); strict mode raises."""
        reason = one_line(f"{type(exc).__name__}: {exc}")
        message = f"plugin {name!r} failed {during} and was left out: {reason}"
        if self.strict:
            raise PluginError(message) from exc
        # The warning is what users see (the CLI prints it as one line);
        # logging it as well would show it twice.
        warnings.warn(message, PluginWarning, stacklevel=4)
        log.debug(message)
        if origin is None:
            origin = self._infos[name].origin
        self._failed[name] = f"failed {during}: {reason}"
        self._infos[name] = PluginInfo(name, origin, "failed", one_line(str(exc)))

    # -- what is there ---------------------------------------------------------------
    def is_blocked(self, name: str) -> bool:
        return self._pm.is_blocked(name)

    @property
    def failed(self) -> Mapping[str, str]:
        """``{plugin: why}`` for each plugin that has failed so far."""
        return dict(self._failed)

    def infos(self) -> list[PluginInfo]:
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

    def impls(self, hook: str, plugins: Iterable[str] | None = None, *,
              latest_first: bool = False) -> list[Any]:
        """The implementations of ``hook`` by plugins that have not failed
        (among ``plugins``, default all), in call order: pluggy's markers
        decide first and last, registration order the rest. ``latest_first``:
        the latest-registered first within each marker, as pluggy orders a
        ``firstresult`` hook, so a third-party plugin's answer comes before a
        built-in's."""
        self.load()
        caller = getattr(self._pm.hook, hook)
        order = {n: i for i, n in enumerate(self._infos)}
        wanted = set(plugins) if plugins is not None else None
        impls = [i for i in caller.get_hookimpls()
                 if not (getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False))
                 and (wanted is None or i.plugin_name in wanted)
                 and i.plugin_name not in self._failed]
        sign = -1 if latest_first else 1
        return sorted(impls, key=lambda i: (_tier(i), sign * order.get(i.plugin_name, len(order))))
