"""The search space: configurations, the baseline, and hardware priors.

A :class:`Config` is what one trial runs: ``{plugin: {key: value}}`` for
the plugins the tuner searches, laid over the plan (user overrides always
stay as the user set them). Three kinds of configuration matter:

* the **baseline** -- PyTorch defaults: every knob at the ``off`` value its
  plugin declares through ``autotune_knobs`` (for example no autocast, the
  user's DataLoader exactly as built, the thread count torch has now). A
  plugin that declares no knobs keeps its planned values. Settings that
  change what is trained (``Effect.TRAINING``, for example gradient
  clipping) are never searched, and whole-process settings (phase
  ``process``, for example folds at once) are not measured per trial;
* the **planned** configuration -- what the rules and the profile chose;
* the alternatives plugins offer through ``autotune_candidates``.

Priors order the plugin groups (:func:`order_groups`) by the gain they are
likely to bring on this hardware and workload, so a short budget is spent
where it pays; each plugin declares its own (``autotune_search_prior``), and
prunes the candidates of its own the hardware cannot run well
(``autotune_prune_candidate``: for example bf16 on a CPU without bf16
instructions, CUDA graphs without CUDA). Nothing here knows a plugin by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from autotune.plan.knobs import LOADER, STEP, Knobs
from autotune.plan.plan import Plan, Source

#: The prior for a third-party plugin that offers candidates.
UNKNOWN_PRIOR = 0.1


@dataclass(frozen=True)
class Config:
    """``{plugin: {key: value}}``; hashable through :meth:`key`."""

    values: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps(self.values, sort_keys=True, default=str)

    def merged(self, plugin: str, values: Mapping[str, Any]) -> "Config":
        out = {p: dict(v) for p, v in self.values.items()}
        out.setdefault(plugin, {}).update(values)
        return Config(out)

    def to_plan(self, base: Plan, reason: str) -> Plan:
        """``base`` with these values as measured (overrides still win)."""
        plan = base
        for plugin, values in self.values.items():
            if plugin in base.settings and values:
                plan = plan.with_values(plugin, values, Source.MEASURED, reason)
        return plan

    def diff(self, other: "Config") -> dict[str, dict[str, Any]]:
        """What this configuration sets differently from ``other``."""
        out: dict[str, dict[str, Any]] = {}
        for plugin, values in self.values.items():
            theirs = other.values.get(plugin, {})
            for key, value in values.items():
                if key not in theirs or theirs[key] != value:
                    out.setdefault(plugin, {})[key] = value
        return out

    def describe(self, baseline: "Config") -> str:
        """A short label: the settings that differ from the baseline."""
        diff = self.diff(baseline)
        if not diff:
            return "PyTorch defaults"
        return ", ".join(f"{p}.{k}={_short(v)}" for p, kv in diff.items() for k, v in kv.items())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p: dict(v) for p, v in self.values.items()}


def _short(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


@dataclass(frozen=True)
class Group:
    """One plugin's settings, searched together."""

    plugin: str
    phase: str
    prior: float
    why: str
    #: Searched again once the loader-phase settings changed
    #: (``Knob.revisit_after_loader``).
    revisit_after_loader: bool = False


def searched_keys(plan: Plan, plugin: str, knobs: Knobs | None = None) -> set[str]:
    """Keys the tuner may change: all but the user's overrides, and none
    whose knob changes what is trained or belongs to the whole process."""
    plugin_knobs = (knobs or {}).get(plugin, {})
    return {k for k, s in plan.settings.get(plugin, {}).items()
            if s.source is not Source.OVERRIDE
            and (k not in plugin_knobs or plugin_knobs[k].searchable)}


def restrict(plan: Plan, plugin: str, values: Mapping[str, Any],
             knobs: Knobs | None = None) -> dict[str, Any]:
    keys = searched_keys(plan, plugin, knobs)
    return {k: v for k, v in values.items() if k in keys}


def phase_of(plugin: str, knobs: Knobs) -> str | None:
    """The phase a plugin is searched in (``None``: not searched): loader
    when any of its searchable knobs is, else step."""
    plugin_knobs = knobs.get(plugin)
    if not plugin_knobs:
        return STEP  # no description: a speed plugin of the step
    searchable = [k for k in plugin_knobs.values() if k.searchable]
    if not searchable:
        return None
    return LOADER if any(k.phase == LOADER for k in searchable) else STEP


def searched_plugins(knobs: Knobs, groups: Iterable["Group"]) -> list[str]:
    """The plugins a baseline covers: every one that describes its knobs,
    and every searched group's (third-party plugins without knobs)."""
    return list(dict.fromkeys([*knobs, *(g.plugin for g in groups)]))


def baseline_config(plan: Plan, knobs: Knobs, searched: Iterable[str] = ()) -> Config:
    """PyTorch defaults for the ``searched`` plugins: each knob's ``off``
    value; the planned values of keys without a knob (third-party plugins
    that describe nothing)."""
    values: dict[str, dict[str, Any]] = {}
    for plugin in searched:
        plugin_knobs = knobs.get(plugin, {})
        chosen = {key: (plugin_knobs[key].off if key in plugin_knobs else plan.get(plugin, key))
                  for key in searched_keys(plan, plugin, knobs)}
        if chosen:
            values[plugin] = chosen
    return Config(values)


def planned_config(plan: Plan, plugins: Iterable[str], baseline: Config,
                   knobs: Knobs | None = None) -> Config:
    """The plan's own values for the searched plugins' keys."""
    values: dict[str, dict[str, Any]] = {}
    for plugin in plugins:
        keys = set(baseline.values.get(plugin, {})) or searched_keys(plan, plugin, knobs)
        chosen = {k: plan.get(plugin, k) for k in keys if k in plan.settings.get(plugin, {})}
        chosen = restrict(plan, plugin, chosen, knobs)
        if chosen:
            values[plugin] = chosen
    return Config(values)


def order_groups(plugins: Iterable[str], priors: Mapping[str, tuple[float, str]],
                 knobs: Knobs | None = None) -> list[Group]:
    """Step groups by prior (highest first), then the loader groups; plugins
    whose knobs are all semantic or whole-process are not searched, nor those
    whose prior is 0. ``priors``: ``{plugin: (gain, reason)}`` as the plugins
    declare them (``autotune_search_prior``); a plugin without one gets
    :data:`UNKNOWN_PRIOR`."""
    groups = []
    for plugin in plugins:
        phase = phase_of(plugin, knobs or {})
        if phase is None:
            continue
        gain, why = priors.get(plugin, (UNKNOWN_PRIOR, "third-party plugin"))
        if gain > 0:
            revisit = any(k.revisit_after_loader and k.searchable
                          for k in (knobs or {}).get(plugin, {}).values())
            groups.append(Group(plugin, phase, gain, why, revisit))
    return sorted(groups, key=lambda g: (g.phase == LOADER, -g.prior))


def offered(manager: Any, context: Any, base: Plan, knobs: Knobs, device_type: str,
            plugin: str, incumbent: Config, *, pruned: list[str],
            skip: Callable[[Config], bool] = lambda config: False) -> list[Config]:
    """What ``plugin`` offers to try on top of ``incumbent`` (its
    ``autotune_candidates`` given the incumbent's plan), each as a whole
    configuration: restricted to the keys the tuner may change, pruned where
    the plugin says the hardware cannot run it well (the reason is appended
    to ``pruned``), without the incumbent itself, repeats, or what ``skip``
    rules out. The up-front search and online tuning ask the same way."""
    plan = incumbent.to_plan(base, "incumbent")
    current = incumbent.values.get(plugin, {})
    out: list[Config] = []
    seen: set[str] = set()
    for alternative in manager.candidates(context, plan).get(plugin, []):
        values = restrict(base, plugin, alternative, knobs)
        if not values:
            continue
        why = manager.prune_reason(context, plugin, {**current, **values}, device_type)
        if why:
            pruned.append(f"{plugin} {values}: {why}")
            continue
        config = incumbent.merged(plugin, values)
        if config.key() == incumbent.key() or config.key() in seen or skip(config):
            continue
        seen.add(config.key())
        out.append(config)
    return out
