"""The search: which configurations to measure, in which order, and which wins.

Strategy (coordinate descent over plugin groups, ordered by priors):

1. **Baseline** -- PyTorch defaults -- is always measured first. It is the
   reference every speed-up is quoted against.
2. The **planned** configuration (rules + profile) is measured next; it
   replaces the baseline as the incumbent only if it beats it.
3. **Step groups**, highest prior first (on a bf16 CPU: mixed_precision,
   channels_last, compile, threads; on CUDA: mixed_precision, compile,
   channels_last, ...). For each group the plugin is asked for candidates
   *given the incumbent* (``autotune_candidates``); candidates the hardware
   cannot run well are pruned; every remaining one is measured on top of
   the incumbent; the fastest is adopted only if it beats the incumbent
   beyond noise (see :func:`beats`), after re-measuring the incumbent
   (``recheck``) so a quiet moment on a shared machine cannot crown a
   candidate.
4. **Loader groups** (dataloader workers, pinning, prefetch) are measured
   end to end with the chosen step settings, then the threads group is
   revisited if the number of loader workers changed (they share cores).
5. **Another pass** over all groups when the last one adopted something
   (at most :data:`MAX_PASSES`): settings interact (channels_last may pay
   only once the model is compiled). Values that were clearly slower or
   failed are not retried; configurations already measured are reused.
6. The **budget** caps the search: no trial starts after it has run out,
   nor one whose estimated cost (from the trials so far; compilation
   estimated separately) exceeds what is left. Ctrl-C keeps the best
   configuration measured so far.

Because each adoption beats the incumbent by more than the noise, and the
incumbent starts at the baseline, the winner is never slower than PyTorch
defaults as measured.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from autotune.tuner.candidates import (LOADER, Config, Group, order_groups, prune_reason,
                                       restrict)
from autotune.tuner.report import Trial
from autotune.tuner.runner import TrialRunner
from autotune.tuner.trial import TrialOptions

log = logging.getLogger("autotune.tuner")

#: Coordinate descent stops after this many passes over the groups.
MAX_PASSES = 3
#: A value measured this much slower than the incumbent (or twice the noise
#: margin, if more) is not retried in later passes.
LOSER_MARGIN = 0.10


@dataclass(frozen=True)
class SearchOptions:
    #: A candidate must beat the incumbent's median by more than this
    #: fraction, and by more than either trial's own spread.
    min_gain: float = 0.02
    #: Re-measure the incumbent before adopting a candidate.
    recheck: bool = True
    #: Search only these plugins' candidates (None: every plugin with a prior).
    only: tuple[str, ...] | None = None
    trial: TrialOptions = field(default_factory=TrialOptions)


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


class Search:
    """Coordinate descent as described in the module docstring."""

    def __init__(self, runner: TrialRunner, options: SearchOptions) -> None:
        self.runner = runner
        self.options = options
        self.bench = runner.bench
        self.pruned: list[str] = []
        self.incumbent_config: Config = runner.baseline
        self.incumbent: Trial | None = None
        self.baseline_trial: Trial | None = None
        #: The group being measured: (config, trial) pairs and its role, so
        #: Ctrl-C in the middle of a group can still settle what was measured.
        self._pending: list[tuple[Config, Trial]] = []
        self._pending_role = ""
        self._pass = 1
        self._adoptions = 0
        #: (plugin, values) measured clearly slower than the incumbent, or
        #: failed: not retried in later passes.
        self._losers: set[tuple[str, str]] = set()

    # -- steps -----------------------------------------------------------------
    def run_baseline(self) -> Trial:
        trial = self.runner.measure(self.runner.baseline, "baseline")
        self.baseline_trial = trial
        if trial.ok:
            self.incumbent = self.runner.set_verdict(trial, "reference (PyTorch defaults)")
        return trial

    def try_planned(self, planned: Config) -> None:
        if planned.key() == self.runner.baseline.key() or self.incumbent is None:
            return
        if not self.runner.affordable(planned):
            self.runner.skip(planned, "planned", "budget left is too short for this trial")
            self.runner.budget_exhausted = True
            return
        self._pending_role = "planned"
        trial = self.runner.measure(planned, "planned")
        self._pending = [(planned, trial)]
        self._decide(self._pending, "planned")
        self._pending = []

    def run_groups(self, groups: list[Group]) -> None:
        """Passes over the groups until one adopts nothing (at most
        :data:`MAX_PASSES`): a setting that was within noise on its own may
        pay on top of a later winner (channels_last once compiled). Later
        passes skip values that were clearly slower or failed."""
        for number in range(1, MAX_PASSES + 1):
            self._pass = number
            adopted = self._adoptions
            workers_before = self._workers()
            suffix = "" if number == 1 else f" (pass {number})"
            for group in groups:
                self._search_group(group, role=group.plugin + suffix)
            threads = [g for g in groups if g.plugin == "threads"]
            if threads and self._workers() != workers_before:
                self._pass, saved = 1, self._pass  # worker counts changed: retry them all
                self._search_group(threads[0], role="threads (after loader)")
                self._pass = saved
            if self._adoptions == adopted or self.runner.remaining() <= 0:
                break

    # -- internals ---------------------------------------------------------------
    def _workers(self) -> Any:
        return self.incumbent_config.values.get("dataloader", {}).get("num_workers")

    def _candidates(self, group: Group) -> list[Config]:
        b = self.bench
        plan = self.incumbent_config.to_plan(b.plan, "incumbent")
        offered = b.manager.candidates(b.context, plan).get(group.plugin, [])
        hardware = b.context.hardware
        configs: list[Config] = []
        current = self.incumbent_config.values.get(group.plugin, {})
        for alternative in offered:
            values = restrict(b.plan, group.plugin, alternative)
            if not values:
                continue
            why = prune_reason(group.plugin, {**current, **values}, hardware, b.device.type)
            if why:
                self.pruned.append(f"{group.plugin} {values}: {why}")
                continue
            config = self.incumbent_config.merged(group.plugin, values)
            if config.key() == self.incumbent_config.key():
                continue
            if self._pass > 1 and self._loser_key(group.plugin, config) in self._losers:
                continue
            if all(c.key() != config.key() for c in configs):
                configs.append(config)
        return configs

    def _search_group(self, group: Group, role: str | None = None) -> None:
        if self.incumbent is None:
            return
        role = role or group.plugin
        measured: list[tuple[Config, Trial]] = []
        self._pending, self._pending_role = measured, role
        for config in self._candidates(group):
            known = self.runner.seen(config)
            if known is not None:
                measured.append((config, known))
                continue
            if not self.runner.affordable(config):
                self.runner.budget_exhausted = True
                self.runner.skip(config, role, "budget left is too short for this trial"
                                 if self.runner.remaining() > 0 else "budget ran out")
                continue
            measured.append((config, self.runner.measure(config, role)))
        incumbent = self.incumbent
        self._decide(measured, role)
        self._pending = []
        for config, trial in measured:
            clearly = max(LOSER_MARGIN, 2 * margin(trial, incumbent, self.options.min_gain))
            if not trial.ok or (trial.samples_per_s is not None and incumbent.samples_per_s
                                and trial.samples_per_s < incumbent.samples_per_s * (1 - clearly)):
                self._losers.add(self._loser_key(group.plugin, config))

    @staticmethod
    def _loser_key(plugin: str, config: Config) -> tuple[str, str]:
        return plugin, json.dumps(config.values.get(plugin, {}), sort_keys=True, default=str)

    def settle_interrupted(self) -> None:
        """After Ctrl-C: adopt the best of the current group's finished
        trials if it beat the incumbent (no recheck: the user is waiting)."""
        pending, self._pending = self._pending, []
        if pending and self.incumbent is not None:
            self._decide(pending, self._pending_role, recheck=False)

    def _decide(self, measured: list[tuple[Config, Trial]], role: str,
                recheck: bool = True) -> None:
        """Adopt the fastest of ``measured`` if it beats the incumbent beyond
        noise (confirmed against a fresh measurement of the incumbent)."""
        assert self.incumbent is not None
        gain = self.options.min_gain
        ok = [(c, t) for c, t in measured if t.ok]
        for config, trial in measured:
            if not trial.ok:
                continue
            if not beats(trial, self.incumbent, gain):
                self._kept(trial, self.incumbent)
        contenders = [(c, t) for c, t in ok if beats(t, self.incumbent, gain)]
        if not contenders:
            return
        config, best = max(contenders, key=lambda ct: ct[1].samples_per_s or 0.0)
        for other_config, other in contenders:
            if other.index != best.index:
                self.runner.set_verdict(other, f"beat #{self.incumbent.index}, but #{best.index} "
                                        "was faster")
        reference, needed = self.incumbent, gain
        if recheck and self.options.recheck and self.runner.affordable(self.incumbent_config):
            again = self.runner.measure(self.incumbent_config, "recheck", force=True)
            # The better of the two incumbent measurements: a candidate must
            # beat the incumbent at its best, which protects the baseline
            # guarantee when the machine's load changes between trials.
            if again.ok and (again.samples_per_s or 0) > (reference.samples_per_s or 0):
                reference = again
            self.runner.set_verdict(again, f"re-measured #{self.incumbent.index} before "
                                    f"adopting #{best.index}")
        elif recheck and self.options.recheck:
            needed = 2 * gain  # no time left to re-measure: ask for a wider margin instead
        if beats(best, reference, needed):
            self.runner.set_verdict(best, f"adopted: beat #{reference.index} by "
                                    f"{best.samples_per_s / reference.samples_per_s - 1:+.1%}")
            self.incumbent, self.incumbent_config = best, config
            self._adoptions += 1
        else:
            self._kept(best, reference)

    def _kept(self, trial: Trial, incumbent: Trial) -> None:
        if trial.samples_per_s is None or incumbent.samples_per_s is None:
            return
        change = trial.samples_per_s / incumbent.samples_per_s - 1
        noise = margin(trial, incumbent, self.options.min_gain)
        self.runner.set_verdict(trial, f"kept #{incumbent.index}: {change:+.1%} is within "
                                f"the {noise:.1%} noise margin" if change > 0 else
                                f"kept #{incumbent.index}: {change:+.1%}")

    def groups(self) -> list[Group]:
        b = self.bench
        return search_groups(b.plan, b.context, b.device.type, self.options.only)


def search_groups(plan: Any, context: Any, device_type: str,
                  only: tuple[str, ...] | None = None) -> list[Group]:
    """The plugin groups to search, in order (see :func:`order_groups`)."""
    plugins = [p for p in plan.plugins() if only is None or p in only]
    groups = order_groups(plugins, context.hardware, context.workload, device_type)
    log.info("search order: %s", ", ".join(f"{g.plugin} ({g.prior:g}: {g.why})" for g in groups))
    return groups


def step_then_loader(groups: list[Group]) -> list[Group]:
    return [g for g in groups if g.phase != LOADER] + [g for g in groups if g.phase == LOADER]
