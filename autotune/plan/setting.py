"""The words a plan is written in: where a value came from (:class:`Source`),
what changing it changes (:class:`Effect`), and one value with both
(:class:`Setting`).

They live apart from the plan and the knobs so that both can use them
without importing each other: a :class:`~autotune.plan.plan.Plan` holds
settings, a :class:`~autotune.plan.knobs.Knob` says which effect a setting
has, and :func:`~autotune.plan.knobs.guard_plan` writes settings back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping


class Source(str, enum.Enum):
    DEFAULT = "default"
    PROFILE = "profile"
    MEASURED = "measured"
    #: A share of the machine given by ``autotune daemon`` to this job.
    DAEMON = "daemon"
    OVERRIDE = "override"

    @property
    def rank(self) -> int:
        return list(Source).index(self)


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


@dataclass(frozen=True)
class Setting:
    value: Any
    source: Source = Source.DEFAULT
    reason: str = ""
    #: What changing it changes; stamped from the plugin's knobs.
    effect: Effect = Effect.SPEED

    @property
    def measured(self) -> bool:
        return self.source is Source.MEASURED

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source.value, "reason": self.reason,
                "effect": self.effect.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Setting":
        return cls(value=data["value"], source=Source(data.get("source", "default")),
                   reason=data.get("reason", ""), effect=Effect(data.get("effect", "speed")))


def default(value: Any, reason: str) -> Setting:
    return Setting(value, Source.DEFAULT, reason)


def from_profile(value: Any, reason: str) -> Setting:
    return Setting(value, Source.PROFILE, reason)
