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

A knob also says which values a user may set (``choices``, ``check``): the
planner checks every override against its knob (:func:`check_override`), so
``--set compile.mode=bogus`` fails when the plan is made, in one line, not
deep in training. And it tells the tuner how to measure the setting
(``phase``, ``first_step_cost``, ``revisit_after_loader``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from autotune.errors import PlanError
from autotune.plan.plan import Plan
# Effect is re-exported: a knob's effect is imported from here by most callers.
from autotune.plan.setting import Effect, Setting, Source


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
    #: Measured again, as "<plugin> (after loader)", once the loader-phase
    #: settings the search adopted have changed: a setting that shares the
    #: machine with the loader (compute threads beside loader workers).
    revisit_after_loader: bool = False
    #: The only values a user may set (``None``: any value of the planned
    #: kind); checked when the plan is made, so a typo fails there.
    choices: tuple[Any, ...] | None = None
    #: A further check of a value the user sets: ``None`` when it is
    #: acceptable, else what it must be ("must be a whole number >= 1").
    #: :func:`whole_number`, :func:`positive_number` and :func:`true_or_false`
    #: make the usual ones.
    check: "Check | None" = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.effect, Effect):
            object.__setattr__(self, "effect", Effect(self.effect))
        if self.phase not in PHASES:
            raise ValueError(f"Knob.phase={self.phase!r} is not one of {PHASES}")
        if not isinstance(self.first_step_cost, (int, float)) or self.first_step_cost < 0:
            raise ValueError(f"Knob.first_step_cost must be a number >= 0, "
                             f"got {self.first_step_cost!r}")
        if self.choices is not None:
            if isinstance(self.choices, (str, bytes)) or not hasattr(self.choices, "__iter__"):
                raise ValueError(f"Knob.choices must be a tuple of values, got {self.choices!r}")
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.check is not None and not callable(self.check):
            raise ValueError(f"Knob.check must be callable, got {self.check!r}")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be this knob's setting ("must be one of a,
        b"), or ``None`` when it can."""
        if self.choices is not None and not any(_same(value, c) for c in self.choices):
            return "must be one of " + ", ".join(_show(c) for c in self.choices)
        if self.check is not None:
            return self.check(value)
        return None

    @property
    def needs_asking(self) -> bool:
        """Off in an unmeasured plan unless the user (or a named profile) set it."""
        return self.effect is not Effect.SPEED or self.measure_first

    @property
    def searchable(self) -> bool:
        return self.effect is not Effect.TRAINING and self.phase != PROCESS

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``check``, a function, is left out)."""
        out = {"off": self.off, "effect": self.effect.value,
               "measure_first": self.measure_first, "phase": self.phase,
               "first_step_cost": self.first_step_cost,
               "revisit_after_loader": self.revisit_after_loader}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


#: ``{plugin: {key: Knob}}``
Knobs = Mapping[str, Mapping[str, Knob]]

#: A value check (:attr:`Knob.check`): ``None`` when the value is acceptable,
#: else what it must be.
Check = Callable[[Any], "str | None"]


def _same(value: Any, choice: Any) -> bool:
    """Equal and of the same kind: ``True`` is not the choice ``1``."""
    return isinstance(value, bool) is isinstance(choice, bool) and value == choice


def _show(value: Any) -> str:
    """A value as the user writes it after ``--set`` (YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def whole_number(minimum: int, *, or_null: bool = False) -> Check:
    """A check: an int (not a bool) of at least ``minimum``; ``or_null``
    also accepts ``None``."""
    def check(value: Any) -> str | None:
        if value is None and or_null:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return None
        return f"must be a whole number >= {minimum}" + (" or null" if or_null else "")
    return check


def positive_number(*, or_null: bool = False) -> Check:
    """A check: a finite number > 0 (not a bool); ``or_null`` also accepts ``None``."""
    def check(value: Any) -> str | None:
        if value is None and or_null:
            return None
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value > 0):
            return None
        return "must be a number > 0" + (" or null" if or_null else "")
    return check


def true_or_false(*, or_null: bool = False) -> Check:
    """A check: ``True`` or ``False``; ``or_null`` also accepts ``None``."""
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or (value is None and or_null):
            return None
        return "must be true or false" + (" or null" if or_null else "")
    return check


def check_override(plugin: str, key: str, value: Any, knobs: Knobs) -> str | None:
    """What is wrong with the user setting ``plugin.key`` to ``value``,
    according to the plugin's knob ("compile.mode must be one of off,
    default, ..."), or ``None``."""
    knob = knobs.get(plugin, {}).get(key)
    try:
        problem = knob.problem(value) if knob is not None else None
    except Exception as exc:  # noqa: BLE001 - a plugin's check that fails refuses the value
        problem = f"could not be checked: {type(exc).__name__}: {exc}"
    return f"{plugin}.{key} {problem}" if problem else None


def _asked_how(plugin: str, key: str, profile: str | None) -> str:
    named = f", or profile={profile!r} by name" if profile else ""
    return f"--set {plugin}.{key}=... / overrides={{{plugin!r}: {{{key!r}: ...}}}}{named}"


def guard_plan(plan: Plan, knobs: Knobs, *, profile_chosen: bool) -> Plan:
    """Put every setting that needs asking back to ``off`` unless its source
    allows it: the user's override always; a profile only when the user
    chose it by name; a measurement for anything but ``TRAINING``. Every
    setting is stamped with its knob's effect, so the plan says which ones
    change training."""
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


def check_overrides(overrides: Mapping[str, Mapping[str, Any]], knobs: Knobs,
                    overrides_by: str = "overrides") -> None:
    """Raise :class:`~autotune.errors.PlanError`, one line, for the first
    override its plugin's knob refuses (``Knob.choices`` / ``Knob.check``).
    ``overrides_by`` names where overrides come from in the message:
    ``"overrides"`` (``overrides={'compile': {'mode': 'x'}}: ...``) or
    ``"--set"`` (``--set compile.mode='x': ...``)."""
    for plugin, values in overrides.items():
        for key, value in values.items():
            problem = check_override(plugin, key, value, knobs)
            if problem is None:
                continue
            given = (f"--set {plugin}.{key}={value!r}" if overrides_by == "--set"
                     else f"overrides={{{plugin!r}: {{{key!r}: {value!r}}}}}")
            raise PlanError(f"{given}: {problem}")
