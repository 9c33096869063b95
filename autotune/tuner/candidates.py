"""The search space: configurations, the baseline, and hardware priors.

A :class:`Config` is what one trial runs: ``{plugin: {key: value}}`` for
the plugins the tuner searches, laid over the plan (user overrides always
stay as the user set them). Three kinds of configuration matter:

* the **baseline** -- PyTorch defaults: every knob at the ``off`` value its
  plugin declares through ``autotune_knobs`` (no autocast, no compile,
  contiguous memory format, the user's DataLoader exactly as built, the
  thread count torch has now). A plugin that declares no knobs keeps its
  planned values. Settings that change what is trained (``Effect.TRAINING``:
  accumulation, clipping) are never searched, and whole-process settings
  (phase ``process``: folds at once) are not measured per trial;
* the **planned** configuration -- what the rules and the profile chose;
* the alternatives plugins offer through ``autotune_candidates``.

Priors (:func:`prior`) order the plugin groups by the gain they are likely
to bring on this hardware and workload, so a short budget is spent where it
pays; :func:`prune_reason` drops candidates the hardware cannot run well
(bf16 on a CPU without bf16 instructions, fp16 on a CPU, CUDA graphs
without CUDA, pinned memory without a GPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from autotune.context import Workload
from autotune.hardware import Hardware
from autotune.knobs import LOADER, STEP, Knob, Knobs
from autotune.plan import Plan, Source

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


def prior(plugin: str, hardware: Hardware, workload: Workload, device_type: str) -> tuple[float, str]:
    """Expected relative gain of searching ``plugin`` here (0: not worth a
    trial), with the reason. Used to order groups, never as a result."""
    cuda = device_type == "cuda"
    conv = workload.has_conv2d
    if plugin == "mixed_precision":
        if cuda:
            return 0.6, "tensor cores run bf16/fp16 matmuls and convolutions much faster"
        if hardware.cpu.has_bf16:
            return 0.6, "the CPU has native bf16 (AVX512-BF16/AMX)"
        return 0.0, "no native bf16 on this CPU and fp16 autocast needs CUDA"
    if plugin == "channels_last":
        if not conv:
            return 0.0, "no Conv2d in the model"
        return (0.3, "NHWC convolutions (cuDNN/oneDNN)")
    if plugin == "compile":
        return (0.4, "kernel fusion and CUDA graphs") if cuda else (
            0.2, "inductor fuses elementwise ops; pays only on some models on CPU")
    if plugin == "dataloader":
        return (0.5, "an input-bound GPU waits for the loader") if cuda else (
            0.1, "loader workers compete with compute threads on a CPU")
    if plugin == "threads":
        return (0.02, "intra-op threads rarely matter when a GPU computes") if cuda else (
            0.05, "compute threads vs loader workers on the same cores")
    return UNKNOWN_PRIOR, "third-party plugin"


def order_groups(plugins: Iterable[str], hardware: Hardware, workload: Workload,
                 device_type: str, knobs: Knobs | None = None) -> list[Group]:
    """Step groups by prior (highest first), then the loader groups; plugins
    whose knobs are all semantic or whole-process are not searched."""
    groups = []
    for plugin in plugins:
        phase = phase_of(plugin, knobs or {})
        if phase is None:
            continue
        gain, why = prior(plugin, hardware, workload, device_type)
        if gain > 0:
            groups.append(Group(plugin, phase, gain, why))
    return sorted(groups, key=lambda g: (g.phase == LOADER, -g.prior))


def prune_reason(plugin: str, values: Mapping[str, Any], hardware: Hardware,
                 device_type: str) -> str | None:
    """Why this candidate is not worth a trial here, or None."""
    cuda = device_type == "cuda"
    if plugin == "mixed_precision":
        dtype = values.get("dtype")
        if dtype == "fp16" and not cuda:
            return "fp16 autocast needs CUDA (emulated and slow on a CPU)"
        if dtype == "bf16" and not cuda and not hardware.cpu.has_bf16:
            return "this CPU has no bf16 instructions (AVX512-BF16/AMX)"
        if dtype == "bf16" and cuda and hardware.gpus and not hardware.gpus[0].bf16:
            return f"{hardware.gpus[0].name} has no bf16 tensor cores"
    if plugin == "compile" and values.get("mode") == "reduce-overhead" and not cuda:
        return "reduce-overhead uses CUDA graphs, which need CUDA"
    if plugin == "dataloader" and values.get("pin_memory") and not cuda:
        return "pinned memory only speeds up copies to a GPU"
    if plugin == "dataloader" and int(values.get("num_workers") or 0) > hardware.cpu.worker_budget:
        return f"more workers than the {hardware.cpu.worker_budget} usable cores"
    return None
