"""The options of measured tuning: how long a trial runs
(:class:`TrialOptions`) and how the search decides (:class:`SearchOptions`).

Both check their values when made, so a bad option fails with an
:class:`~autotune.errors.AutotuneError` where it is written, not minutes
into a search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from autotune.errors import AutotuneError


def _whole_numbers(options: object, names: tuple[str, ...], minimum: int) -> None:
    """Each of ``names`` is an int (not a bool) >= ``minimum``, or an error
    naming the options class and the field."""
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise AutotuneError(f"{type(options).__name__}.{name} must be a whole number "
                                f">= {minimum}, got {value!r}")


def _numbers(options: object, names: tuple[str, ...], *, positive: bool) -> None:
    """Each of ``names`` is a finite number, > 0 (``positive``) or >= 0."""
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise AutotuneError(f"{type(options).__name__}.{name} must be a number "
                                f"{'>' if positive else '>='} 0, got {value!r}")


@dataclass(frozen=True)
class TrialOptions:
    #: Steps before timing starts (loader start, compilation, allocation).
    warmup_steps: int = 2
    #: Timed chunks of a trial, at most; fewer (down to ``min_chunks``) when
    #: steps are so slow that ``chunks`` of them would exceed ``max_timed_s``.
    chunks: int = 5
    min_chunks: int = 3
    #: Target duration of one timed chunk, seconds.
    chunk_s: float = 0.5
    #: Target duration of all timed chunks together, seconds.
    max_timed_s: float = 6.0
    min_chunk_steps: int = 1
    max_chunk_steps: int = 500
    #: A trial whose chunks spread more than this (relative) was disturbed
    #: (another process took the cores): it is measured again, up to
    #: ``retries`` times, and the steadiest measurement is kept.
    max_spread: float = 0.25
    retries: int = 1
    #: The clock chunks are timed with (tests pass a fake one to make
    #: measurements deterministic); the budget always runs on real time.
    clock: Callable[[], float] = field(default=time.perf_counter, compare=False, repr=False)

    def __post_init__(self) -> None:
        _whole_numbers(self, ("warmup_steps",), 0)
        _whole_numbers(self, ("chunks", "min_chunks", "min_chunk_steps", "max_chunk_steps"), 1)
        _whole_numbers(self, ("retries",), 0)
        _numbers(self, ("chunk_s", "max_timed_s", "max_spread"), positive=True)
        if self.min_chunks > self.chunks:
            raise AutotuneError(f"TrialOptions.min_chunks={self.min_chunks} is more than "
                                f"chunks={self.chunks}")

    def shorter(self) -> "TrialOptions":
        """The options of a confirmation trial: the configuration was
        measured already, so one warm-up step and the fewest chunks do."""
        return replace(self, warmup_steps=min(self.warmup_steps, 1), chunks=self.min_chunks,
                       retries=0)


@dataclass(frozen=True)
class SearchOptions:
    #: A candidate must beat the incumbent's median by more than this
    #: fraction, and by more than either trial's own spread.
    min_gain: float = 0.02
    #: Re-measure the incumbent before adopting a candidate whose win is
    #: borderline (within twice the noise margin).
    recheck: bool = True
    #: Search only these plugins' candidates (None: every plugin with a prior).
    only: tuple[str, ...] | None = None
    trial: TrialOptions = field(default_factory=TrialOptions)
    #: Interleaved baseline/winner pairs measured before a winner ships
    #: (fewer when the budget is short, never none).
    confirm_pairs: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.min_gain, (int, float)) or not 0 <= self.min_gain < 1:
            raise AutotuneError(f"SearchOptions.min_gain must be a fraction in [0, 1), "
                                f"got {self.min_gain!r}")
        if not isinstance(self.confirm_pairs, int) or self.confirm_pairs < 1:
            raise AutotuneError(f"SearchOptions.confirm_pairs must be a whole number >= 1, "
                                f"got {self.confirm_pairs!r}")
        if self.only is not None and (isinstance(self.only, str)
                                      or not all(isinstance(p, str) for p in self.only)):
            raise AutotuneError(f"SearchOptions.only must be a tuple of plugin names, "
                                f"got {self.only!r}")


#: What ``OnlineOptions.allow`` may name: an effect beyond speed whose knobs
#: online tuning may then try ("precision" is the usual word for numerics).
ALLOWABLE = {"precision": "numerics", "numerics": "numerics"}


@dataclass(frozen=True)
class OnlineOptions:
    """How online tuning (:mod:`autotune.tuner.online`) measures during a run."""

    #: A candidate is kept when the lower bound of its interval clears this.
    margin: float = 0.01
    #: Timed seconds per chunk (one step at least, ``max_chunk_steps`` at most).
    chunk_s: float = 1.0
    max_chunk_steps: int = 64
    #: Steps after each switch (and epoch boundary) that are not timed.
    warmup_steps: int = 1
    #: Steps at the run's start before anything is timed (first steps are slow).
    settle_steps: int = 3
    #: Pairs after which an undecided candidate is dropped.
    max_pairs: int = 10
    #: What slower candidates may cost: the steps trained under candidates
    #: not kept, each weighed by the share of speed it lost (a step at 0.8x
    #: costs 0.2 of a step; one not yet measured, a whole step), at most
    #: this share of the planned steps; then the search stops where it is.
    max_loss: float = 0.02
    #: A costly candidate (compilation) is tried only when the steps left
    #: could save ``repay`` times its estimated cost at the gain its plugin
    #: declares likely (``autotune_search_prior``).
    repay: float = 2.0
    #: Once the search is over, the incumbent's speed is watched: when the
    #: median of the last ``drift_chunks`` chunks moves more than ``drift``
    #: from what it was, the loader and thread settings are searched again.
    drift: float = 0.2
    drift_chunks: int = 5
    max_reopen: int = 3
    #: Effects beyond speed that may be tried: ``("precision",)`` lets the
    #: search try autocast. Clipping, accumulation and batch size: never.
    allow: tuple[str, ...] = ()
    #: Search before training instead (``apply(tune="rehearse")``): real
    #: steps for up to the budget, the user's objects restored after; the
    #: winner is applied as a fixed plan (:mod:`autotune.tuner.rehearsal`).
    rehearse: bool = False
    #: The clock chunks are timed with (tests pass a fake one).
    clock: Callable[[], float] = field(default=time.perf_counter, compare=False, repr=False)

    def __post_init__(self) -> None:
        _whole_numbers(self, ("max_chunk_steps", "settle_steps", "max_pairs", "drift_chunks"), 1)
        _whole_numbers(self, ("warmup_steps", "max_reopen"), 0)
        _numbers(self, ("margin", "chunk_s", "max_loss", "repay", "drift"), positive=False)
        if isinstance(self.allow, str) or not all(a in ALLOWABLE for a in self.allow):
            raise AutotuneError(f"OnlineOptions.allow={self.allow!r}: a tuple of "
                                f"{', '.join(sorted(ALLOWABLE))}; clipping, accumulation and "
                                "batch size change what is trained and are never tried")
        object.__setattr__(self, "allow", tuple(self.allow))

    @property
    def allowed_effects(self) -> set[str]:
        return {"speed", *(ALLOWABLE[a] for a in self.allow)}
