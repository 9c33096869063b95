"""How folds share the machine: the parallel_folds rules and the schedule
cross_validate derives from them (written into the fold plan)."""

from __future__ import annotations

import pytest
import torch

import autotune
from autotune.cv.schedule import decide
from autotune.machine.hardware import GIB
from autotune.plan.plan import Source
from autotune.planner import make_plan
from autotune.plugins import parallel_folds as rules
from autotune.testing import cpu_laptop, fake_cpu, fake_hardware, h100_box, plugin_manager
from cv_helpers import tiny_mlp, toy_dataset


@pytest.mark.parametrize("cores,folds,threads", [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 2, 2),
                                                 (16, 8, 2), (64, 32, 2)])
def test_cpu_rule(cores, folds, threads):
    assert rules.cpu_concurrency(cores)[0] == folds
    assert rules.threads_for(cores, folds) == threads


def test_gpu_rule_uses_the_fullest_gpu_and_keeps_one_fold():
    assert rules.gpu_slots([80 * GIB], 10 * GIB) == 7  # 72 GiB usable / 10
    assert rules.gpu_slots([80 * GIB, 20 * GIB], 10 * GIB) == 1
    assert rules.gpu_slots([4 * GIB], 10 * GIB) == 1  # alone it may still fit
    assert [rules.fold_device(i, 2) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert rules.fold_device(3, 0) == "cpu"


def test_propose_on_two_cores_runs_one_fold_per_core():
    two = fake_hardware(cpu=fake_cpu(physical_cores=2, logical_cores=2))
    settings = rules.propose(two)
    assert settings["max_concurrent"].value == 2 and settings["threads_per_fold"].value == 1
    assert settings["backend"].value == "loky"


def test_short_folds_stay_in_this_process_long_ones_go_to_workers():
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    plan = make_plan(hardware=hardware).plan
    short = decide(plan, hardware, folds_to_run=5, device="cpu",
                   estimate_fold_seconds=lambda: rules.MIN_FOLD_SECONDS_FOR_WORKERS / 3)
    assert (short.backend, short.concurrency) == ("sequential", 1)
    setting = short.plan.setting("parallel_folds", "max_concurrent")
    assert setting.source is Source.MEASURED and "a fold takes about 0.50 s" in setting.reason
    long = decide(plan, hardware, folds_to_run=5, device="cpu",
                  estimate_fold_seconds=lambda: 30.0)
    assert (long.backend, long.concurrency) == ("loky", 5)
    asked = decide(plan, hardware, folds_to_run=5, device="cpu", max_concurrent=4,
                   estimate_fold_seconds=lambda: 0.01)  # the user's word stands
    assert (asked.backend, asked.concurrency) == ("loky", 4)


def test_profile_caps_gpu_folds():
    settings = make_plan(hardware=h100_box()).plan.settings["parallel_folds"]
    assert settings["max_concurrent"].source is Source.PROFILE


def test_bad_profile_options_are_refused():
    with pytest.raises(ValueError, match="max_concurrent must be >= 1"):
        rules.Options(max_concurrent=0)


def test_schedule_splits_sixteen_cores_and_writes_it_into_the_plan():
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    plan = make_plan(hardware=hardware,
                     overrides={"dataloader": {"num_workers": 4}}).plan
    schedule = decide(plan, hardware, folds_to_run=10, device="cpu")
    assert (schedule.backend, schedule.concurrency, schedule.threads_per_fold) == ("loky", 8, 2)
    assert schedule.plan.get("threads", "intra_op") == 2
    # A user's override of the loader workers is still capped by the fold's share:
    # 2 threads, one of them stepping -> 1 worker.
    assert schedule.plan.get("dataloader", "num_workers") == 1
    assert "fold" in schedule.plan.setting("dataloader", "num_workers").reason


def test_fewer_folds_left_than_slots_get_more_threads_each():
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    schedule = decide(make_plan(hardware=hardware).plan, hardware, folds_to_run=3, device="cpu")
    assert (schedule.concurrency, schedule.threads_per_fold) == (3, 5)
    assert schedule.plan.get("parallel_folds", "max_concurrent") == 3


def test_a_single_fold_at_a_time_runs_in_this_process():
    hardware = cpu_laptop()
    plan = make_plan(hardware=hardware, overrides={"parallel_folds": {"max_concurrent": 1}}).plan
    schedule = decide(plan, hardware, folds_to_run=5, device="cpu")
    assert schedule.backend == "sequential" and schedule.concurrency == 1
    assert schedule.threads_per_fold == plan.get("threads", "intra_op")


def test_disabled_plugin_means_sequential():
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    plan = make_plan(hardware=hardware, disable=["parallel_folds"]).plan
    assert decide(plan, hardware, folds_to_run=5, device="cpu").backend == "sequential"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_cuda_folds_are_sized_by_a_measured_memory_peak():
    result = autotune.cross_validate(tiny_mlp, toy_dataset(), k=4, epochs=1, batch_size=16,
                                     device="cuda", max_concurrent=2, backend="loky",
                                     progress=False)
    assert result.ok
    setting = result.plan.setting("parallel_folds", "max_concurrent")
    assert setting.source in (Source.MEASURED, Source.OVERRIDE) and "GiB per fold" in setting.reason
    gpus = torch.cuda.device_count()
    assert [f.device for f in result.folds] == [f"cuda:{i % gpus}" for i in range(4)]
    assert all(f.peak_memory_bytes > 0 for f in result.folds)


# -- the hooks: fold schedule and resource share --------------------------------------


class FoldsInThreads:
    """A third-party plugin object that schedules folds its own way."""

    NAME = "folds_in_threads"

    def __init__(self) -> None:
        self.asked: list[dict] = []

    @autotune.hookimpl
    def autotune_fold_schedule(self, plan, folds, backend, device):
        from autotune.plan.resources import FoldPlan

        self.asked.append({"folds": folds, "backend": backend, "device": device})
        return FoldPlan(backend="threading", concurrency=2, threads_per_fold=1,
                        loader_workers=0, reason="folds_in_threads: two threads, one core each")


def test_without_a_scheduling_plugin_cross_validate_runs_folds_one_after_another():
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    plan = make_plan(hardware=hardware, disable=["parallel_folds"]).plan
    schedule = decide(plan, hardware, folds_to_run=5, device="cpu",
                      manager=plugin_manager(disable=["parallel_folds"]))
    assert (schedule.backend, schedule.concurrency, schedule.scheduled_by) == ("sequential", 1, "")
    assert "no plugin schedules parallel folds" in schedule.reason
    assert schedule.plan.get("threads", "intra_op") == plan.get("threads", "intra_op")
    result = autotune.cross_validate(tiny_mlp, toy_dataset(), k=3, epochs=1, batch_size=16,
                                     max_steps=1, disable=["parallel_folds"], progress=False)
    assert result.ok and result.backend == "sequential" and result.concurrency == 1
    assert "parallel_folds" not in result.plan and "parallel_folds" in result.plan.disabled


def test_a_third_party_fold_schedule_is_asked_before_the_builtin_and_used():
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    scheduler = FoldsInThreads()
    plan = make_plan(hardware=hardware, overrides={"dataloader": {"num_workers": 4},
                                                   "threads": {"set_env": True}}).plan
    schedule = decide(plan, hardware, folds_to_run=4, device="cpu",
                      manager=plugin_manager(plugins=[scheduler]))
    assert scheduler.asked == [{"folds": 4, "backend": None, "device": "cpu"}]
    assert schedule.scheduled_by == "folds_in_threads"
    assert (schedule.backend, schedule.concurrency, schedule.threads_per_fold) == \
        ("threading", 2, 1)
    assert schedule.reason == "folds_in_threads: two threads, one core each"
    # The share it implies reaches the plugins that own threads and loader workers.
    assert schedule.plan.get("threads", "intra_op") == 1
    assert schedule.plan.get("threads", "set_env") is False  # one process, one environment
    assert schedule.plan.get("dataloader", "num_workers") == 0
    assert schedule.plan.get("dataloader", "persistent_workers") is False
    assert schedule.plan.get("dataloader", "prefetch_factor") is None
    # The built-in's settings are left as planned: it was not asked.
    assert schedule.plan.settings["parallel_folds"] == plan.settings["parallel_folds"]


def test_cross_validate_trains_with_a_plugin_object_that_schedules_the_folds():
    scheduler = FoldsInThreads()
    result = autotune.cross_validate(tiny_mlp, toy_dataset(), k=2, epochs=1, batch_size=16,
                                     max_steps=1, plugins=[scheduler], progress=False)
    assert len(scheduler.asked) == 1 and scheduler.asked[0]["folds"] == 2
    assert result.ok and (result.backend, result.concurrency, result.threads_per_fold) == \
        ("threading", 2, 1)
    assert result.plan.get("threads", "intra_op") == 1


def test_a_fold_schedule_that_is_no_fold_plan_fails_that_plugin_only():
    class Broken:
        NAME = "broken_scheduler"

        @autotune.hookimpl
        def autotune_fold_schedule(self):
            return {"backend": "loky"}

    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    plan = make_plan(hardware=hardware).plan
    with pytest.warns(autotune.plugin.manager.PluginWarning, match="broken_scheduler.*FoldPlan"):
        schedule = decide(plan, hardware, folds_to_run=5, device="cpu",
                          manager=plugin_manager(plugins=[Broken()]),
                          estimate_fold_seconds=lambda: 30.0)
    assert schedule.scheduled_by == "parallel_folds" and schedule.backend == "loky"


def test_a_resource_share_caps_threads_and_loader_workers():
    from autotune.plan.resources import Share
    from autotune.plugin.manager import share_plan

    hardware = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    planned = make_plan(hardware=hardware, manager=plugin_manager(),
                        overrides={"dataloader": {"num_workers": 4}})
    share = Share(threads=3, loader_workers=2, reason="a job gets 3 of 16 cores")
    shared = share_plan(planned.plan, share, context=planned.context, manager=planned.manager)
    assert shared.get("threads", "intra_op") == 3
    assert shared.setting("threads", "intra_op").reason == "a job gets 3 of 16 cores"
    # The share leaves no choice: even the user's loader workers come out of it.
    workers = shared.setting("dataloader", "num_workers")
    assert workers.value == 2 and "a job gets 3 of 16 cores" in workers.reason
    assert shared.get("dataloader", "persistent_workers") is True  # workers remain
    # No loader workers at all: what follows them goes too.
    none = share_plan(planned.plan, Share(loader_workers=0, reason="a daemonic process"),
                      context=planned.context, manager=planned.manager)
    assert none.get("dataloader", "num_workers") == 0
    assert none.get("dataloader", "persistent_workers") is False
    assert none.get("dataloader", "prefetch_factor") is None
    assert none.get("threads", "intra_op") == planned.plan.get("threads", "intra_op")  # not divided
    # A user's intra_op stands.
    kept = planned.plan.with_overrides({"threads": {"intra_op": 8}})
    assert share_plan(kept, share, context=planned.context,
                      manager=planned.manager).get("threads", "intra_op") == 8


def test_share_and_fold_plan_refuse_nonsense():
    from autotune.plan.resources import FoldPlan, Share

    with pytest.raises(ValueError, match="Share.threads must be an integer >= 1"):
        Share(threads=0)
    with pytest.raises(ValueError, match="FoldPlan.backend='spark'"):
        FoldPlan(backend="spark")
    assert FoldPlan(backend="loky", devices=["cuda:0", "cuda:1"]).device_for(3, "cpu") == "cuda:1"


def test_gpu_schedule_rule_sizes_folds_by_the_measured_peak(monkeypatch):
    """The CUDA branch of the plugin's schedule, with torch.cuda faked."""
    hardware = h100_box()
    planned = make_plan(hardware=hardware, overrides={"parallel_folds": {"max_concurrent": 4}})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (40 * GIB, 80 * GIB))
    monkeypatch.setattr(rules, "cuda_context_bytes", lambda i: 0)
    folds = rules.schedule(planned.context, planned.plan, 6, device="cuda",
                           measure_fold_memory=lambda device: 20 * GIB)
    # 40 GiB free x 0.9 / 20 GiB -> 1 per GPU, on 2 GPUs.
    assert (folds.backend, folds.concurrency, folds.devices) == ("loky", 2, ("cuda:0", "cuda:1"))
    assert "measured 20.00 GiB per fold" in folds.reason
    assert folds.per_fold_memory_bytes == 20 * GIB
    setting = folds.settings["max_concurrent"]
    assert setting.value == 2 and setting.source is Source.MEASURED
