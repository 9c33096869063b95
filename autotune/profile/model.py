"""The profile itself: a frozen record of one YAML file, ``extends`` merged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: Keys inside ``plugins.<name>`` that are not plugin options.
RESERVED_PLUGIN_KEYS = ("enabled",)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    match: Mapping[str, Any] = field(default_factory=dict)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    priority: int = 0
    extends: tuple[str, ...] = ()
    #: The file it came from ("" for a profile built in code).
    path: str = ""
    #: "builtin" or "user".
    origin: str = "builtin"

    @property
    def specificity(self) -> int:
        return len(self.match)

    def is_enabled(self, plugin: str) -> bool:
        return bool(self.plugins.get(plugin, {}).get("enabled", True))

    def options_for(self, plugin: str) -> dict[str, Any]:
        section = self.plugins.get(plugin, {})
        return {k: v for k, v in section.items() if k not in RESERVED_PLUGIN_KEYS}


def merge(base: Profile, child: Profile) -> Profile:
    """``child`` over ``base`` (``extends``): match rules and each plugin's
    options key by key, the child's description when it has one."""
    plugins = {k: dict(v) for k, v in base.plugins.items()}
    for name, section in child.plugins.items():
        plugins.setdefault(name, {}).update(section)
    return Profile(name=child.name, description=child.description or base.description,
                   match={**base.match, **child.match}, plugins=plugins,
                   priority=child.priority, extends=child.extends, path=child.path,
                   origin=child.origin)
