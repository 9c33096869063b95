"""The tuning report: every trial, the winner, and when the search pays off.

Printed as a table for people (:meth:`TuningReport.table`) and available as
JSON (:meth:`TuningReport.to_dict`), also in the cache, so a cached result
shows the measurements it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from autotune.tuner.trial import Measurement, Status

#: Bumped when a key is removed or changes meaning.
REPORT_VERSION = 1


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
        values = dict(data)
        values["status"] = Status(values["status"])
        values["chunk_rates"] = tuple(values.get("chunk_rates", ()))
        return cls(**values)


@dataclass(frozen=True)
class TuningReport:
    trials: tuple[Trial, ...] = ()
    #: The winner's settings (``{plugin: {key: value}}``) written into the
    #: plan with source "measured".
    winner_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    winner_index: int | None = None
    baseline_index: int | None = None
    #: Seconds the search took (trials and restores), this run.
    search_s: float = 0.0
    budget_s: float | None = None
    budget_exhausted: bool = False
    interrupted: bool = False
    from_cache: bool = False
    cache_key: str = ""
    cache_path: str | None = None
    #: Candidates not tried, with the reason (hardware priors, duplicates).
    pruned: tuple[str, ...] = ()
    device: str = ""

    # -- reading ---------------------------------------------------------------
    def _trial(self, index: int | None) -> Trial | None:
        return None if index is None else next((t for t in self.trials if t.index == index), None)

    @property
    def baseline(self) -> Trial | None:
        return self._trial(self.baseline_index)

    @property
    def winner(self) -> Trial | None:
        return self._trial(self.winner_index)

    @property
    def speedup(self) -> float | None:
        """The winner's samples/s over the baseline's (1.0 when defaults won)."""
        winner, baseline = self.winner, self.baseline
        if not winner or not baseline or not winner.samples_per_s or not baseline.samples_per_s:
            return None
        return winner.samples_per_s / baseline.samples_per_s

    @property
    def saved_ms_per_step(self) -> float | None:
        winner, baseline = self.winner, self.baseline
        if not winner or not baseline or winner.step_ms is None or baseline.step_ms is None:
            return None
        return baseline.step_ms - winner.step_ms

    @property
    def break_even_steps(self) -> float | None:
        """Training steps after which the search has paid for itself (the
        search's seconds over the time each step saves); None: never."""
        saved = self.saved_ms_per_step
        if saved is None or saved <= 0:
            return None
        return self.search_s * 1000.0 / saved

    @property
    def break_even_s(self) -> float | None:
        """The same point in seconds of training with the winner."""
        steps, winner = self.break_even_steps, self.winner
        if steps is None or winner is None or winner.step_ms is None:
            return None
        return steps * winner.step_ms / 1000.0

    def measured_trials(self) -> list[Trial]:
        return [t for t in self.trials if t.status is not Status.SKIPPED]

    # -- output ----------------------------------------------------------------
    def table(self) -> str:
        """The trials as an aligned table, then the winner and break-even."""
        from autotune.cli.output import table

        rows = []
        for t in self.trials:
            mark = "*" if t.index == self.winner_index else ""
            rows.append([
                f"{t.index}{mark}", t.role, t.status.value,
                _num(t.samples_per_s, "{:.1f}"), _num(t.step_ms, "{:.1f}"),
                _num(t.speedup, "{:.2f}x"), _num(t.spread, "{:.1%}"),
                _num(t.warmup_s, "{:.1f}"), t.label,
                t.reason or t.verdict])
        text = table(rows, ["#", "role", "status", "samples/s", "ms/step", "vs base", "spread",
                            "warm-up s", "settings", "verdict"])
        return text + "\n" + self.summary()

    def summary(self) -> str:
        winner = self.winner
        lines = []
        if self.from_cache:
            lines.append(f"cached result ({self.cache_path}); no trials ran. "
                         "Pass remeasure=True (--remeasure) to measure again.")
        if winner is None:
            lines.append("winner: none measured; the plan keeps its rule-based values")
        else:
            speed = self.speedup
            lines.append(f"winner: #{winner.index} {winner.label}"
                         + (f" -- {speed:.2f}x PyTorch defaults" if speed else ""))
        steps, seconds = self.break_even_steps, self.break_even_s
        if not self.from_cache:
            cost = f"search took {self.search_s:.1f} s"
            if steps is None:
                lines.append(f"{cost}; it saves nothing per step, so it never pays back")
            else:
                lines.append(f"{cost}; it pays back after {steps:.0f} training steps "
                             f"(~{seconds:.0f} s of training with the winner)")
        if self.interrupted:
            lines.append("interrupted: the best configuration measured so far was kept")
        elif self.budget_exhausted:
            lines.append(f"the budget of {self.budget_s:g} s ran out; candidates left untried "
                         "are marked skipped")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "device": self.device,
            "trials": [t.to_dict() for t in self.trials],
            "baseline_index": self.baseline_index,
            "winner_index": self.winner_index,
            "winner_settings": {p: dict(v) for p, v in self.winner_settings.items()},
            "speedup": self.speedup,
            "break_even_steps": self.break_even_steps,
            "break_even_s": self.break_even_s,
            "search_s": self.search_s,
            "budget_s": self.budget_s,
            "budget_exhausted": self.budget_exhausted,
            "interrupted": self.interrupted,
            "from_cache": self.from_cache,
            "cache_key": self.cache_key,
            "cache_path": self.cache_path,
            "pruned": list(self.pruned),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TuningReport":
        return cls(trials=tuple(Trial.from_dict(t) for t in data.get("trials", ())),
                   winner_settings={p: dict(v) for p, v in (data.get("winner_settings") or {}).items()},
                   winner_index=data.get("winner_index"), baseline_index=data.get("baseline_index"),
                   search_s=float(data.get("search_s", 0.0)), budget_s=data.get("budget_s"),
                   budget_exhausted=bool(data.get("budget_exhausted", False)),
                   interrupted=bool(data.get("interrupted", False)),
                   from_cache=bool(data.get("from_cache", False)),
                   cache_key=str(data.get("cache_key", "")), cache_path=data.get("cache_path"),
                   pruned=tuple(data.get("pruned", ())), device=str(data.get("device", "")))

    def as_cached(self, path: str) -> "TuningReport":
        return replace(self, from_cache=True, cache_path=path)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
