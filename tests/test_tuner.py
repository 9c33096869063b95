"""Measured tuning: the baseline guarantee, disqualification, Ctrl-C, the
budget and the cache, with real training steps through the engine.

The candidates come from a real plugin (:class:`Knob`) registered with the
plugin manager; what a candidate does to the step is real too: a forward
hook that sleeps, raises an out-of-memory error, returns NaN, or raises
KeyboardInterrupt, installed by the plugin's ``autotune_setup_engine``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune import hookimpl
from autotune.context import Workload
from autotune.manager import BUILTIN_PLUGINS
from autotune.plan import Setting, Source
from autotune.planner import make_plan
from autotune.testing import plugin_manager
from autotune.tuner import SearchOptions, Status, TrialOptions, tune

FAST = TrialOptions(warmup_steps=2, chunks=3, chunk_s=0.02)
OPTIONS = SearchOptions(trial=FAST)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one intra-op thread: on a busy machine (other jobs on
    the same cores) steps then slow down evenly, instead of stalling in
    OpenMP barriers for a scheduler tick, which would swamp sleeps of a few
    milliseconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Knob:
    """A plugin with one setting, ``mode``; each mode does something real
    to the training step through a forward hook on the engine's model."""

    def __init__(self, default: str = "plain", alternatives: tuple[str, ...] = ("slow",),
                 name: str = "knob") -> None:
        self.NAME = name
        self.default = default
        self.alternatives = alternatives
        self.engines: list[str] = []
        self.forward_calls = 0

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        return {"mode": Setting(self.default, Source.DEFAULT, "test knob")}

    @hookimpl
    def autotune_candidates(self, context: Any, plan: Any) -> list[dict[str, Any]]:
        return [{"mode": m} for m in self.alternatives]

    @hookimpl
    def autotune_setup_engine(self, engine: Any, plan: Any) -> None:
        mode = plan.get(self.NAME, "mode")
        self.engines.append(mode)
        calls = {"n": 0}

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            self.forward_calls += 1
            if mode == "slow":
                time.sleep(0.03)
            elif mode == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            elif mode == "runtime_oom":
                raise RuntimeError("CUDA error: out of memory")
            elif mode == "nan" and calls["n"] >= 2:
                return output * float("nan")
            elif mode == "interrupt" and calls["n"] >= 3:
                raise KeyboardInterrupt
            return output

        handle = engine.module.register_forward_hook(hook)
        engine.on_close(handle.remove)


def workload(n: int = 64) -> tuple[nn.Module, DataLoader, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(torch.randn(n, 8, generator=generator),
                                      torch.randint(0, 4, (n,), generator=generator)),
                        batch_size=8, shuffle=True, generator=generator)
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def tune_with(knob: Knob, *, budget_s: float | None = 30.0, options: SearchOptions = OPTIONS,
              **kwargs: Any) -> Any:
    model, loader, optimizer = workload()
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob]))
    return tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                context=planned.context, manager=planned.manager, device="cpu",
                budget_s=budget_s, options=options, progress=False, **kwargs)


def trial_for(report: Any, mode: str) -> Any:
    return next(t for t in report.trials if t.changes.get("knob", {}).get("mode") == mode)


def test_artificially_slow_candidate_never_wins() -> None:
    knob = Knob(default="plain", alternatives=("slow",))
    result = tune_with(knob)
    report = result.report
    slow = trial_for(report, "slow")
    assert report.baseline.role == "baseline" and report.baseline.index == 0
    assert slow.ok and slow.samples_per_s < report.baseline.samples_per_s
    assert report.winner_index == report.baseline_index
    assert result.plan.setting("knob", "mode") == Setting(
        "plain", Source.MEASURED, "measured: no candidate beat PyTorch defaults beyond noise")
    assert "slow" in knob.engines  # it really ran


def test_faster_candidate_wins_and_enters_the_plan_as_measured() -> None:
    knob = Knob(default="slow", alternatives=("plain",))
    result = tune_with(knob)
    report = result.report
    plain = trial_for(report, "plain")
    assert report.winner_index == plain.index and report.speedup > 1.5
    setting = result.plan.setting("knob", "mode")
    assert setting.value == "plain" and setting.source is Source.MEASURED
    assert "PyTorch defaults" in setting.reason
    # The incumbent was re-measured before the candidate was adopted.
    assert [t.role for t in report.trials].count("recheck") == 1
    assert report.break_even_steps is not None and report.break_even_steps > 0
    table = report.table()
    for header in ("SAMPLES/S", "MS/STEP", "VS BASE", "WARM-UP S", "winner: #", "pays back"):
        assert header in table
    data = json.loads(report.to_json())
    assert data["winner_settings"] == {"knob": {"mode": "plain"}}
    assert data["trials"][plain.index]["status"] == "ok"


def test_a_user_override_beats_the_measurement() -> None:
    knob = Knob(default="slow", alternatives=("plain",))
    model, loader, optimizer = workload()
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob]),
                        overrides={"knob": {"mode": "slow"}})
    result = tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                  context=planned.context, manager=planned.manager, device="cpu",
                  options=OPTIONS, progress=False)
    assert result.plan.setting("knob", "mode").source is Source.OVERRIDE
    assert len(result.report.measured_trials()) == 1  # nothing left to search


@pytest.mark.parametrize("mode, reason", [("oom", "out of memory"),
                                          ("runtime_oom", "out of memory"),
                                          ("nan", "non-finite loss")])
def test_failing_candidate_is_disqualified_with_a_reason(mode: str, reason: str) -> None:
    result = tune_with(Knob(alternatives=(mode,)))
    failed = trial_for(result.report, mode)
    assert failed.status is Status.DISQUALIFIED and reason in failed.reason
    assert result.report.winner_index == result.report.baseline_index


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
                  options=OPTIONS, progress=False)
    compiled = next(t for t in result.report.trials if t.changes.get("compile"))
    assert compiled.status is Status.DISQUALIFIED and "compile" in compiled.reason
    assert result.plan.get("compile", "mode") == "off"


def test_ctrl_c_keeps_the_best_so_far_and_restores_the_model() -> None:
    knob = Knob(default="slow", alternatives=("plain", "interrupt"))
    model, loader, optimizer = workload()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = autotune.apply(model, loader, optimizer=optimizer,
                           loss_fn=nn.functional.cross_entropy, device="cpu", tune=OPTIONS,
                           manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob]))
    report = tuned.tuning
    assert report.interrupted
    assert [t.status for t in report.trials][-1] is Status.INTERRUPTED
    assert tuned.plan.get("knob", "mode") == "plain"  # measured before Ctrl-C, and faster
    assert tuned.plan.setting("knob", "mode").source is Source.MEASURED
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(k.endswith(".tmp") for k in map(str, _cache_files()))
    assert not _cache_files()  # an interrupted search is not cached


def _cache_files() -> list[Any]:
    from autotune.tuner.cache import cache_dir

    root = cache_dir() / "tuning"
    return sorted(root.iterdir()) if root.exists() else []


def test_second_apply_runs_no_trials_and_remeasure_runs_them_again() -> None:
    knob = Knob(default="slow", alternatives=("plain",))
    manager = plugin_manager(disable=BUILTIN_PLUGINS, plugins=[knob])
    model, loader, optimizer = workload()
    kwargs = dict(optimizer=optimizer, loss_fn=nn.functional.cross_entropy, device="cpu",
                  tune=OPTIONS, manager=manager)
    first = autotune.apply(model, loader, **kwargs)
    assert not first.tuning.from_cache and len(knob.engines) >= 2
    files = _cache_files()
    assert len(files) == 1 and json.loads(files[0].read_text())["report"]["winner_settings"]
    engines = len(knob.engines)
    second = autotune.apply(model, loader, **kwargs)
    assert second.tuning.from_cache and len(knob.engines) == engines  # no trial ran
    assert second.plan.get("knob", "mode") == "plain"
    assert second.plan.setting("knob", "mode").source is Source.MEASURED
    assert "cached" in second.plan.setting("knob", "mode").reason
    assert any(e.plugin == "tuner" and "cache" in e.message for e in second.report)
    third = autotune.apply(model, loader, remeasure=True, **kwargs)
    assert not third.tuning.from_cache and len(knob.engines) > engines


def test_budget_stops_the_search_from_launching_trials() -> None:
    alternatives = tuple(f"plain{i}" for i in range(30))
    knob = Knob(default="plain", alternatives=alternatives)
    options = SearchOptions(trial=TrialOptions(warmup_steps=2, chunks=3, chunk_s=0.05))
    result = tune_with(knob, budget_s=0.5, options=options)
    report = result.report
    measured = report.measured_trials()
    skipped = [t for t in report.trials if t.status is Status.SKIPPED]
    assert report.baseline.ok  # the baseline is measured whatever the budget
    assert report.budget_exhausted and skipped
    assert 1 <= len(measured) < 10  # each trial takes >= 0.15 s: a 0.5 s budget stops early
    assert len(measured) + len(skipped) == 1 + len(alternatives)
    assert all("budget" in t.reason for t in skipped)


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

    def __init__(self, name: str, installs_hook: bool) -> None:
        self.NAME = name
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
        delay = 0.04 if first == "slow" else (0.02 if second == "slow" else 0.0)

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            time.sleep(delay)
            return output

        handle = engine.module.register_forward_hook(hook)
        engine.on_close(handle.remove)


def test_a_second_pass_finds_a_setting_that_pays_only_on_top_of_another() -> None:
    # "second" is registered (and so searched) first: alone it changes nothing.
    levers = [Lever("second", installs_hook=False), Lever("first", installs_hook=True)]
    model, loader, optimizer = workload()
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=levers))
    result = tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                  context=planned.context, manager=planned.manager, device="cpu",
                  options=OPTIONS, progress=False)
    roles = [t.role for t in result.report.trials]
    assert "second (pass 2)" in roles
    assert result.plan.get("first", "mode") == "fast" and result.plan.get("second", "mode") == "fast"
    assert result.report.speedup > 2


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
                           loss_fn=nn.functional.cross_entropy, device="cpu",
                           tune=SearchOptions(trial=FAST, only=("channels_last", "mixed_precision")),
                           manager=plugin_manager())
    report = tuned.tuning
    assert report.trials[0].role == "baseline" and len(report.measured_trials()) >= 2
    for plugin, key in (("channels_last", "enabled"), ("mixed_precision", "dtype")):
        assert tuned.plan.setting(plugin, key).source is Source.MEASURED
    assert tuned.plan.get("channels_last", "enabled") == report.winner_settings["channels_last"]["enabled"]
    assert any(e.plugin == "tuner" and "trials" in e.message for e in tuned.report)
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(tuned.loader, max_steps=3)
    assert history[-1].batches == 3
