"""The search: which configurations to measure, in which order, and which wins.

Strategy (coordinate descent over plugin groups, ordered by priors):

1. **Baseline** -- PyTorch defaults -- is measured first. It is the
   reference every speed-up is quoted against.
2. The **planned** configuration (rules + profile) is measured next; it
   replaces the baseline as the incumbent only if it beats it.
3. **Step groups**, highest prior first. For each group the plugin is asked
   for candidates *given the incumbent* (``autotune_candidates``);
   candidates the hardware cannot run well are pruned; every remaining one
   is measured on top of the incumbent; the fastest is adopted only if it
   beats the incumbent beyond noise; a borderline win (within twice the
   margin) first re-measures the incumbent (``recheck``) when the budget
   allows. The rules are :mod:`autotune.tuner.adoption`'s.
4. **Loader groups** are measured end to end with the chosen step
   settings, then the groups whose knobs ask for it
   (``Knob.revisit_after_loader``, for example compute threads, which share
   the cores with loader workers) are searched again if the loader settings
   the search adopted changed.
5. **Another pass** over all groups when the last one adopted something
   (at most :data:`MAX_PASSES`). Values that were clearly slower or failed
   are not retried; configurations already measured are reused.
6. **Confirmation** (:mod:`autotune.tuner.confirm`): before a winner ships,
   it is measured against the baseline in interleaved pairs (A/B/A/B); it
   ships only if it wins beyond the spread those pairs show, else PyTorch
   defaults ship and the report says why.

**The budget** holds for all of it: time for one confirmation pair is kept
back while searching; no trial starts whose estimated cost does not fit
what is left; a trial that overruns is stopped (see
:mod:`autotune.tuner.budget`); once the budget is spent the search stops
and every candidate left is recorded, once, as skipped. A search cut short
(budget, Ctrl-C) is **not final**: its
:class:`~autotune.tuner.records.SearchState` -- the incumbent, the steps
finished, the losers -- is cached, and the next call continues from there.
"""

from __future__ import annotations

import logging
from typing import Any

from autotune.tuner.adoption import (adopted_verdict, beats, borderline, clear_loser, kept_verdict,
                                     loser_key)
from autotune.tuner.candidates import LOADER, Config, Group, offered, order_groups
from autotune.tuner.confirm import confirm
from autotune.tuner.options import SearchOptions
from autotune.tuner.records import Confirmation, SearchState, Status, Trial
from autotune.tuner.runner import TrialRunner

log = logging.getLogger("autotune.tuner")

#: Coordinate descent stops after this many passes over the groups.
MAX_PASSES = 3


class Search:
    """Coordinate descent as described in the module docstring."""

    def __init__(self, runner: TrialRunner, options: SearchOptions,
                 resume: SearchState | None = None) -> None:
        self.runner = runner
        self.options = options
        self.bench = runner.bench
        self.pruned: list[str] = []
        self.incumbent_config: Config = runner.baseline
        self.incumbent: Trial | None = None
        self.baseline_trial: Trial | None = None
        self.confirmation: Confirmation | None = None
        self.resumed = resume
        self._done: list[str] = list(resume.done) if resume else []
        #: (plugin, values) measured clearly slower than the incumbent, or
        #: failed: not retried in later passes.
        self._losers: set[tuple[str, str]] = set(resume.losers) if resume else set()
        self._reused: set[int] = set()  # trials that competed again under another role
        #: The group being measured: (config, trial) pairs and its role, so
        #: Ctrl-C in the middle of a group can still settle what was measured.
        self._pending: list[tuple[Config, Trial]] = []
        self._pending_role = ""
        self._pass = 1
        self._adoptions = 0
        #: True once the budget stopped the search; nothing more is tried.
        self.out_of_budget = False
        #: A candidate was left untried (or stopped) for the budget: the
        #: search is partial, and its group is not marked done.
        self.budget_skipped = False
        self._skipped_in_step = False

    # -- what is left ------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Every step ran and the winner was confirmed (or nothing beat the
        baseline): a result to cache as final."""
        return (self.baseline_trial is not None and self.baseline_trial.ok
                and not self.out_of_budget and not self.budget_skipped
                and not self.runner.budget_exhausted
                and (self.incumbent_config.key() == self.runner.baseline.key()
                     or (self.confirmation is not None and self.confirmation.decided)))

    def state(self) -> SearchState:
        earlier = self.resumed.earlier_trials if self.resumed else 0
        measured = sum(1 for t in self.runner.trials if t.status is not Status.SKIPPED)
        return SearchState(self.incumbent_config.to_dict(), tuple(self._done),
                           tuple(sorted(self._losers)), earlier + measured)

    def confirm_reserve(self, config: Config) -> float:
        """Seconds kept back before measuring ``config`` so that the winner
        can be confirmed: one short baseline trial (should ``config`` win, its
        own trial is the last one and A/B/A needs only that), plus one of the
        incumbent when something else already won (should ``config`` lose, a
        fresh pair is needed). A compiled winner's code is still cached then."""
        short = self.options.trial.shorter()
        reserve = self.runner.estimate(self.runner.baseline, short)
        if self.incumbent_config.key() != self.runner.baseline.key():
            reserve += self.runner.estimate(self.incumbent_config, short, cached=True)
        return reserve

    def _affordable(self, config: Config) -> bool:
        return self.runner.affordable(config, reserve=self.confirm_reserve(config))

    def _skip_for_budget(self, config: Config, role: str) -> None:
        """Leave ``config`` untried. The search goes on with cheaper
        candidates unless not even an eager trial fits any more."""
        self.budget_skipped = self._skipped_in_step = True
        self.runner.skip(config, role, "budget left is too short for this trial (time is kept "
                         "to confirm the winner)" if self.runner.remaining() > 0
                         else "budget ran out")
        if not self._affordable(self.runner.baseline):
            self.out_of_budget = True

    # -- steps -----------------------------------------------------------------
    def run_baseline(self) -> Trial:
        trial = self.runner.measure(self.runner.baseline, "baseline")
        self.baseline_trial = trial
        if trial.ok:
            self.incumbent = self.runner.set_verdict(trial, "reference (PyTorch defaults)")
        else:
            self._stopped(trial)
        return trial

    def resume_incumbent(self) -> None:
        """A continued search starts from the incumbent an earlier call
        adopted, measured again now: it must still beat the baseline."""
        if self.resumed is None or self.incumbent is None:
            return
        config = Config(self.resumed.incumbent)
        if config.key() == self.runner.baseline.key() or not config.values:
            return
        if not self._affordable(config):
            self._skip_for_budget(config, "resumed")
            return
        trial = self.runner.measure(config, "resumed")
        self._stopped(trial)
        self._decide([(config, trial)], "resumed")

    def try_planned(self, planned: Config) -> None:
        if (planned.key() == self.runner.baseline.key() or self.incumbent is None
                or "planned" in self._done or self.out_of_budget):
            return
        if not self._affordable(planned):
            self._skip_for_budget(planned, "planned")
            return
        self._pending_role = "planned"
        trial = self.runner.measure(planned, "planned")
        if self._stopped(trial):
            return
        self._pending = [(planned, trial)]
        self._decide(self._pending, "planned")
        self._pending = []
        self._finish("planned")

    def run_groups(self, groups: list[Group]) -> None:
        """Passes over the groups until one adopts nothing (at most
        :data:`MAX_PASSES`): a setting that was within noise on its own may
        pay on top of a later winner (for example a memory format once the
        model is compiled). Later passes skip values that were clearly slower
        or failed. Groups whose knobs ask for it are searched again after a
        pass that changed the loader-phase settings."""
        for number in range(1, MAX_PASSES + 1):
            self._pass = number
            adopted = self._adoptions
            loader_before = self._loader_values(groups)
            suffix = "" if number == 1 else f" (pass {number})"
            for group in groups:
                self._step(group, f"{group.plugin}@{number}", group.plugin + suffix)
            if self._loader_values(groups) != loader_before:
                for group in groups:
                    if not group.revisit_after_loader or group.phase == LOADER:
                        continue
                    self._pass, saved = 1, self._pass  # the loader changed: retry them all
                    self._step(group, f"{group.plugin}-after-loader@{number}",
                               f"{group.plugin} (after loader)")
                    self._pass = saved
            if self.out_of_budget or (self._adoptions == adopted
                                      and not self._resumed_pass(number + 1)):
                break

    def _resumed_pass(self, number: int) -> bool:
        """A continued search finishes a pass an earlier call had started."""
        return any(step.endswith(f"@{number}") for step in self._done)

    def _stopped(self, trial: Trial) -> bool:
        """A trial the budget stopped ends the search (and leaves it partial)."""
        if trial.status is Status.STOPPED:
            self.out_of_budget = self.budget_skipped = True
            return True
        return False

    def _step(self, group: Group, name: str, role: str) -> None:
        if name in self._done or self.out_of_budget:
            return
        self._skipped_in_step = False
        self._search_group(group, role)
        if not self.out_of_budget and not self._skipped_in_step:
            self._finish(name)

    def _finish(self, name: str) -> None:
        if name not in self._done:
            self._done.append(name)

    def run_confirmation(self) -> None:
        """Confirm the incumbent against the baseline (see module docstring)."""
        if self.incumbent is None or self.baseline_trial is None:
            return
        if self.incumbent_config.key() == self.runner.baseline.key():
            return
        measured = [t for t in self.runner.trials if t.status is not Status.SKIPPED]
        last = measured[-1] if measured and measured[-1].index == self.incumbent.index else None
        self.confirmation = confirm(self.runner, self.incumbent_config,
                                    pairs=self.options.confirm_pairs,
                                    min_gain=self.options.min_gain, last=last)
        if not self.confirmation.decided:
            self.out_of_budget = True
        if not self.confirmation.shipped:
            log.warning("the search's winner was not confirmed (%s): PyTorch defaults ship",
                        self.confirmation.verdict)
            self.runner.set_verdict(self.incumbent, self.confirmation.verdict)
            self.incumbent_config = self.runner.baseline
            self.incumbent = self.baseline_trial

    # -- internals ---------------------------------------------------------------
    def _loader_values(self, groups: list[Group]) -> dict[str, Any]:
        """The incumbent's values of every loader-phase group."""
        return {g.plugin: dict(self.incumbent_config.values.get(g.plugin, {}))
                for g in groups if g.phase == LOADER}

    def _candidates(self, group: Group) -> list[Config]:
        b = self.bench
        return offered(b.manager, b.context, b.plan, b.knobs, b.device.type, group.plugin,
                       self.incumbent_config, pruned=self.pruned,
                       skip=lambda config: self._pass > 1
                       and loser_key(group.plugin, config) in self._losers)

    def _search_group(self, group: Group, role: str) -> None:
        if self.incumbent is None:
            return
        measured: list[tuple[Config, Trial]] = []
        self._pending, self._pending_role = measured, role
        for config in self._candidates(group):
            known = self.runner.seen(config)
            if known is not None:
                # Measured earlier in another role (the baseline, say): it
                # competes again, but keeps the verdict it was given then.
                self._reused.add(known.index)
                measured.append((config, known))
                continue
            if self.out_of_budget or not self._affordable(config):
                self._skip_for_budget(config, role)
                continue
            trial = self.runner.measure(config, role)
            if self._stopped(trial):
                continue
            measured.append((config, trial))
        incumbent = self.incumbent
        self._decide(measured, role)
        self._pending = []
        for config, trial in measured:
            if clear_loser(trial, incumbent, self.options.min_gain):
                self._losers.add(loser_key(group.plugin, config))

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
        for config, trial in ok:
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
        # Re-measure the incumbent only when the win is borderline: the time
        # is better spent on candidates and the confirmation.
        wants_recheck = recheck and self.options.recheck and borderline(best, self.incumbent, gain)
        if wants_recheck and self.runner.affordable(self.incumbent_config,
                                                    reserve=self.confirm_reserve(config)):
            again = self.runner.measure(self.incumbent_config, "recheck", force=True,
                                        record=False)
            # The better of the two incumbent measurements: a candidate must
            # beat the incumbent at its best, which protects the baseline
            # guarantee when the machine's load changes between trials.
            if again.ok and (again.samples_per_s or 0) > (reference.samples_per_s or 0):
                reference = again
            self._stopped(again)
            self.runner.set_verdict(again, f"re-measured #{self.incumbent.index} before "
                                    f"adopting #{best.index}")
        elif wants_recheck:
            needed = 2 * gain  # no time left to re-measure: ask for a wider margin instead
        if beats(best, reference, needed):
            self.runner.set_verdict(best, adopted_verdict(best, reference))
            self.incumbent, self.incumbent_config = best, config
            self._adoptions += 1
        else:
            self._kept(best, reference)

    def _kept(self, trial: Trial, incumbent: Trial) -> None:
        verdict = kept_verdict(trial, incumbent, self.options.min_gain)
        if verdict is not None and trial.index not in self._reused:
            self.runner.set_verdict(trial, verdict)

    def groups(self) -> list[Group]:
        b = self.bench
        return search_groups(b.plan, b.context, b.device.type, b.knobs, self.options.only,
                             manager=b.manager)


def search_groups(plan: Any, context: Any, device_type: str, knobs: Any,
                  only: tuple[str, ...] | None = None, *, manager: Any) -> list[Group]:
    """The plugin groups to search, in order (see :func:`order_groups`), with
    the priors the plugins declare (``autotune_search_prior``)."""
    plugins = [p for p in plan.plugins() if only is None or p in only]
    priors = manager.search_priors(context, device_type, plugins)
    # A plugin whose answer was malformed has failed: it is not searched.
    plugins = [p for p in plugins if p in manager.drop_failed(plan).settings]
    groups = order_groups(plugins, priors, knobs)
    log.info("search order: %s", ", ".join(f"{g.plugin} ({g.prior:g}: {g.why})" for g in groups))
    return groups

