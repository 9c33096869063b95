"""Is B faster than A? Paired chunks, an interval on their ratio, a verdict.

Two configurations are measured in alternating chunks of equal step counts,
``A B A B A ...``. Each B chunk is compared with the mean of its two A
neighbours, on a log scale::

    r_i = log(rate(B_i)) - (log(rate(A_i)) + log(rate(A_i+1))) / 2

Averaging the two neighbours cancels a slow drift (the page cache warming,
thermals, a neighbour's load ramping up): a linear trend adds the same
amount to both sides of ``r_i``. The mean of the ``r_i`` estimates the log of
B's speed relative to A; a Student-t interval on that mean (two-sided 90 %,
so each bound is a one-sided 95 % bound) says how sure that estimate is.

The verdict, with ``margin`` (1 % by default):

* **keep B** when the lower bound clears ``log(1 + margin)``: B is faster
  than A by more than the margin, with 95 % confidence;
* **drop B** when the upper bound is below ``log(1 + margin)``: even at best
  B cannot be worth the switch (this includes a B that is clearly slower);
* otherwise **more** pairs, up to a cap, after which B is dropped: an
  undecided comparison keeps the incumbent, so noise can cost a gain but
  never ships a slowdown.

Why not the spread of one configuration's own chunks as the margin (what
the up-front search does): in its 150 s search of
benchmarks/results/budget_buys_cnn.json, channels_last measured +8.6 %
"within the 13.1 % noise margin" on one trial's spread, and defaults shipped. Pairing removes the shared part of the noise, and the interval
narrows as pairs accumulate -- cheap online, where every chunk is a real
training step anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

#: One-sided 95 % quantiles of Student's t by degrees of freedom (the bounds
#: of a two-sided 90 % interval); between rows the smaller df is used, which
#: errs towards a wider interval.
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860,
        9: 1.833, 10: 1.812, 11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753,
        16: 1.746, 17: 1.740, 18: 1.734, 19: 1.729, 20: 1.725, 25: 1.708, 30: 1.697,
        40: 1.684, 60: 1.671, 120: 1.658}
#: The normal quantile, for more degrees of freedom than the table has.
Z_95 = 1.645

#: A candidate must be faster than the incumbent by more than this to be kept.
DEFAULT_MARGIN = 0.01
#: Pairs before any verdict (one pair has no spread to judge by).
MIN_PAIRS = 2
#: Pairs after which an undecided candidate is dropped.
MAX_PAIRS = 10


def t_quantile(df: int) -> float:
    """The one-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    usable = [d for d in T_95 if d <= df]
    return T_95[max(usable)] if df <= max(T_95) else Z_95


class Verdict(str, Enum):
    KEEP = "keep"
    DROP = "drop"
    MORE = "more"


@dataclass(frozen=True)
class Interval:
    """B's speed relative to A as a ratio (1.10: B is 10 % faster), with the
    bounds of its two-sided 90 % interval, from ``pairs`` pairs."""

    ratio: float
    low: float
    high: float
    pairs: int

    def describe(self) -> str:
        if self.pairs < 2:
            return f"{self.ratio:.3f}x (1 pair)"
        return f"{self.ratio:.3f}x [{self.low:.3f}, {self.high:.3f}] over {self.pairs} pairs"

    def to_dict(self) -> dict[str, float]:
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "pairs": self.pairs}


def pair_log_ratios(a_rates: Sequence[float], b_rates: Sequence[float]) -> list[float]:
    """One log-ratio per B chunk that has an A chunk on both sides.

    ``a_rates[i]`` and ``a_rates[i + 1]`` are the A chunks before and after
    ``b_rates[i]`` (rates: samples/s, > 0)."""
    pairs = min(len(b_rates), len(a_rates) - 1)
    out = []
    for i in range(max(0, pairs)):
        a0, b, a1 = a_rates[i], b_rates[i], a_rates[i + 1]
        if min(a0, b, a1) <= 0:
            raise ValueError(f"rates must be > 0, got A {a0}, B {b}, A {a1}")
        out.append(math.log(b) - (math.log(a0) + math.log(a1)) / 2)
    return out


def interval(log_ratios: Sequence[float]) -> Interval:
    """The mean ratio and its two-sided 90 % t-interval."""
    n = len(log_ratios)
    if n == 0:
        raise ValueError("no pairs to make an interval of")
    mean = sum(log_ratios) / n
    if n == 1:
        return Interval(math.exp(mean), 0.0, math.inf, 1)
    variance = sum((r - mean) ** 2 for r in log_ratios) / (n - 1)
    half = t_quantile(n - 1) * math.sqrt(variance / n)
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def decide(log_ratios: Sequence[float], margin: float = DEFAULT_MARGIN,
           min_pairs: int = MIN_PAIRS, max_pairs: int = MAX_PAIRS) -> tuple[Verdict, str]:
    """Keep, drop or measure more (see the module docstring), with the reason."""
    n = len(log_ratios)
    if n < min_pairs:
        return Verdict.MORE, f"{n} of at least {min_pairs} pairs"
    found = interval(log_ratios)
    bar = 1 + margin
    if found.low > bar:
        return Verdict.KEEP, (f"faster: {found.describe()}, the lower bound clears the "
                              f"{margin:.0%} margin")
    if found.high < bar:
        slower = "slower" if found.high < 1 else "not worth it"
        return Verdict.DROP, (f"{slower}: {found.describe()}, the upper bound is below "
                              f"{bar:.2f}x")
    if n >= max_pairs:
        return Verdict.DROP, (f"undecided after {n} pairs: {found.describe()} straddles "
                              f"{bar:.2f}x; the incumbent stays")
    return Verdict.MORE, f"undecided: {found.describe()}"
