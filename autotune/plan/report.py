"""What applying a plan actually did: one event per decision, by plugin.

The plan says what was *asked for*; the report says what *happened* when
it was applied: "num_workers 0 -> 2", "inter-op threads could not be set
(parallel work had started)", "torch.compile failed at the first step;
trained eagerly". :class:`autotune.api.Tuned` and every engine built from
it share one report, so a fallback that only shows up during training
(a compile failure) is visible where the plan was applied.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

log = logging.getLogger("autotune.plan.report")


class Kind(str, enum.Enum):
    #: The setting took effect as planned.
    APPLIED = "applied"
    #: The plugin chose to leave this part as PyTorch has it (nothing to do).
    SKIPPED = "skipped"
    #: The plan could not be honoured as asked; something else was done.
    FALLBACK = "fallback"
    #: It took effect, but with a caveat the user should know about.
    WARNING = "warning"


@dataclass(frozen=True)
class Event:
    plugin: str
    kind: Kind
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"plugin": self.plugin, "kind": self.kind.value, "message": self.message}

    def __str__(self) -> str:
        return f"{self.plugin}: {self.kind.value}: {self.message}"


@dataclass
class Report:
    """An append-only log of :class:`Event` s (shared, so not frozen)."""

    events: list[Event] = field(default_factory=list)

    def add(self, plugin: str, kind: Kind | str, message: str) -> Event:
        """Record one event; fallbacks and warnings are also logged at WARNING."""
        event = Event(plugin, Kind(kind), message)
        self.events.append(event)
        if event.kind in (Kind.FALLBACK, Kind.WARNING):
            log.warning("%s", event)
        else:
            log.debug("%s", event)
        return event

    def for_plugin(self, plugin: str) -> list[Event]:
        return [e for e in self.events if e.plugin == plugin]

    def of_kind(self, kind: Kind | str) -> list[Event]:
        return [e for e in self.events if e.kind == Kind(kind)]

    @property
    def fallbacks(self) -> list[Event]:
        return self.of_kind(Kind.FALLBACK)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def __len__(self) -> int:
        return len(self.events)

    def to_dict(self) -> dict[str, Any]:
        return {"events": [e.to_dict() for e in self.events]}

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.events) or "(nothing applied)"
