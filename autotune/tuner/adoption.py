"""When the search adopts a candidate: the noise margin, the rule that a
candidate must beat the incumbent beyond it, when a win is borderline (and
worth re-measuring the incumbent for), which losers are not retried, and
the verdicts the report shows for each.

Pure functions of the trials' numbers, so :class:`~autotune.tuner.search.Search`
holds only the order of the steps and what it has decided so far.
"""

from __future__ import annotations

import json

from autotune.tuner.candidates import Config
from autotune.tuner.records import Trial

#: A value measured this much slower than the incumbent (or twice the noise
#: margin, if more) is not retried in later passes.
LOSER_MARGIN = 0.10


def margin(candidate: Trial, incumbent: Trial, min_gain: float) -> float:
    return max(min_gain, candidate.spread or 0.0, incumbent.spread or 0.0)


def beats(candidate: Trial, incumbent: Trial, min_gain: float) -> bool:
    """True when ``candidate``'s median samples/s exceeds the incumbent's by
    more than max(min_gain, either trial's chunk spread)."""
    if not candidate.ok or not incumbent.ok:
        return candidate.ok and not incumbent.ok
    assert candidate.samples_per_s is not None and incumbent.samples_per_s is not None
    return candidate.samples_per_s > incumbent.samples_per_s * (1 + margin(candidate, incumbent,
                                                                           min_gain))


def borderline(best: Trial, incumbent: Trial, min_gain: float) -> bool:
    """A win within twice the noise margin: only such a win re-measures the
    incumbent (a clear one needs no second look -- the confirmation against
    the baseline guards what ships)."""
    assert best.samples_per_s is not None and incumbent.samples_per_s is not None
    won_by = best.samples_per_s / incumbent.samples_per_s - 1
    return won_by < 2 * margin(best, incumbent, min_gain)


def clear_loser(trial: Trial, incumbent: Trial, min_gain: float) -> bool:
    """Failed, or slower than the incumbent by more than :data:`LOSER_MARGIN`
    (or twice the noise margin): not retried in later passes."""
    clearly = max(LOSER_MARGIN, 2 * margin(trial, incumbent, min_gain))
    return not trial.ok or bool(trial.samples_per_s is not None and incumbent.samples_per_s
                                and trial.samples_per_s < incumbent.samples_per_s * (1 - clearly))


def loser_key(plugin: str, config: Config) -> tuple[str, str]:
    """How a loser is remembered (and cached): the plugin and its values."""
    return plugin, json.dumps(config.values.get(plugin, {}), sort_keys=True, default=str)


def adopted_verdict(best: Trial, reference: Trial) -> str:
    assert best.samples_per_s is not None and reference.samples_per_s is not None
    gain = best.samples_per_s / reference.samples_per_s - 1
    return f"adopted: beat #{reference.index} by {gain:+.1%}"


def kept_verdict(trial: Trial, incumbent: Trial, min_gain: float) -> str | None:
    """Why the incumbent stays against ``trial``; None when either was not
    measured."""
    if trial.samples_per_s is None or incumbent.samples_per_s is None:
        return None
    change = trial.samples_per_s / incumbent.samples_per_s - 1
    noise = margin(trial, incumbent, min_gain)
    if change > 0:
        return f"kept #{incumbent.index}: {change:+.1%} is within the {noise:.1%} noise margin"
    return f"kept #{incumbent.index}: {change:+.1%}"
