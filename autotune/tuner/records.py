"""What measured tuning records: a trial's :class:`Measurement` and its
:class:`Trial` row, the :class:`Confirmation` of a winner, and the
:class:`SearchState` a search cut short leaves for the next call.

The data types the trial runner, the search, the confirmation and the
report share live here, below all of them, so that none of those modules
imports another for its types. Everything that is cached reads back
through ``from_dict``, which raises ``ValueError`` for anything of the wrong
shape (a cache entry that fails is measured again, never trusted).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


class Status(str, enum.Enum):
    OK = "ok"
    DISQUALIFIED = "disqualified"
    SKIPPED = "skipped"
    #: Started, then stopped because the budget ran out ("stopped: budget").
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Measurement:
    """What one run of :func:`~autotune.tuner.trial.run_trial` measured."""

    status: Status
    reason: str = ""
    #: Median over the timed chunks.
    samples_per_s: float | None = None
    step_ms: float | None = None
    #: Relative spread of the chunk rates (:func:`~autotune.tuner.timing.spread_of`).
    spread: float | None = None
    chunk_rates: tuple[float, ...] = ()
    steps: int = 0
    #: Micro-steps per timed chunk (``steps`` minus the chunks' is warm-up).
    chunk_steps: int = 0
    #: Warm-up: from the start of fit to the end of the last warm-up step.
    warmup_s: float | None = None
    #: The first step alone (loader start and compilation dominate it).
    first_step_s: float | None = None
    #: Everything: apply, engine set-up, warm-up, chunks, close.
    wall_s: float = 0.0
    #: What the plugins reported while applying this candidate.
    events: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True)
class Trial:
    """One configuration and what measuring it showed."""

    index: int
    #: Why it was tried: "baseline", "planned", a plugin's name, "recheck".
    role: str
    #: The settings that differ from the baseline (``{}`` for the baseline).
    changes: Mapping[str, Mapping[str, Any]]
    label: str
    status: Status
    reason: str = ""
    samples_per_s: float | None = None
    step_ms: float | None = None
    spread: float | None = None
    chunk_rates: tuple[float, ...] = ()
    warmup_s: float | None = None
    first_step_s: float | None = None
    wall_s: float = 0.0
    #: Samples/s relative to the baseline's.
    speedup: float | None = None
    #: What the search decided: "baseline", "adopted", "kept ...", "pruned ...".
    verdict: str = ""

    @classmethod
    def from_measurement(cls, index: int, role: str, changes: Mapping[str, Mapping[str, Any]],
                         label: str, m: Measurement) -> "Trial":
        return cls(index, role, {p: dict(v) for p, v in changes.items()}, label, m.status,
                   m.reason, m.samples_per_s, m.step_ms, m.spread, m.chunk_rates, m.warmup_s,
                   m.first_step_s, m.wall_s)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["chunk_rates"] = list(self.chunk_rates)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trial":
        """Read back :meth:`to_dict`; ``ValueError`` for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError("a trial is not a mapping")
        values = dict(data)
        try:
            values["status"] = Status(values["status"])
            values["chunk_rates"] = tuple(float(r) for r in values.get("chunk_rates", ()))
            trial = cls(**values)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed trial: {exc}") from None
        numbers = (trial.samples_per_s, trial.step_ms, trial.spread, trial.warmup_s,
                   trial.first_step_s, trial.speedup)
        if not isinstance(trial.index, int) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                for v in numbers) or not isinstance(trial.changes, Mapping):
            raise ValueError("malformed trial: a field has the wrong type")
        return trial


@dataclass(frozen=True)
class Confirmation:
    """What confirming a winner against the baseline showed
    (:mod:`autotune.tuner.confirm`)."""

    #: samples/s of the baseline (A) and the winner (B), in the order measured.
    baseline_rates: tuple[float, ...] = ()
    winner_rates: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()
    gain: float | None = None
    noise: float | None = None
    shipped: bool = False
    #: False when nothing could be decided (the budget ran out first).
    decided: bool = True
    verdict: str = ""
    trial_indices: tuple[int, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_rates": list(self.baseline_rates),
                "winner_rates": list(self.winner_rates), "ratios": list(self.ratios),
                "gain": self.gain, "noise": self.noise, "shipped": self.shipped,
                "decided": self.decided, "verdict": self.verdict,
                "trials": list(self.trial_indices)}

    @classmethod
    def from_dict(cls, data: Any) -> "Confirmation":
        if not isinstance(data, dict):
            raise ValueError("confirmation is not a mapping")

        def floats(name: str) -> tuple[float, ...]:
            values = data.get(name, [])
            if not isinstance(values, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"confirmation: {name} is not a list of numbers")
            return tuple(float(v) for v in values)

        gain, noise = data.get("gain"), data.get("noise")
        for name, value in (("gain", gain), ("noise", noise)):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"confirmation: {name} is not a number")
        if not isinstance(data.get("shipped", False), bool) or not isinstance(
                data.get("decided", True), bool):
            raise ValueError("confirmation: shipped/decided are not true/false")
        return cls(floats("baseline_rates"), floats("winner_rates"), floats("ratios"), gain,
                   noise, data.get("shipped", False), data.get("decided", True),
                   str(data.get("verdict", "")),
                   tuple(int(i) for i in floats("trials")))


@dataclass(frozen=True)
class SearchState:
    """What a search cut short leaves for the next call to continue from."""

    incumbent: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Steps finished ("planned", "<plugin>@<pass>", "<plugin>-after-loader@<pass>").
    done: tuple[str, ...] = ()
    #: (plugin, values) measured clearly slower than the incumbent, or failed.
    losers: tuple[tuple[str, str], ...] = ()
    #: Trials measured by the earlier calls, for the report.
    earlier_trials: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"incumbent": {p: dict(v) for p, v in self.incumbent.items()},
                "done": list(self.done), "losers": [list(pair) for pair in self.losers],
                "earlier_trials": self.earlier_trials}

    @classmethod
    def from_dict(cls, data: Any) -> "SearchState":
        """Read back :meth:`to_dict`; raises ``ValueError`` on anything else
        (a cache entry of the wrong shape is measured again, never trusted)."""
        if not isinstance(data, Mapping):
            raise ValueError("search state is not a mapping")
        incumbent = data.get("incumbent", {})
        if not isinstance(incumbent, Mapping) or not all(
                isinstance(p, str) and isinstance(v, Mapping) and all(isinstance(k, str) for k in v)
                for p, v in incumbent.items()):
            raise ValueError("search state: incumbent is not {plugin: {key: value}}")
        done, losers = data.get("done", []), data.get("losers", [])
        if not isinstance(done, list) or not all(isinstance(d, str) for d in done):
            raise ValueError("search state: done is not a list of step names")
        if not isinstance(losers, list) or not all(
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                for pair in losers):
            raise ValueError("search state: losers is not a list of [plugin, values] pairs")
        earlier = data.get("earlier_trials", 0)
        if not isinstance(earlier, int) or isinstance(earlier, bool) or earlier < 0:
            raise ValueError("search state: earlier_trials is not a count")
        return cls({p: dict(v) for p, v in incumbent.items()}, tuple(done),
                   tuple((a, b) for a, b in losers), earlier)
