"""What online tuning did, as it happens: every chunk of steps and the
configuration it ran under, every candidate with its interval and verdict,
every investment weighed (compilation) with its numbers.

:class:`OnlineReport` grows while :class:`~autotune.tuner.online.OnlineTuner`
trains; ``tuned.tuning`` is it, so ``tuned.tuning.table()`` after ``fit``
shows the whole search, ``to_dict()`` gives it as data and ``plot(path)``
draws samples/s over the run with the switches.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.display.tables import wrapped_table
from autotune.tuner.paired import Interval
from autotune.tuner.runner import COSTLY_START_S

#: Version of :meth:`OnlineReport.to_dict`'s layout.
REPORT_VERSION = 1


@dataclass(frozen=True)
class Chunk:
    """Steps run back to back under one configuration."""

    #: Optimizer steps the tuner had seen when the chunk began.
    first_step: int
    label: str
    #: "incumbent" (A), "candidate" (B), "settle" (the run's first steps)
    #: or "hold" (the search is over; watched for drift).
    role: str
    steps: int
    #: Steps timed: the chunk's steps less its warm-up (the first steps
    #: after a switch, an epoch boundary or a compilation).
    counted_steps: int
    seconds: float
    samples: int

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Tried:
    """One candidate, compared with the incumbent of its time."""

    index: int
    plugin: str
    label: str
    changes: dict[str, dict[str, Any]]
    #: "trying", "kept", "dropped", "failed", "not tried", "stopped" (the run
    #: ended first).
    verdict: str = "trying"
    reason: str = ""
    interval: Interval | None = None
    #: Steps trained under it (warm-up included); seconds of its warm-up steps.
    steps: int = 0
    warmup_s: float = 0.0

    @property
    def lost(self) -> float:
        """Steps' worth of time lost while it was tried: its steps times the
        share of speed it lacked (all of it before a measurement)."""
        ratio = self.interval.ratio if self.interval is not None else 0.0
        return self.steps * max(0.0, 1.0 - ratio)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = self.interval.to_dict() if self.interval else None
        return out


@dataclass(frozen=True)
class Investment:
    """A costly candidate (compilation) weighed before it was tried."""

    label: str
    cost_s: float
    steps_left: int
    step_s: float
    prior_gain: float
    #: What the steps left could save at ``prior_gain``, over the repay factor.
    worth_s: float
    tried: bool
    #: A rehearsal's budget pays instead of the run: the seconds it had left
    #: (None online).
    budget_left_s: float | None = None

    def why_not(self, repay: float) -> str:
        if self.budget_left_s is not None:
            return (f"~{self.cost_s:.0f} s to compile and ~{self.worth_s:.0f} s to compare; "
                    f"{self.budget_left_s:.0f} s of the budget left")
        if self.steps_left < 0:
            return "the run's length is unknown"
        return (f"~{self.cost_s:.0f} s to compile; the {self.steps_left} steps left could save "
                f"~{self.worth_s:.0f} s at the {self.prior_gain:.0%} it likely gains, less "
                f"than {repay:g}x its cost")

    def describe(self) -> str:
        verdict = "tried" if self.tried else "not tried"
        if self.budget_left_s is not None:
            return f"{self.label}: {verdict}: {self.why_not(0)}"
        return (f"{self.label}: {verdict}: ~{self.cost_s:.0f} s to compile vs "
                f"{self.steps_left} steps left x {self.step_s * 1000:.0f} ms x "
                f"{self.prior_gain:.0%} likely gain = {self.worth_s:.0f} s it could save")


def weigh(label: str, first_step_cost: float, steps_left: int | None, step_s: float,
          prior_gain: float, repay: float) -> Investment:
    """A costly knob (``Knob.first_step_cost``: that many steps' time plus
    compiler start-up) is worth trying when the steps left, at the gain its
    plugin declares likely, could save ``repay`` times its cost. A run of
    unknown length (``steps_left`` None, recorded as -1) makes no investment."""
    cost = COSTLY_START_S + first_step_cost * step_s
    left = -1 if steps_left is None else steps_left
    worth = max(0, left) * step_s * prior_gain
    return Investment(label, cost, left, step_s, prior_gain, worth,
                      steps_left is not None and worth >= repay * cost)


def afford(label: str, first_step_cost: float, compare_steps: int, step_s: float,
           prior_gain: float, budget_left_s: float) -> Investment:
    """A rehearsal's costly candidate: tried when what is left of the budget
    holds its estimated cost (as :func:`weigh`) and a comparison of
    ``compare_steps`` steps after it; what the winner saves later is the
    user's run's, which a rehearsal does not know."""
    cost = COSTLY_START_S + first_step_cost * step_s
    compare = compare_steps * step_s
    return Investment(label, cost, max(0, int(budget_left_s / max(step_s, 1e-9))), step_s,
                      prior_gain, compare, budget_left_s >= cost + compare,
                      budget_left_s=budget_left_s)


@dataclass
class OnlineReport:
    """The online search of one engine's run (see the module docstring)."""

    start: str = "PyTorch defaults"
    #: True when the run started from a cached winner, re-checked against
    #: PyTorch defaults instead of searched again.
    recheck: bool = False
    tried: list[Tried] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    investments: list[Investment] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    #: Why the search reopened (drift of the incumbent's speed).
    reopened: list[str] = field(default_factory=list)
    winner_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    winner_label: str = "PyTorch defaults"
    #: The search ran every candidate it had (until a reopening).
    complete: bool = False
    steps: int = 0
    cache_path: str | None = None
    cache_error: str | None = None
    #: What slower candidates may cost, as a share of the planned steps.
    max_loss: float = 0.0
    margin: float = 0.0
    #: "online" (during the user's run) or "rehearsal" (before it, restored).
    mode: str = "online"

    # -- derived ---------------------------------------------------------------
    @property
    def candidate_steps(self) -> int:
        return sum(t.steps for t in self.tried)

    @property
    def switches(self) -> int:
        return sum(1 for a, b in zip(self.chunks, self.chunks[1:]) if a.label != b.label)

    @property
    def gain(self) -> float:
        """The product of the kept candidates' measured ratios: the winner
        against where the run started (1.0 when nothing was kept)."""
        out = 1.0
        for tried in self.tried:
            if tried.verdict == "kept" and tried.interval is not None:
                out *= tried.interval.ratio
        return out

    # -- for people --------------------------------------------------------------
    def table(self, width: int = 120) -> str:
        rows = []
        for t in self.tried:
            found = t.interval
            rows.append([t.index, t.plugin, t.label,
                         found.pairs if found else 0,
                         f"{found.ratio:.3f}x" if found else None,
                         f"[{found.low:.3f}, {found.high:.3f}]" if found and found.pairs > 1
                         else None,
                         t.steps, t.verdict, t.reason])
        text = wrapped_table(rows, ["#", "group", "settings", "pairs", "vs incumbent",
                                    "90% interval", "steps", "verdict", "why"],
                             width=width, wrap=(2, 8))
        return text + "\n" + self.summary()

    def summary(self) -> str:
        lines = []
        if self.recheck:
            lines.append(f"started from the cached winner ({self.start}); re-checked against "
                         "PyTorch defaults, not searched again")
        lines.append(f"winner: {self.winner_label}"
                     + (f" ({self.gain:.2f}x {self.start}, measured in pairs)"
                        if self.gain != 1.0 else ""))
        lines.extend(f"investment: {i.describe()}" for i in self.investments)
        lines.extend(f"reopened: {why}" for why in self.reopened)
        share = f"{self.candidate_steps / self.steps:.0%}" if self.steps else "0%"
        lines.append(f"{self.steps} steps trained, {self.candidate_steps} ({share}) under "
                     f"candidates, {self.switches} switches; margin {self.margin:.0%}, "
                     f"slower candidates may cost {self.max_loss:.0%} of the planned steps"
                     + ("" if self.complete else "; search not finished"))
        if self.cache_error:
            lines.append(f"cache: {self.cache_error}")
        return "\n".join(lines)

    # -- as data -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": REPORT_VERSION, "mode": self.mode, "start": self.start,
                "recheck": self.recheck, "tried": [t.to_dict() for t in self.tried],
                "chunks": [{**asdict(c), "rate": c.rate} for c in self.chunks],
                "investments": [asdict(i) for i in self.investments],
                "pruned": list(self.pruned), "reopened": list(self.reopened),
                "winner_settings": self.winner_settings, "winner_label": self.winner_label,
                "gain": self.gain, "complete": self.complete, "steps": self.steps,
                "candidate_steps": self.candidate_steps, "switches": self.switches,
                "cache_path": self.cache_path, "cache_error": self.cache_error,
                "max_loss": self.max_loss, "margin": self.margin}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """samples/s of every timed chunk over the run's steps, one colour per
        configuration, a dotted line at each switch. Agg canvas, no pyplot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        labels = list(dict.fromkeys(c.label for c in self.chunks))
        for number, label in enumerate(labels):
            points = [(c.first_step + c.steps / 2, c.rate) for c in self.chunks
                      if c.label == label and c.counted_steps]
            if points:
                ax.plot(*zip(*points), "o", color=f"C{number % 10}", label=label[:60])
        for before, after in zip(self.chunks, self.chunks[1:]):
            if before.label != after.label:
                ax.axvline(after.first_step, color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="optimizer step", ylabel="samples/s",
               title=f"{self.mode} tuning: winner {self.winner_label[:70]}")
        if labels:
            ax.legend(fontsize="small")
        fig.savefig(path, dpi=100)
        return path
