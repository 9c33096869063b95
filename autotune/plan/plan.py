"""The plan: merged settings ``{plugin: {key: Setting}}`` with provenance.

Precedence, lowest to highest (a later source replaces an earlier one):

1. ``default``  — the plugin's own default, from its ``Options`` dataclass
   or its rules applied to the hardware;
2. ``profile``  — a value (or range) from the matched hardware profile;
3. ``measured`` — the winner of a measured trial (the tuner);
4. ``override`` — what the user passed (``overrides=`` / ``--set``).

Each setting also says what changing it changes (its :class:`Effect`, from
the plugin's ``autotune_knobs``): only speed, the numerics, or what is
trained; see :mod:`autotune.plan.knobs`.

The plan is the only thing the engine reads. It is frozen; ``with_*``
methods return a new plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

import yaml

from autotune.errors import PlanError
# Re-exported: the plan's vocabulary is imported from here by most callers.
from autotune.plan.setting import Effect, Setting, Source, default, from_profile

__all__ = ["Effect", "Plan", "Setting", "Source", "default", "from_profile"]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _check_kind(plugin: str, key: str, proposed: Any, value: Any) -> None:
    """An override must be the same kind of value the plugin proposed
    (``null`` is always allowed: it means "not set"), so that
    ``--set dataloader.pin_memory=yes`` fails here, not deep in training."""
    if proposed is None or value is None or _kind(proposed) == _kind(value):
        return
    raise PlanError(f"override {plugin}.{key}={value!r} is {_kind(value)}, but {plugin} "
                    f"proposes {_kind(proposed)} there (now {proposed!r})")


@dataclass(frozen=True)
class Plan:
    #: ``{plugin: {key: Setting}}`` for every plugin that contributed.
    settings: Mapping[str, Mapping[str, Setting]] = field(default_factory=dict)
    #: Plugins that are loaded but contribute nothing, with the reason
    #: ("disabled by profile generic_cpu", "blocked by disable=[...]", an error).
    disabled: Mapping[str, str] = field(default_factory=dict)
    profile: str = ""
    hardware_fingerprint: str = ""

    # -- reading -----------------------------------------------------------
    def __contains__(self, plugin: object) -> bool:
        return plugin in self.settings

    def plugins(self) -> tuple[str, ...]:
        return tuple(self.settings)

    def is_enabled(self, plugin: str) -> bool:
        return plugin in self.settings

    def get(self, plugin: str, key: str, fallback: Any = None) -> Any:
        """The value of ``plugin.key``, or ``fallback`` when absent or disabled."""
        setting = self.settings.get(plugin, {}).get(key)
        return fallback if setting is None else setting.value

    def setting(self, plugin: str, key: str) -> Setting | None:
        return self.settings.get(plugin, {}).get(key)

    def values(self, plugin: str) -> dict[str, Any]:
        """``{key: value}`` for one plugin; empty when it is disabled."""
        return {k: s.value for k, s in self.settings.get(plugin, {}).items()}

    def rows(self) -> Iterator[tuple[str, str, Setting]]:
        for plugin, keys in self.settings.items():
            for key, setting in keys.items():
                yield plugin, key, setting

    # -- deriving ----------------------------------------------------------
    def with_values(self, plugin: str, values: Mapping[str, Any], source: Source,
                    reason: str, *, force: bool = False) -> "Plan":
        """A new plan with ``values`` set for ``plugin``, unless a setting of
        higher precedence is already there (a user override beats a
        measurement). With ``force`` the values are set whatever was there:
        what training actually ran with (a fallback), or what the machine
        leaves no choice about (a fold's share). Each setting keeps its
        effect. The one way to change a plan's settings: the tuner, the
        engine (``Engine.revise_plan``) and cross-validation all come here."""
        settings = {p: dict(k) for p, k in self.settings.items()}
        current = settings.setdefault(plugin, {})
        for key, value in values.items():
            old = current.get(key)
            if not force and old is not None and old.source.rank > source.rank:
                continue
            current[key] = Setting(value, source, reason,
                                   old.effect if old is not None else Effect.SPEED)
        # Values from the tuner or the user turn a plugin on; a forced record
        # of what ran (or of a share) does not.
        disabled = (dict(self.disabled) if force
                    else {p: r for p, r in self.disabled.items() if p != plugin})
        return replace(self, settings=settings, disabled=disabled)

    def without(self, reasons: Mapping[str, str]) -> "Plan":
        """A new plan without the plugins in ``reasons``, each listed under
        :attr:`disabled` with its reason (a plugin that failed, or that was
        left out of one engine)."""
        if not reasons:
            return self
        settings = {p: k for p, k in self.settings.items() if p not in reasons}
        return replace(self, settings=settings, disabled={**self.disabled, **reasons})

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> "Plan":
        """Apply user overrides. An unknown plugin or key is an error that
        lists what is known, so a typo never passes silently."""
        plan = self
        for plugin, values in overrides.items():
            if plugin not in self.settings:
                known = ", ".join(sorted(self.settings)) or "(none)"
                why = self.disabled.get(plugin)
                hint = f" ({plugin} is disabled: {why})" if why else ""
                raise PlanError(f"override for unknown or disabled plugin {plugin!r}{hint}; "
                                f"plugins in the plan: {known}")
            if not isinstance(values, Mapping):
                raise PlanError(f"override for {plugin!r} must be a mapping of key: value, "
                                f"got {type(values).__name__}")
            unknown = set(values) - set(self.settings[plugin])
            if unknown:
                raise PlanError(f"unknown key(s) {sorted(unknown)} for plugin {plugin!r}; "
                                f"known keys: {sorted(self.settings[plugin])}")
            for key, value in values.items():
                _check_kind(plugin, key, self.settings[plugin][key].value, value)
            plan = plan.with_values(plugin, values, Source.OVERRIDE, "set by the user")
        return plan

    # -- serialising -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "hardware_fingerprint": self.hardware_fingerprint,
            "plugins": {p: {k: s.to_dict() for k, s in keys.items()}
                        for p, keys in self.settings.items()},
            "disabled": dict(self.disabled),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        if not isinstance(data, Mapping):
            raise PlanError(f"malformed plan: expected a mapping, got {type(data).__name__}")
        try:
            settings = {str(p): {str(k): Setting.from_dict(s) for k, s in keys.items()}
                        for p, keys in (data.get("plugins") or {}).items()}
            disabled = {str(p): str(r) for p, r in (data.get("disabled") or {}).items()}
        except KeyError as exc:
            raise PlanError(f"malformed plan: a setting lacks {exc}") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise PlanError(f"malformed plan: {exc}") from exc
        return cls(settings=settings, disabled=disabled,
                   profile=str(data.get("profile", "")),
                   hardware_fingerprint=str(data.get("hardware_fingerprint", "")))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Plan":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PlanError(f"plan is not valid YAML: {exc}") from exc
        return cls.from_dict(data)
