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
        for name in ("warmup_steps", "chunks", "min_chunks", "min_chunk_steps",
                     "max_chunk_steps", "retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name in (
                    "warmup_steps", "retries") else 1):
                raise AutotuneError(f"TrialOptions.{name} must be a whole number "
                                    f">= {0 if name in ('warmup_steps', 'retries') else 1}, "
                                    f"got {value!r}")
        for name in ("chunk_s", "max_timed_s", "max_spread"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    math.isfinite(value) and value > 0):
                raise AutotuneError(f"TrialOptions.{name} must be a number > 0, got {value!r}")
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
