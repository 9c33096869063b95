"""What online tuning may try (:class:`Space`, made once by
``apply(tune="online")``) and the chunk of steps it is running (:class:`_Open`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotune.plan.knobs import Knobs
from autotune.plan.plan import Plan
from autotune.tuner.candidates import Config, Group
from autotune.tuner.options import OnlineOptions


@dataclass(frozen=True)
class Space:
    """What online tuning may try, made once by ``apply(tune="online")``."""

    plan: Plan
    context: Any
    manager: Any
    knobs: Knobs
    groups: tuple[Group, ...]
    baseline: Config
    #: Where the run starts: PyTorch defaults, or a cached winner.
    start: Config
    device_type: str
    #: The start is a cached winner: only PyTorch defaults are tried against it.
    recheck: bool = False
    priors: dict[str, float] = field(default_factory=dict)

    def label(self, config: Config) -> str:
        return config.describe(self.baseline)

    def costly(self, config: Config) -> float:
        """The largest ``first_step_cost`` among the knobs ``config`` turns on."""
        return max((knob.first_step_cost for plugin, values in config.values.items()
                    for key, value in values.items()
                    if (knob := self.knobs.get(plugin, {}).get(key)) is not None
                    and value != knob.off), default=0.0)

    def fell_back(self, plan: Plan, config: Config, incumbent: Config) -> str | None:
        """Why the engine's ``plan`` no longer runs what ``config`` set over
        ``incumbent`` (a plugin fell back, e.g. compilation failed and it
        trains eagerly), or None."""
        for plugin, values in config.diff(incumbent).items():
            for key, value in values.items():
                if plan.get(plugin, key) != value:
                    setting = plan.setting(plugin, key)
                    return f"fell back to {plugin}.{key}={plan.get(plugin, key)!r}: " + (
                        setting.reason if setting is not None else "")
        return None

    def may_try(self, config: Config, incumbent: Config, options: OnlineOptions) -> bool:
        """Only knobs whose effect the options allow change (speed, unless
        numerics were allowed too)."""
        return all(knob is None or knob.effect.value in options.allowed_effects
                   for plugin, values in config.diff(incumbent).items() for key in values
                   for knob in [self.knobs.get(plugin, {}).get(key)])


@dataclass
class _Open:
    """The chunk being run."""

    config: Config
    role: str
    first_step: int
    warmup_left: int
    target: int
    steps: int = 0
    counted: int = 0
    started: float | None = None
    samples_at_start: int = 0
    warmup_started: float = 0.0
    #: When and at which sample count the last timed step ended.
    last_at: float = 0.0
    samples_at_last: int = 0
    #: Time and samples timed before an epoch boundary interrupted the chunk.
    banked_s: float = 0.0
    banked_samples: int = 0
