"""Confirmation: a winner ships only if it beats PyTorch defaults measured
back to back with it.

The search compares trials measured minutes apart; on a shared machine the
load changes in between (one search measured the same baseline at 296 and
693 samples/s), so a candidate can look twice as fast in its trial and be
slower in truth. Before the winner ships, the baseline (A) and the winner
(B) are measured again in interleaved pairs -- A B A B -- with short trials
(the configurations were measured before, so one warm-up step and the
fewest chunks do; a compiled winner reuses its cached code). Each B is
compared with the A before it and the A after it, so a drift in load
during the confirmation shows up as spread instead of as gain.

:func:`decide` turns the pairs into a verdict:

* **gain** -- the median of the B/A ratios;
* **noise** -- half the range of those ratios, and never less than the
  trials' own (median) chunk spread;
* the winner **ships** when ``gain - 1`` exceeds ``max(min_gain, noise)``
  (with fewer than three ratios: twice ``min_gain``);
* when it looks faster but not by more than the noise, the machine is
  **too noisy to tell**: PyTorch defaults ship and the report says why;
* otherwise it was **not faster** when measured back to back: defaults ship.

When the budget cannot fit a fresh pair, but the winner's own search trial
was the last one measured, one baseline trial after it makes the sequence
(A) B A -- still interleaved, each ratio from neighbouring trials. The
search keeps that much time back for every candidate (a fresh pair once
something else has won), so a winner can always be confirmed. If the
budget still runs out before a ratio is measured, nothing was confirmed and
defaults ship ("not confirmed: budget"); the search is then left
incomplete, so the next call confirms it.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace

from autotune.tuner.candidates import Config
from autotune.tuner.records import Confirmation, Status, Trial
from autotune.tuner.runner import TrialRunner

log = logging.getLogger("autotune.tuner")


def ratios_of(sequence: list[tuple[str, float]]) -> list[float]:
    """B/A for every adjacent pair of an alternating sequence such as
    A B A B (or B A B): each B against the A before it and the A after it."""
    out = []
    for (kind, rate), (next_kind, next_rate) in zip(sequence, sequence[1:]):
        if kind != next_kind:
            out.append(next_rate / rate if next_kind == "B" else rate / next_rate)
    return out


def decide(sequence: list[tuple[str, float]], spreads: list[float],
           min_gain: float) -> Confirmation:
    """The verdict on interleaved measurements (see the module docstring)."""
    baseline = tuple(rate for kind, rate in sequence if kind == "A")
    winner = tuple(rate for kind, rate in sequence if kind == "B")
    ratios = ratios_of(sequence)
    if not ratios:
        return Confirmation(baseline, winner, decided=False,
                            verdict="not confirmed: the budget ran out before the winner could "
                                    "be measured against PyTorch defaults; defaults ship")
    gain = statistics.median(ratios)
    noise = max((max(ratios) - min(ratios)) / 2 if len(ratios) > 1 else 0.0,
                statistics.median(spreads) if spreads else 0.0)
    needed = max(min_gain if len(ratios) > 2 else 2 * min_gain, noise)
    common = dict(baseline_rates=baseline, winner_rates=winner, ratios=tuple(ratios), gain=gain,
                  noise=noise)
    if gain - 1 > needed:
        return Confirmation(**common, shipped=True,
                            verdict=f"confirmed: {gain:.2f}x PyTorch defaults in {len(sequence)} "
                                    f"interleaved trials (noise +-{noise:.0%})")
    if gain - 1 > min_gain:
        return Confirmation(**common, verdict=(
            f"too noisy to tell: {gain:.2f}x PyTorch defaults back to back, but the interleaved "
            f"measurements vary by +-{noise:.0%}; PyTorch defaults ship"))
    return Confirmation(**common, verdict=f"not confirmed: {gain:.2f}x PyTorch defaults when "
                                          "measured back to back; PyTorch defaults ship")


def confirm(runner: TrialRunner, winner: Config, *, pairs: int, min_gain: float,
            last: Trial | None = None) -> Confirmation:
    """Measure A B (A B ...) with short trials and decide. When the budget
    cannot fit a fresh pair but the winner's own trial (``last``) was the
    last one measured, measure one A after it instead: B A (A/B/A with the
    baseline trial before it, when that was the one before). A pair starts
    only if the budget can fit it; a trial that fails disqualifies the winner
    (it did not run as it did in the search)."""
    short = runner.options.shorter()
    baseline = runner.baseline
    sequence: list[tuple[str, float]] = []
    spreads: list[float] = []
    indices: list[int] = []
    pair_cost = runner.estimate(baseline, short) + runner.estimate(winner, short, cached=True)
    plan = [("A", baseline), ("B", winner)] * pairs
    if last is not None and last.ok and pair_cost > runner.remaining():
        # Reuse the tail of the search: [A] B, then a fresh A.
        earlier = [t for t in runner.trials[:last.index] if t.status is not Status.SKIPPED]
        before = earlier[-1] if earlier else None  # the trial measured just before it
        if before is not None and before.ok and before.changes == {} and before.samples_per_s:
            sequence.append(("A", before.samples_per_s))
            spreads.append(before.spread or 0.0)
            indices.append(before.index)
        assert last.samples_per_s is not None
        sequence.append(("B", last.samples_per_s))
        spreads.append(last.spread or 0.0)
        indices.append(last.index)
        plan = [("A", baseline)]
    for number, (name, config) in enumerate(plan):
        if number and number % 2 == 0 and pair_cost > runner.remaining():
            break  # another pair does not fit
        trial = runner.measure(config, f"confirm {name}{number // 2 + 1}", force=True,
                               options=short, record=False)
        indices.append(trial.index)
        if trial.status is Status.STOPPED:
            runner.budget_exhausted = True
            return _with(decide(sequence, spreads, min_gain), indices)
        if not trial.ok:
            return Confirmation(*_split(sequence), shipped=False,
                                verdict=f"not confirmed: {name} failed when measured again "
                                        f"({trial.reason}); PyTorch defaults ship",
                                trial_indices=tuple(indices))
        assert trial.samples_per_s is not None
        sequence.append((name, trial.samples_per_s))
        spreads.append(trial.spread or 0.0)
    result = decide(sequence, spreads, min_gain)
    for index in indices:
        if runner.trials[index].role.startswith("confirm"):
            runner.set_verdict(runner.trials[index], result.verdict.split(":")[0])
    log.info("confirmation: %s", result.verdict)
    return _with(result, indices)


def _split(sequence: list[tuple[str, float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (tuple(r for k, r in sequence if k == "A"), tuple(r for k, r in sequence if k == "B"))


def _with(result: Confirmation, indices: list[int]) -> Confirmation:
    return replace(result, trial_indices=tuple(indices))
