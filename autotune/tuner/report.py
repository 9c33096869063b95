"""The tuning report: every trial (:class:`~autotune.tuner.records.Trial`),
the winner, and when the search pays off.

Printed as a table for people (:meth:`TuningReport.table`) and available as
JSON (:meth:`TuningReport.to_dict`), also in the cache, so a cached result
shows the measurements it came from.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from autotune.display.tables import wrapped_table
from autotune.tuner.records import Confirmation, Status, Trial

#: Bumped when a key is removed or changes meaning.
REPORT_VERSION = 1
#: The trial table fits a terminal this wide.
TABLE_WIDTH = 120


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
    #: The search ran to its end and its winner was confirmed (or nothing
    #: beat the baseline). A partial search is cached as such and continued.
    complete: bool = True
    #: This run continued a search an earlier call had cut short.
    resumed: bool = False
    #: Trials the earlier calls of a continued search had measured.
    earlier_trials: int = 0
    #: How the winner fared against PyTorch defaults back to back.
    confirmation: Confirmation | None = None
    #: Why the result could not be cached (it is used all the same).
    cache_error: str | None = None

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

    def skipped_trials(self) -> list[Trial]:
        return [t for t in self.trials if t.status is Status.SKIPPED]

    # -- output ----------------------------------------------------------------
    def table(self, width: int = TABLE_WIDTH) -> str:
        """The trials as an aligned table at most ``width`` columns wide
        (settings and verdicts wrap), then the winner and break-even."""
        rows = []
        for t in self.trials:
            mark = "*" if t.index == self.winner_index else ""
            rows.append([
                f"{t.index}{mark}", t.role, t.status.value,
                _num(t.samples_per_s, "{:.1f}"), _num(t.step_ms, "{:.1f}"),
                _num(t.speedup, "{:.2f}x"), _num(t.spread, "{:.1%}"),
                _num(t.warmup_s, "{:.1f}"), t.label,
                t.reason or t.verdict])
        text = wrapped_table(rows, ["#", "role", "status", "samples/s", "ms/step", "vs base",
                                    "spread", "warm-up s", "settings", "verdict"],
                             width=width, wrap=(8, 9))
        return text + "\n" + self.summary(width)

    def summary(self, width: int = TABLE_WIDTH) -> str:
        winner = self.winner
        lines = []
        if self.from_cache:
            lines.append(f"cached result ({self.cache_path}); no trials ran. "
                         "Pass remeasure=True (--remeasure) to measure again.")
        if self.resumed:
            lines.append(f"continued a search an earlier call cut short ({self.earlier_trials} "
                         "trials then)")
        if winner is None:
            lines.append("winner: none measured; the plan keeps its rule-based values")
        else:
            speed = self.speedup
            lines.append(f"winner: #{winner.index} {winner.label}"
                         + (f" -- {speed:.2f}x PyTorch defaults in the search" if speed else ""))
        if self.confirmation is not None:
            lines.append(self.confirmation.verdict)
        steps, seconds = self.break_even_steps, self.break_even_s
        if not self.from_cache:
            cost = f"search took {self.search_s:.1f} s" + (
                f" of a {self.budget_s:g} s budget" if self.budget_s is not None else "")
            if steps is None:
                lines.append(f"{cost}; it saves nothing per step, so it never pays back")
            else:
                lines.append(f"{cost}; it pays back after {steps:.0f} training steps "
                             f"(~{seconds:.0f} s of training with the winner)")
        if self.interrupted:
            lines.append("interrupted: nothing unconfirmed ships (a winner confirmed before "
                         "Ctrl-C does); the next call continues the search")
        elif self.budget_exhausted:
            lines.append(f"the budget of {self.budget_s:g} s did not fit every candidate: "
                         "those are marked skipped (not started) or stopped; the next call "
                         "continues the search")
        if self.cache_error:
            lines.append(f"not cached: {self.cache_error}")
        return "\n".join(textwrap.fill(line, width, subsequent_indent="  ") for line in lines)

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
            "complete": self.complete,
            "resumed": self.resumed,
            "earlier_trials": self.earlier_trials,
            "confirmation": None if self.confirmation is None else self.confirmation.to_dict(),
            "cache_error": self.cache_error,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TuningReport":
        """Read back :meth:`to_dict`; ``ValueError`` for anything else (a
        cache entry of the wrong shape is measured again, never trusted)."""
        if not isinstance(data, Mapping):
            raise ValueError("a tuning report is not a mapping")
        try:
            trials = data.get("trials", ())
            if not isinstance(trials, (list, tuple)):
                raise ValueError("trials is not a list")
            winner = data.get("winner_settings") or {}
            if not isinstance(winner, Mapping) or not all(
                    isinstance(v, Mapping) for v in winner.values()):
                raise ValueError("winner_settings is not {plugin: {key: value}}")
            for name in ("winner_index", "baseline_index"):
                value = data.get(name)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ValueError(f"{name} is not a trial number")
            budget = data.get("budget_s")
            if budget is not None and (not isinstance(budget, (int, float))
                                       or isinstance(budget, bool)):
                raise ValueError("budget_s is not a number")
            confirmation = data.get("confirmation")
            return cls(
                trials=tuple(Trial.from_dict(t) for t in trials),
                winner_settings={str(p): dict(v) for p, v in winner.items()},
                winner_index=data.get("winner_index"), baseline_index=data.get("baseline_index"),
                search_s=float(data.get("search_s", 0.0)), budget_s=budget,
                budget_exhausted=bool(data.get("budget_exhausted", False)),
                interrupted=bool(data.get("interrupted", False)),
                from_cache=bool(data.get("from_cache", False)),
                cache_key=str(data.get("cache_key", "")), cache_path=data.get("cache_path"),
                pruned=tuple(str(p) for p in data.get("pruned", ())),
                device=str(data.get("device", "")),
                complete=bool(data.get("complete", True)), resumed=bool(data.get("resumed", False)),
                earlier_trials=int(data.get("earlier_trials", 0)),
                confirmation=None if confirmation is None else Confirmation.from_dict(confirmation),
                cache_error=data.get("cache_error"))
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"malformed tuning report: {exc}") from None

    def as_cached(self, path: str) -> "TuningReport":
        return replace(self, from_cache=True, cache_path=path)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
