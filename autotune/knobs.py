"""What each setting is: its PyTorch default and what changing it changes.

A plugin describes its settings through the ``autotune_knobs`` hook, one
:class:`Knob` per key. autotune reads these descriptions, never the
plugins' names, to decide three things:

* **what is the user's** -- a setting whose :class:`Effect` is
  ``TRAINING`` (gradient clipping, accumulation) changes what is trained,
  so it stays at its ``off`` value unless the user sets it (``overrides=``,
  ``--set``) or chooses by name a profile that sets it (``profile=``); the
  tuner never searches it;
* **what must be measured first** -- a ``NUMERICS`` setting (precision) and
  a speed setting marked ``measure_first`` (one that measured slower on
  some models: channels_last on depthwise convolutions, torch.compile on a
  small transformer) stays ``off`` in a plan nobody measured, unless asked
  for the same way;
* **what the baseline is** -- ``off`` is what PyTorch does when autotune
  does nothing; the tuner's baseline runs every knob at ``off``.

:func:`guard_plan` applies the first two rules to a plan; the planner calls
it before the user's overrides, so an override always wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from autotune.plan import Plan


class Effect(str, enum.Enum):
    #: Only how fast training runs: rules may set it, the tuner searches it.
    SPEED = "speed"
    #: The numbers computed change slightly (autocast precision, TF32): a
    #: speed knob only once measured faster here, or when the user asks.
    NUMERICS = "numerics"
    #: What is trained changes (clipping, accumulation): only on request,
    #: never searched.
    TRAINING = "training"

    @property
    def label(self) -> str:
        """How the plan table marks it ("" for plain speed settings)."""
        return {"speed": "", "numerics": "changes numerics",
                "training": "changes training"}[self.value]


#: The phases a tuner knows: measured on the training step itself, end to end
#: with the loader, or not measured per trial (a whole-process setting such as
#: how many cross-validation folds run at once).
STEP, LOADER, PROCESS = "step", "loader", "process"
PHASES = (STEP, LOADER, PROCESS)


@dataclass(frozen=True)
class Knob:
    """One setting as its plugin describes it."""

    #: PyTorch's behaviour when autotune does nothing (plain JSON data).
    off: Any
    effect: Effect = Effect.SPEED
    #: A speed setting that measured slower than ``off`` on some workloads:
    #: the rule-based (unmeasured) plan keeps ``off`` unless asked for.
    measure_first: bool = False
    phase: str = STEP
    #: A value other than ``off`` makes the first training step this many
    #: times as long as an eager first step, plus compiler start-up
    #: (torch.compile): the tuner budgets for it before such a trial, and
    #: keeps compiled code between trials.
    first_step_cost: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.effect, Effect):
            object.__setattr__(self, "effect", Effect(self.effect))
        if self.phase not in PHASES:
            raise ValueError(f"Knob.phase={self.phase!r} is not one of {PHASES}")
        if not isinstance(self.first_step_cost, (int, float)) or self.first_step_cost < 0:
            raise ValueError(f"Knob.first_step_cost must be a number >= 0, "
                             f"got {self.first_step_cost!r}")

    @property
    def needs_asking(self) -> bool:
        """Off in an unmeasured plan unless the user (or a named profile) set it."""
        return self.effect is not Effect.SPEED or self.measure_first

    @property
    def searchable(self) -> bool:
        return self.effect is not Effect.TRAINING and self.phase != PROCESS

    def to_dict(self) -> dict[str, Any]:
        return {"off": self.off, "effect": self.effect.value,
                "measure_first": self.measure_first, "phase": self.phase,
                "first_step_cost": self.first_step_cost}


#: ``{plugin: {key: Knob}}``
Knobs = Mapping[str, Mapping[str, Knob]]


def _asked_how(plugin: str, key: str, profile: str | None) -> str:
    named = f", or profile={profile!r} by name" if profile else ""
    return f"--set {plugin}.{key}=... / overrides={{{plugin!r}: {{{key!r}: ...}}}}{named}"


def guard_plan(plan: "Plan", knobs: Knobs, *, profile_chosen: bool) -> "Plan":
    """Put every setting that needs asking back to ``off`` unless its source
    allows it: the user's override always; a profile only when the user
    chose it by name; a measurement for anything but ``TRAINING``. Every
    setting is stamped with its knob's effect, so the plan says which ones
    change training."""
    from autotune.plan import Setting, Source

    settings = {p: dict(keys) for p, keys in plan.settings.items()}
    for plugin, keys in settings.items():
        for key, setting in keys.items():
            knob = knobs.get(plugin, {}).get(key)
            if knob is None:
                continue
            setting = replace(setting, effect=knob.effect)
            allowed = (setting.source is Source.OVERRIDE
                       or (setting.source is Source.PROFILE and profile_chosen)
                       or (setting.source is Source.MEASURED
                           and knob.effect is not Effect.TRAINING))
            if knob.needs_asking and not allowed and setting.value != knob.off:
                from_profile = setting.source is Source.PROFILE
                origin = (f"profile {plan.profile} (matched, not chosen)" if from_profile
                          else "the plugin's rule")
                how = _asked_how(plugin, key, plan.profile if from_profile else None)
                if knob.effect is Effect.TRAINING:
                    why = (f"off: {origin} proposes {setting.value!r}, which changes what is "
                           f"trained; on only when you ask ({how})")
                else:
                    why = (f"not measured: {origin} proposes {setting.value!r}, applied once "
                           f"measured faster here or when you ask ({how})")
                setting = Setting(knob.off, Source.DEFAULT, why, knob.effect)
            keys[key] = setting
    return replace(plan, settings=settings)
