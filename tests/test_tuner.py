"""Measured tuning: the baseline guarantee, confirmation, disqualification,
Ctrl-C, the budget and the cache, with real training steps through the engine.

Timing is deterministic: a test plugin (``tuner_helpers.Costly``) advances a
fake clock by a fixed amount at every forward, and the trials and the
budget read that clock, so no assertion depends on how busy the machine is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import autotune
from autotune import hookimpl
from autotune.plugin.context import Workload
from autotune.plan.knobs import LOADER, Knob
from autotune.plan.plan import Setting, Source
from autotune.planner import make_plan
from autotune.testing import BUILTIN_PLUGINS, plugin_manager
from autotune.tuner import SearchOptions, Status, TrialOptions, tune
from autotune.tuner.budget import Budget
from autotune.tuner.cache import cache_dir
from tuner_helpers import COSTS, Costly, FakeClock, fake_options, trial_for, tune_fake, workload


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _cache_files() -> list[Path]:
    root = cache_dir() / "tuning"
    return sorted(p for p in root.iterdir() if p.suffix == ".json") if root.exists() else []


# -- the baseline guarantee ---------------------------------------------------------


def test_a_slower_candidate_never_wins(clock: FakeClock) -> None:
    knob = Costly(clock, default="plain", alternatives=("slow",))
    result = tune_fake(knob, clock=clock)
    report = result.report
    slow = trial_for(report, "slow")
    assert report.baseline.role == "baseline" and report.baseline.index == 0
    assert slow.ok and slow.samples_per_s == pytest.approx(report.baseline.samples_per_s / 3)
    assert report.winner_index == report.baseline_index and report.confirmation is None
    assert result.plan.setting("knob", "mode") == Setting(
        "plain", Source.MEASURED, "measured: no candidate beat PyTorch defaults beyond noise")
    assert report.complete and "slow" in knob.engines  # it really ran


def test_a_faster_candidate_is_confirmed_then_enters_the_plan(clock: FakeClock) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain",))
    result = tune_fake(knob, clock=clock)
    report = result.report
    plain = trial_for(report, "plain", role="knob")
    assert report.winner_index == plain.index and report.speedup == pytest.approx(3.0)
    setting = result.plan.setting("knob", "mode")
    assert setting.value == "plain" and setting.source is Source.MEASURED
    assert "3.00x PyTorch defaults, confirmed back to back" in setting.reason
    roles = [t.role for t in report.trials]
    assert "recheck" not in roles  # a clear win: no second look before the confirmation
    # A B A B: the baseline and the winner measured again, interleaved.
    assert [r for r in roles if r.startswith("confirm")] == ["confirm A1", "confirm B1",
                                                             "confirm A2", "confirm B2"]
    confirmation = report.confirmation
    assert confirmation.shipped and confirmation.gain == pytest.approx(3.0)
    assert len(confirmation.ratios) == 3 and report.complete
    assert report.break_even_steps is not None and report.break_even_steps > 0
    data = json.loads(report.to_json())
    assert data["winner_settings"] == {"knob": {"mode": "plain"}}
    assert data["confirmation"]["shipped"] is True


def test_a_trial_met_again_in_a_later_pass_keeps_its_first_verdict(clock: FakeClock) -> None:
    # Pass 2 offers "slow" on top of the winner "plain": that is the baseline
    # itself, so its measurement is reused -- and stays the reference.
    knob = Costly(clock, default="slow", alternatives=("plain", "slow"))
    report = tune_fake(knob, clock=clock).report
    assert report.winner_index == trial_for(report, "plain", role="knob").index
    assert report.baseline.verdict == "reference (PyTorch defaults)"


def test_a_borderline_win_re_measures_the_incumbent_first(clock: FakeClock) -> None:
    # 2.5 % faster: beyond the 2 % margin, within twice it.
    knob = Costly(clock, default="plain", alternatives=("close",),
                  schedule={"close": lambda nth: COSTS["plain"] / 1.025})
    report = tune_fake(knob, clock=clock).report
    roles = [t.role for t in report.trials]
    assert roles.index("recheck") == roles.index("knob") + 1
    assert trial_for(report, "close").verdict.startswith("adopted: beat #")
    assert report.confirmation.shipped and report.confirmation.gain == pytest.approx(1.025)


def test_a_tight_budget_confirms_with_the_winners_own_trial_between_two_baselines(clock) -> None:
    """Room for baseline, one candidate and one short trial, not for a fresh
    pair: the confirmation is A B A -- the search's baseline, the winner's
    trial, a fresh baseline -- and the budget holds."""
    knob = Costly(clock, default="plain", alternatives=("fast",))
    report = tune_fake(knob, clock=clock, budget_s=0.22).report
    roles = [t.role for t in report.trials if t.status is not Status.SKIPPED]
    assert roles == ["baseline", "knob", "confirm A1"]
    confirmation = report.confirmation
    assert confirmation.shipped and confirmation.ratios == pytest.approx((2.0, 2.0))
    assert confirmation.trial_indices == (0, 1, 2)
    assert report.search_s <= 0.22


def test_a_candidate_slower_when_confirmed_never_ships(clock: FakeClock) -> None:
    # Fast in its search trial (0.5x the baseline's step time), then 5x slower
    # than the baseline every time after: a quiet moment that crowned it.
    knob = Costly(clock, default="plain", alternatives=("fast",),
                  schedule={"fast": lambda nth: COSTS["fast"] if nth == 1 else 0.05})
    result = tune_fake(knob, clock=clock)
    report = result.report
    fast = trial_for(report, "fast", role="knob")
    assert fast.ok and fast.speedup == pytest.approx(2.0)  # it won the search...
    assert not report.confirmation.shipped  # ...and lost back to back
    assert report.confirmation.gain == pytest.approx(0.2)
    assert report.confirmation.verdict.startswith("not confirmed: 0.20x")
    assert report.winner_index == report.baseline_index
    assert result.plan.get("knob", "mode") == "plain"
    assert "not confirmed" in result.plan.setting("knob", "mode").reason


def test_too_noisy_to_tell_ships_the_defaults_and_says_why(clock: FakeClock) -> None:
    costs = {1: COSTS["fast"], 2: 0.010 / 1.3, 3: 0.010 / 0.6}  # search, B1, B2
    knob = Costly(clock, default="plain", alternatives=("fast",),
                  schedule={"fast": lambda nth: costs.get(nth, COSTS["fast"])})
    report = tune_fake(knob, clock=clock,
                       options=fake_options(clock, recheck=False)).report
    # Confirmation B/A ratios 1.3, 1.3, 0.6: a median gain of 30% inside a
    # spread of +-35%.
    assert report.confirmation.ratios == pytest.approx((1.3, 1.3, 0.6))
    assert not report.confirmation.shipped
    assert report.confirmation.verdict.startswith("too noisy to tell: 1.30x")
    assert report.winner_index == report.baseline_index


def test_a_user_override_beats_the_measurement(clock: FakeClock) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain",))
    model, loader, optimizer = workload()
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob]),
                        overrides={"knob": {"mode": "slow"}})
    result = tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                  context=planned.context, manager=planned.manager, device="cpu",
                  budget=Budget(60, clock=clock), options=fake_options(clock), progress=False)
    assert result.plan.setting("knob", "mode").source is Source.OVERRIDE
    assert len(result.report.measured_trials()) == 1  # nothing left to search


# -- failures ---------------------------------------------------------------------


@pytest.mark.parametrize("failure, reason", [(torch.cuda.OutOfMemoryError, "out of memory"),
                                             (RuntimeError, "error")])
def test_a_failing_candidate_is_disqualified_with_a_reason(clock, failure, reason) -> None:
    knob = Costly(clock, alternatives=("broken",), schedule={"broken": lambda nth: failure})
    result = tune_fake(knob, clock=clock)
    failed = trial_for(result.report, "broken")
    assert failed.status is Status.DISQUALIFIED and reason in failed.reason
    assert result.report.winner_index == result.report.baseline_index


def test_a_non_finite_loss_disqualifies(clock: FakeClock) -> None:
    class NaN(Costly):
        @hookimpl
        def autotune_setup_engine(self, engine: Any, plan: Any) -> None:
            super().autotune_setup_engine(engine, plan)
            if plan.get(self.NAME, "mode") == "nan":
                handle = engine.module.register_forward_hook(lambda m, a, out: out * float("nan"))
                engine.on_close(handle.remove)

    result = tune_fake(NaN(clock, alternatives=("nan",)), clock=clock)
    assert "non-finite loss" in trial_for(result.report, "nan").reason


def test_a_failure_when_measured_again_for_noise_disqualifies(clock: FakeClock) -> None:
    # First measurement: alternating fast and slow steps (a spread far above
    # max_spread), so it is measured again; the second time it runs out of memory.
    def first(nth: int) -> Any:
        return (lambda call: 0.002 if call % 2 else 0.02) if nth == 1 else torch.cuda.OutOfMemoryError

    knob = Costly(clock, alternatives=("jumpy",), schedule={"jumpy": first})
    options = SearchOptions(trial=TrialOptions(warmup_steps=1, chunks=3, min_chunks=3,
                                               chunk_s=0.001, max_spread=0.25, retries=1,
                                               clock=clock))
    trial = trial_for(tune_fake(knob, clock=clock, options=options).report, "jumpy")
    assert trial.status is Status.DISQUALIFIED
    assert "out of memory" in trial.reason and "when measured again" in trial.reason


def test_compile_failure_disqualifies_the_compile_candidate() -> None:
    class DataDependent(nn.Module):
        """Fine eagerly; torch.compile(fullgraph=True) cannot trace the branch."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.linear(x)
            return y * 0 if y.sum().item() > 1e9 else y

    _, loader, _ = workload()
    model = DataDependent()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    others = [p for p in BUILTIN_PLUGINS if p != "compile"]
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager(disable=others),
                        overrides={"compile": {"fullgraph": True}})
    result = tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                  context=planned.context, manager=planned.manager, device="cpu",
                  options=SearchOptions(trial=TrialOptions(warmup_steps=2, chunks=3,
                                                           chunk_s=0.02)),
                  budget_s=None, progress=False)
    compiled = next(t for t in result.report.trials if t.changes.get("compile"))
    assert compiled.status is Status.DISQUALIFIED and "compile" in compiled.reason
    assert result.plan.get("compile", "mode") == "off"


# -- Ctrl-C -------------------------------------------------------------------------


def test_ctrl_c_ships_nothing_unconfirmed_restores_the_model_and_is_continued(clock) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain", "interrupt"),
                  schedule={"interrupt": lambda nth: (lambda call: KeyboardInterrupt if call >= 3
                                                      else 0.01)})
    manager = plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob])
    model, loader, optimizer = workload()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = dict(optimizer=optimizer, loss_fn=nn.functional.cross_entropy, device="cpu",
                  tune=fake_options(clock), manager=manager)
    tuned = autotune.apply(model, loader, **kwargs)
    report = tuned.tuning
    assert report.interrupted and not report.complete
    assert [t.status for t in report.trials][-1] is Status.INTERRUPTED
    # "plain" measured 3x faster before Ctrl-C, but was never confirmed.
    assert trial_for(report, "plain").verdict.startswith("fastest when Ctrl-C came")
    assert tuned.plan.get("knob", "mode") == "slow"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    files = _cache_files()
    assert len(files) == 1 and json.loads(files[0].read_text())["complete"] is False
    # The next call continues from the incumbent the interrupted one found.
    knob.schedule = {}
    again = autotune.apply(model, loader, **kwargs).tuning
    assert again.resumed and again.trials[1].role == "resumed" and again.complete
    assert again.confirmation.shipped
    assert json.loads(_cache_files()[0].read_text())["complete"] is True


# -- the cache ----------------------------------------------------------------------


def test_second_apply_runs_no_trials_and_remeasure_runs_them_again(clock: FakeClock) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain",))
    manager = plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob])
    model, loader, optimizer = workload()
    kwargs = dict(optimizer=optimizer, loss_fn=nn.functional.cross_entropy, device="cpu",
                  tune=fake_options(clock), manager=manager)
    first = autotune.apply(model, loader, **kwargs)
    assert not first.tuning.from_cache and len(knob.engines) >= 2
    files = _cache_files()
    assert len(files) == 1 and json.loads(files[0].read_text())["winner_settings"]
    engines = len(knob.engines)
    second = autotune.apply(model, loader, **kwargs)
    assert second.tuning.from_cache and len(knob.engines) == engines  # no trial ran
    assert second.plan.get("knob", "mode") == "plain"
    assert second.plan.setting("knob", "mode").source is Source.MEASURED
    assert "cached" in second.plan.setting("knob", "mode").reason
    assert any(e.plugin == "tuner" and "cache" in e.message for e in second.report)
    third = autotune.apply(model, loader, remeasure=True, **kwargs)
    assert not third.tuning.from_cache and len(knob.engines) > engines


@pytest.mark.parametrize("damage", [
    lambda e: e.update(winner_settings={"knob": {"mode": 3}}),           # wrong kind of value
    lambda e: e.update(winner_settings={"nope": {"mode": "plain"}}),     # unknown plugin
    lambda e: e.update(winner_settings=["plain"]),                       # wrong shape
    lambda e: e.update(complete="yes"),                                  # wrong type
    lambda e: e["report"].update(trials=[{"index": "zero"}]),            # malformed trial
    lambda e: e.update(state={"incumbent": {"knob": "plain"}}),          # malformed state
])
def test_a_cache_entry_of_the_wrong_shape_is_measured_again(clock, damage, caplog) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain",))
    manager = plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob])
    model, loader, optimizer = workload()
    kwargs = dict(optimizer=optimizer, loss_fn=nn.functional.cross_entropy, device="cpu",
                  tune=fake_options(clock), manager=manager)
    autotune.apply(model, loader, **kwargs)
    path = _cache_files()[0]
    entry = json.loads(path.read_text())
    damage(entry)
    path.write_text(json.dumps(entry))
    again = autotune.apply(model, loader, **kwargs)
    assert not again.tuning.from_cache and again.tuning.measured_trials()
    assert again.plan.get("knob", "mode") == "plain"  # measured, not read from the entry
    assert "wrong shape" in caplog.text


def test_an_unwritable_cache_costs_the_cache_not_the_result(clock, tmp_path, monkeypatch) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(blocked))
    knob = Costly(clock, default="slow", alternatives=("plain",))
    tuned = autotune.apply(*workload()[:2], optimizer=workload()[2],
                           loss_fn=nn.functional.cross_entropy, device="cpu",
                           tune=fake_options(clock),
                           manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob]))
    assert tuned.plan.get("knob", "mode") == "plain"
    assert "cannot be written" in tuned.tuning.cache_error
    assert any(e.plugin == "tuner" and "not cached" in e.message for e in tuned.report)


# -- the budget ---------------------------------------------------------------------


def test_the_budget_stops_the_search_and_skips_each_candidate_once(clock: FakeClock) -> None:
    alternatives = tuple(f"plain{i}" for i in range(30))
    knob = Costly(clock, default="plain", alternatives=alternatives)
    # A trial is 2 warm-up steps + 3 chunks of 2 steps of 10 ms on the fake clock.
    result = tune_fake(knob, clock=clock, budget_s=0.5)
    report = result.report
    measured = [t for t in report.trials if t.role == "knob" and t.status is not Status.SKIPPED]
    skipped = report.skipped_trials()
    assert report.baseline.ok and report.budget_exhausted and not report.complete
    assert measured and skipped
    assert len(measured) + len(skipped) == len(alternatives)  # each candidate once
    assert len({t.label for t in skipped}) == len(skipped)
    assert all("budget" in t.reason for t in skipped)
    assert report.search_s <= 0.5


def test_a_cut_short_search_continues_on_the_next_call(clock: FakeClock) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain", "fast", "faster"))
    manager = plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob])
    objects = workload()
    model, loader, optimizer = objects
    first = tune_fake(knob, clock=clock, budget_s=0.4, objects=objects)
    assert not first.report.complete and first.report.skipped_trials()
    entry = json.loads(_cache_files()[0].read_text())
    assert entry["complete"] is False and entry["state"]["earlier_trials"] >= 1
    engines = len(knob.engines)
    second = tune_fake(knob, clock=clock, budget_s=60, objects=objects)
    assert second.report.resumed and second.report.complete and not second.report.from_cache
    assert second.plan.get("knob", "mode") == "faster" and second.report.confirmation.shipped
    assert len(knob.engines) > engines
    third = tune_fake(knob, clock=clock, budget_s=60, objects=objects)
    assert third.report.from_cache and third.plan.get("knob", "mode") == "faster"


def test_a_budget_spent_on_the_baseline_leaves_the_plan_unmeasured(clock: FakeClock) -> None:
    knob = Costly(clock, default="plain", alternatives=("fast",))
    result = tune_fake(knob, clock=clock, budget_s=0.03)
    assert result.report.trials[0].status is Status.STOPPED
    assert "stopped: budget" in result.report.trials[0].reason
    assert result.plan.setting("knob", "mode").source is Source.DEFAULT
    assert not _cache_files()  # nothing measured, nothing to continue from


@pytest.mark.slow
def test_a_compile_longer_than_the_budget_is_stopped_within_the_tolerance(monkeypatch) -> None:
    """A real torch.compile of a model whose compilation takes longer than
    the 20 s budget: the compile trial starts (its cost estimate is forced
    low), is stopped at the deadline, and apply returns within the tolerance.
    (A real estimate would not start it: see the runner's cost model.)"""
    import time

    from autotune.tuner import runner
    from autotune.tuner.budget import TOLERANCE_S

    # Priced like an eager trial, so the compile trial starts; its real cost
    # is what the budget has to stop.
    monkeypatch.setattr(runner.TrialRunner, "costly", lambda self, config: 0.0)
    torch.manual_seed(0)
    widths = [16 + (i % 7) for i in range(101)]
    layers: list[nn.Module] = []
    for i in range(100):  # 300 ops to fuse, forward and backward: minutes of inductor
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.GELU(), nn.LayerNorm(widths[i + 1])]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 4))
    loader = DataLoader(TensorDataset(torch.randn(64, widths[0]), torch.randint(0, 4, (64,))),
                        batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    others = [p for p in BUILTIN_PLUGINS if p != "compile"]
    started = time.monotonic()
    tuned = autotune.apply(model, loader, optimizer=optimizer, loss_fn=nn.functional.cross_entropy,
                           device="cpu", budget_s=20, manager=plugin_manager(disable=others),
                           tune=SearchOptions(trial=TrialOptions(warmup_steps=1, chunks=3,
                                                                 chunk_s=0.05, retries=0)))
    took = time.monotonic() - started
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    compiled = next(t for t in tuned.tuning.trials if t.changes.get("compile"))
    assert compiled.status is Status.STOPPED and "stopped: budget" in compiled.reason
    assert took <= 20 + TOLERANCE_S, f"apply took {took:.1f} s on a 20 s budget"
    assert tuned.plan.get("compile", "mode") == "off" and not tuned.tuning.complete


def test_budget_and_options_are_validated_with_their_names() -> None:
    model, loader, optimizer = workload()
    for bad in (0, -1, float("nan"), "60", True):
        with pytest.raises(autotune.AutotuneError, match="budget_s"):
            autotune.apply(model, loader, optimizer=optimizer, budget_s=bad,
                           manager=plugin_manager())
    with pytest.raises(autotune.AutotuneError, match="tune must be"):
        autotune.apply(model, loader, tune="yes", manager=plugin_manager())
    with pytest.raises(autotune.AutotuneError, match="TrialOptions.chunks"):
        TrialOptions(chunks=0)
    with pytest.raises(autotune.AutotuneError, match="min_gain"):
        SearchOptions(min_gain=2)


# -- what apply measures -------------------------------------------------------------


def test_apply_without_a_loss_function_plans_without_measuring() -> None:
    model, loader, optimizer = workload()
    tuned = autotune.apply(model, loader, optimizer=optimizer, device="cpu",
                           manager=plugin_manager())
    assert tuned.tuning is None
    assert all(s.source is not Source.MEASURED for _, _, s in tuned.plan.rows())
    with pytest.raises(autotune.AutotuneError, match="loss_fn"):
        autotune.apply(model, loader, optimizer=optimizer, device="cpu", tune=True,
                       manager=plugin_manager())


class Lever:
    """Two of these make an interaction: ``second=fast`` only pays once
    ``first=fast`` (as channels_last may pay only once a model is compiled)."""

    def __init__(self, name: str, clock: FakeClock, installs_hook: bool) -> None:
        self.NAME = name
        self.clock = clock
        self.installs_hook = installs_hook

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        return {"mode": Setting("slow", Source.DEFAULT, "test lever")}

    @hookimpl
    def autotune_candidates(self, context: Any, plan: Any) -> list[dict[str, Any]]:
        return [{"mode": "fast"}]

    @hookimpl
    def autotune_setup_engine(self, engine: Any, plan: Any) -> None:
        if not self.installs_hook:
            return
        first, second = plan.get("first", "mode"), plan.get("second", "mode")
        delay = 0.04 if first == "slow" else (0.02 if second == "slow" else 0.01)

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            self.clock.advance(delay)
            return output

        handle = engine.module.register_forward_hook(hook)
        engine.on_close(handle.remove)


def test_a_second_pass_finds_a_setting_that_pays_only_on_top_of_another(clock) -> None:
    # "second" is registered (and so searched) first: alone it changes nothing.
    result = tune_fake(Lever("second", clock, False), Lever("first", clock, True), clock=clock)
    roles = [t.role for t in result.report.trials]
    assert "second (pass 2)" in roles
    assert result.plan.get("first", "mode") == "fast" and result.plan.get("second", "mode") == "fast"
    assert result.report.confirmation.gain == pytest.approx(4.0)


class Knobbed(Costly):
    """A :class:`Costly` plugin that describes its ``mode`` with ``knob``."""

    def __init__(self, clock: FakeClock, knob: Knob, **kwargs: Any) -> None:
        super().__init__(clock, **kwargs)
        self.knob = knob

    @hookimpl
    def autotune_knobs(self) -> dict[str, Knob]:
        return {"mode": self.knob}


def test_a_knob_sharing_the_loaders_cores_is_searched_again_once_the_loader_changed(clock) -> None:
    # No plugin is known by name: the knobs say which group is the loader's
    # and which one shares its cores.
    feeder = Knobbed(clock, Knob(off="plain", phase=LOADER), name="feeder", alternatives=("fast",))
    cores = Knobbed(clock, Knob(off="plain", revisit_after_loader=True), name="cores")
    other = Knobbed(clock, Knob(off="plain"), name="other")
    report = tune_fake(feeder, cores, other, clock=clock).report
    roles = [t.role for t in report.trials]
    assert roles.index("cores") < roles.index("feeder") < roles.index("cores (after loader)")
    assert roles.count("cores (after loader)") == 1  # pass 2 left the loader as it was
    assert not any(r.startswith("other (after") or r.startswith("feeder (after") for r in roles)
    assert report.winner_settings["feeder"] == {"mode": "fast"}


def test_apply_measures_builtin_candidates_then_trains_with_the_winner() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 3, 6, 6, generator=generator),
                                      torch.randint(0, 2, (32,), generator=generator)),
                        batch_size=8, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuned = autotune.apply(model, loader, optimizer=optimizer,
                           loss_fn=nn.functional.cross_entropy, device="cpu", budget_s=None,
                           tune=SearchOptions(trial=TrialOptions(warmup_steps=2, chunks=3,
                                                                 chunk_s=0.02),
                                              only=("channels_last", "mixed_precision")),
                           manager=plugin_manager())
    report = tuned.tuning
    assert report.trials[0].role == "baseline" and len(report.measured_trials()) >= 2
    setting = tuned.plan.setting("channels_last", "enabled")
    assert setting.source is Source.MEASURED
    assert setting.value == report.winner_settings["channels_last"]["enabled"]
    assert any(e.plugin == "tuner" and "trials" in e.message for e in tuned.report)
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(tuned.loader, max_steps=3)
    assert history[-1].batches == 3


# -- loaders that are not DataLoaders ---------------------------------------------------


class Stream(IterableDataset):
    """A finite stream without __len__: each pass yields 6 batches' worth."""

    def __iter__(self):
        generator = torch.Generator().manual_seed(5)
        for _ in range(48):
            yield torch.randn(8, generator=generator), torch.randint(0, 4, (), generator=generator)


@pytest.mark.parametrize("make_loader", [
    lambda: list(workload()[1]),                                   # a list of batches
    lambda: DataLoader(Stream(), batch_size=8),                    # a finite IterableDataset
    lambda: type("Batches", (), {"__iter__": lambda self: iter(list(workload()[1]))})(),
], ids=["list", "iterable-dataset", "custom-iterable"])
def test_any_reiterable_loader_is_measured(clock, make_loader) -> None:
    knob = Costly(clock, default="slow", alternatives=("plain",))
    model, _, optimizer = workload()
    result = tune_fake(knob, clock=clock, objects=(model, make_loader(), optimizer))
    assert result.report.baseline.ok, result.report.baseline.reason
    assert result.plan.get("knob", "mode") == "plain"


def test_a_generator_loader_is_not_measured_but_trains() -> None:
    model, loader, optimizer = workload()
    batches = (batch for batch in list(loader))
    tuned = autotune.apply(model, batches, optimizer=optimizer, device="cpu",
                           loss_fn=nn.functional.cross_entropy, manager=plugin_manager())
    assert tuned.tuning is None
    assert any("one-shot iterator" in e.message for e in tuned.report)
    with pytest.raises(autotune.AutotuneError, match="one-shot iterator"):
        autotune.apply(model, (b for b in list(loader)), optimizer=optimizer, device="cpu",
                       loss_fn=nn.functional.cross_entropy, tune=True, manager=plugin_manager())
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        assert engine.fit(tuned.loader)[-1].batches == len(loader)  # consumed once, in training
