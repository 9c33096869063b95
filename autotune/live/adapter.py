"""Changes during a run, at epoch boundaries: a new share of the machine,
or one speed setting tried for an epoch and kept only when not slower.

:class:`LiveAdapter` is called at the start of each epoch (the ``daemon``
plugin calls it for a job that shares the machine). It does at most one of
these per boundary, so each change is measured against the epoch before:

1. a change tried last epoch is judged: kept when that epoch ran at least
   ``1 - SLOWER_MARGIN`` times the samples/s of the epoch before it,
   otherwise reverted and never proposed again;
2. a new share from the daemon is taken (threads, worker cap, cpus: each
   plugin sizes its own settings, source ``daemon``); a share with fewer
   threads than are running is taken at once, after the next optimizer
   step (:meth:`LiveAdapter.at_step`), since running beside a job that has
   just arrived oversubscribes the cores;
3. otherwise the plugins' ``autotune_live_candidate`` proposals are asked
   and the first one not refused is tried for one epoch -- unless online
   tuning runs in the engine: then it tries settings, in paired chunks,
   and this adapter only takes shares, telling the tuner of each
   (``share_arrived``, :mod:`autotune.tuner.online_hold`), which searches
   the loader and thread settings again within it.

Only speed knobs change live: a proposal touching a key whose knob changes
the numerics or what is trained is refused. The first epoch (warm-up,
compilation, workers starting) is never a baseline and never reported to
the daemon, nor is an epoch during which a new share arrived (it ran beside
a job that had just come, with more threads than its share). Every change is a
:class:`LiveChange` in :attr:`LiveAdapter.changes` and an event in the
engine's report; the epoch records (``History``) show the threads and
loader workers each epoch ran with.

The engine drives its adapters (:class:`~autotune.engine.step.LiveHook`);
which it has is up to whoever builds it: by default the plugins'
(``autotune_live_adapter``), while a tuner's trial is built with none
(``Engine(live=())``), so what it measures runs as planned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from autotune.plan.knobs import Effect
from autotune.plan.plan import Source
from autotune.plan.report import Kind
from autotune.plan.resources import Share
from autotune.plugin.manager import share_plan

if TYPE_CHECKING:  # pragma: no cover
    from autotune.engine.engine import Engine
    from autotune.engine.history import EpochMetrics

log = logging.getLogger("autotune.live.adapter")

#: A tried change is reverted when its epoch is this much slower than the
#: epoch before it (a change within the margin is kept: no worse).
SLOWER_MARGIN = 0.05

#: The first epoch this adapter may change anything before: the epoch
#: before a change is its baseline, and epoch 1 includes warm-up.
FIRST_CHANGE_EPOCH = 3


@dataclass(frozen=True)
class LiveChange:
    """One change made at an epoch boundary."""

    epoch: int
    plugin: str
    values: dict[str, Any]
    #: "share" (from the daemon), "trying", "kept" or "reverted".
    outcome: str
    reason: str


@dataclass
class _Trial:
    plugin: str
    before: dict[str, Any]
    after: dict[str, Any]
    baseline: float
    epoch: int


class LiveAdapter:
    """Live changes for one engine; ``shares()`` says ``(generation, Share)``
    of the daemon's latest share (``(0, None)`` without one)."""

    def __init__(self, engine: "Engine", shares: Callable[[], tuple[int, Share | None]],
                 observe: Callable[["EpochMetrics"], None] = lambda metrics: None,
                 owner: str = "live") -> None:
        self.engine = engine
        self.shares = shares
        self.observe = observe
        self.owner = owner
        self.changes: list[LiveChange] = []
        # The share the plan was made with counts as not yet taken: the first
        # boundary takes the latest one (a no-op when it is the same).
        self._generation = 0
        self._generation_at_start = 0
        self._clean = False
        self._trial: _Trial | None = None
        self._refused: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def at_epoch_start(self, epoch: int) -> None:
        engine = self.engine
        generation, share = self.shares()
        if engine.history:
            last = engine.history[-1]
            # An epoch measures its share only if it ran under the latest share
            # from start to end: one that overlapped a job's arrival ran beside
            # it with more threads than its share and would mislead the daemon.
            if self._clean and generation == self._generation_at_start:
                self.observe(last)
            self._change(epoch, last, generation, share)
        self._generation_at_start = self.shares()[0]
        self._clean = self._generation == self._generation_at_start

    def at_step(self) -> None:
        """After an optimizer step: a share with fewer threads than are running
        (a job arrived) is taken at once -- oversubscribed cores slow every
        job -- while more cores wait for the epoch boundary."""
        generation, share = self.shares()
        if generation == self._generation or share is None or share.threads is None:
            return
        if share.threads < torch.get_num_threads():
            self._generation = generation
            self._take_share(share, len(self.engine.history) + 1)

    def _change(self, epoch: int, last: "EpochMetrics", generation: int,
                share: Share | None) -> None:
        if self._trial is not None:
            self._judge(self._trial, last, epoch)
            self._trial = None
            return
        if share is not None and generation != self._generation:
            self._generation = generation
            self._take_share(share, epoch)
            return
        if epoch >= FIRST_CHANGE_EPOCH and last.epoch >= 2 \
                and not self.engine.changes_mid_epoch:  # online tuning tries settings itself
            self._try_candidate(last, share, epoch)

    # -- the three kinds of change ---------------------------------------------------
    def _judge(self, trial: _Trial, last: "EpochMetrics", epoch: int) -> None:
        engine = self.engine
        rate = last.samples_per_s
        verdict = (f"{rate:.1f} samples/s with it in epoch {last.epoch} vs {trial.baseline:.1f} "
                   f"in epoch {trial.epoch - 1} before it")
        if rate < trial.baseline * (1 - SLOWER_MARGIN):
            self._refused.add(_key(trial.plugin, trial.after))
            reason = f"reverted at epoch {epoch}: {_show(trial.after)} was slower, {verdict}"
            if not engine.change_live(trial.plugin, trial.before, Source.MEASURED, reason):
                engine.note(trial.plugin, Kind.WARNING, f"could not revert {_show(trial.after)}")
            self._record(epoch, trial.plugin, trial.before, "reverted", reason, Kind.FALLBACK)
        else:
            reason = f"kept at epoch {epoch}: {verdict}"
            engine.revise_plan(trial.plugin, trial.after, reason)
            self._record(epoch, trial.plugin, trial.after, "kept", reason, Kind.APPLIED)

    def _take_share(self, share: Share, epoch: int) -> None:
        engine = self.engine
        revised = share_plan(engine.plan, share, context=engine.context, manager=engine.manager,
                             source=Source.DAEMON)
        taken: dict[str, dict[str, Any]] = {}
        for plugin in revised.plugins():
            new = revised.values(plugin)
            changed = {k: v for k, v in new.items() if engine.plan.values(plugin).get(k) != v}
            if not changed:
                continue
            if engine.change_live(plugin, changed, Source.DAEMON, share.reason):
                taken[plugin] = changed
                self._record(epoch, plugin, changed, "share", share.reason, Kind.APPLIED)
            else:
                engine.note(plugin, Kind.SKIPPED, f"cannot take {_show(changed)} during a run; "
                            "it applies from the next apply()")
        # Online tuning measures within the share from now on (one mechanism:
        # this adapter takes shares, the tuner tries settings).
        for adapter in engine.live_adapters:
            if (arrived := getattr(adapter, "share_arrived", None)) is not None:
                arrived(share, taken)

    def _try_candidate(self, last: "EpochMetrics", share: Share | None, epoch: int) -> None:
        engine = self.engine
        for plugin, values in engine.live_candidates(last, share):
            if _key(plugin, values) in self._refused:
                continue
            not_speed = [k for k in values
                         if (s := engine.plan.setting(plugin, k)) is None
                         or s.effect is not Effect.SPEED]
            if not_speed:
                self._refused.add(_key(plugin, values))
                engine.note(plugin, Kind.WARNING, f"live change of {', '.join(not_speed)} "
                            "refused: only speed settings change during a run")
                continue
            before = {k: engine.plan.get(plugin, k) for k in values}
            if before == values:
                continue
            reason = (f"trying at epoch {epoch}: epoch {last.epoch} ran at "
                      f"{last.samples_per_s:.1f} samples/s, {last.data_wait_fraction:.0%} "
                      "waiting for data")
            if engine.change_live(plugin, values, Source.MEASURED, reason):
                self._trial = _Trial(plugin, before, dict(values), last.samples_per_s, epoch)
                self._record(epoch, plugin, values, "trying", reason, Kind.APPLIED)
                return
            self._refused.add(_key(plugin, values))

    def _record(self, epoch: int, plugin: str, values: dict[str, Any], outcome: str,
                reason: str, kind: Kind) -> None:
        change = LiveChange(epoch, plugin, dict(values), outcome, reason)
        self.changes.append(change)
        self.engine.note(plugin, kind, f"{outcome} {_show(values)} ({reason})")
        log.info("live: epoch %d: %s %s.%s", epoch, outcome, plugin, _show(values))


def _key(plugin: str, values: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return plugin, tuple(sorted((k, repr(v)) for k, v in values.items()))


def _show(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())
