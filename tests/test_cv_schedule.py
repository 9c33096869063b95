"""How folds share the machine: the parallel_folds rules and the schedule
cross_validate derives from them (written into the fold plan)."""

from __future__ import annotations

import pytest
import torch

import autotune
from autotune.cv.schedule import decide
from autotune.hardware import GIB
from autotune.plan import Source
from autotune.planner import make_plan
from autotune.plugins import parallel_folds as rules
from autotune.testing import cpu_laptop, fake_cpu, fake_hardware, h100_box
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
