"""After the online search: the incumbent's chunks are still timed, and
the loader and thread part of the search reopens when the machine changes
under the run -- its speed drifts (another job arrived), or the daemon gives
the job a new share.

:class:`AfterSearch` is that part of :class:`~autotune.tuner.online.OnlineTuner`
(a mixin: it uses the tuner's chunks, switching and candidate queue).

A new share is brought into force by the daemon's
:class:`~autotune.live.adapter.LiveAdapter` (each plugin sizes its own
settings, source ``daemon``), which then tells the tuner
(:meth:`AfterSearch.share_arrived`): the incumbent takes the share's values,
so a later switch never undoes it; a candidate being tried is given up;
the candidates are offered for the new share (the plugins read
``context.share``); and the loader and thread settings are searched again
from a fresh incumbent chunk. So one mechanism makes every change during a
run: the adapter takes shares, the tuner measures.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import replace
from typing import Any

from autotune.plan.knobs import LOADER
from autotune.plan.report import Kind

log = logging.getLogger("autotune.tuner.online")


class AfterSearch:
    """The hold phase and the reopenings of :class:`~autotune.tuner.online.OnlineTuner`."""

    # Attributes of the tuner this part uses (set in OnlineTuner.__init__).
    phase: str
    incumbent: Any
    current: Any

    def _to_hold(self: Any, complete: bool, why: str = "") -> None:
        self.phase = "hold"
        self.report.complete = complete
        if why:
            log.info("online: search stops: %s", why)
        self.on_settled(self.report)
        self._hold, self._reference = [], None
        self._chunk = self._open(self.incumbent, "hold", 0, self.chunk_steps)

    def _watch(self: Any, rate: float) -> None:
        """The incumbent's speed after the search: reopen on drift."""
        options = self.options
        self._hold.append(rate)
        recent = self._hold[-options.drift_chunks:]
        if len(recent) == options.drift_chunks:
            now = statistics.median(recent)
            if self._reference is None:
                self._reference = now
            elif abs(math.log(now / self._reference)) > math.log(1 + options.drift) \
                    and len(self.report.reopened) < options.max_reopen:
                reference = self._reference
                self._reopen(f"step {self.steps}: {self.space.label(self.incumbent)} ran "
                             f"{now:.1f} samples/s over the last {options.drift_chunks} "
                             f"chunks vs {reference:.1f} before ({now / reference - 1:+.0%})")
                self._a = self._hold[-1:]
                self._next_candidate()
                return
        self._chunk = self._open(self.incumbent, "hold", 0, self.chunk_steps)

    def share_arrived(self: Any, share: Any, changes: dict[str, dict[str, Any]]) -> None:
        """The daemon's new ``share`` is in force (``changes``: what each
        plugin's settings became): see the module docstring."""
        interrupted = None
        if self._trying is not None:
            interrupted = self._trying[0].plugin  # its group is offered again, in the share
            self._settle_candidate("stopped", f"a new share arrived ({share.reason})")
        for plugin, values in changes.items():
            self.incumbent = self.incumbent.merged(plugin, values)
            self.current = self.current.merged(plugin, values)
        self._switch(self.incumbent, force=True)  # a candidate's other changes go back
        self.space = replace(self.space, context=replace(self.space.context, share=share))
        self.report.winner_label = self.space.label(self.incumbent)
        self.report.winner_settings = self.incumbent.to_dict()
        if self.phase == "settle":
            return  # the search has not begun: it will search within the share
        self._reopen(f"step {self.steps}: a new share ({share.reason})", again=interrupted)
        self._a, self._hold, self._reference = [], [], None
        self._chunk = self._open(self.incumbent, "incumbent", self.options.warmup_steps,
                                 self.chunk_steps)

    def give_up(self: Any, why: str) -> None:
        """The run ends here (a rehearsal's budget): a candidate being tried
        is recorded as stopped, with ``why``; the incumbent stands."""
        if self._trying is not None:
            self._settle_candidate("stopped", why)

    def _reopen(self: Any, why: str, again: str | None = None) -> None:
        """The loader and thread groups go first again, then the groups cut
        short (``again``'s candidate, a group with candidates left), then
        those not searched yet."""
        why += ": loader and thread settings searched again"
        log.info("online: %s", why)
        self.report.reopened.append(why)
        self.engine.note("tuner", Kind.APPLIED, f"online: reopened at {why}")
        shared = [g for g in self.space.groups if g.phase == LOADER or g.revisit_after_loader]
        cut_short = {again, *(plugin for plugin, _config in self._offers)}
        left = [g for g in self.space.groups if g.plugin in cut_short and g not in shared]
        self._groups = deque(shared + left + [g for g in self._groups
                                              if g not in shared and g not in left])
        self._offers = []
        self._losers.clear()
        self.phase = "compare"
