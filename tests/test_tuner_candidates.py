"""The search space: what each built-in plugin offers through
``autotune_candidates``, and the hardware priors that order and prune it."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from autotune.context import Workload
from autotune.plan import Source
from autotune.planner import make_plan
from autotune.plugins import channels_last, compile, dataloader, mixed_precision, threads
from autotune.testing import cpu_laptop, fake_hardware, h100_box, plugin_manager
from autotune.tuner.candidates import baseline_config, order_groups, prune_reason

ZEN4 = fake_hardware(cpu={"physical_cores": 2, "logical_cores": 2, "flags": [
    "avx2", "avx512f", "avx512_bf16"]})


THREADS = torch.get_num_threads()


def test_precision_candidates_follow_the_hardware() -> None:
    assert mixed_precision.candidates(cpu_laptop()) == [{"dtype": "fp32", "grad_scaler": False}]
    assert [c["dtype"] for c in mixed_precision.candidates(ZEN4)] == ["bf16", "fp32"]
    on_h100 = mixed_precision.candidates(h100_box(), {"dtype": "bf16", "tf32": True})
    assert on_h100[0] == {"dtype": "bf16", "grad_scaler": False}
    assert {"dtype": "fp16", "grad_scaler": True} in on_h100
    assert {"dtype": "fp32", "grad_scaler": False, "tf32": True} in on_h100


def test_compile_candidates_need_cuda_for_cuda_graphs() -> None:
    assert compile.candidates(h100_box())[0] == {"mode": "reduce-overhead"}
    on_cpu = [c["mode"] for c in compile.candidates(cpu_laptop())]
    assert "reduce-overhead" not in on_cpu and on_cpu[-1] == "off"


def test_channels_last_candidates_only_for_convolutions() -> None:
    linear = Workload.inspect(nn.Linear(2, 2))
    conv = Workload.inspect(nn.Conv2d(3, 3, 1))
    assert channels_last.candidates(cpu_laptop(), {}, linear) == []
    assert {"enabled": True} in channels_last.candidates(cpu_laptop(), {}, conv)


class Stream(IterableDataset):
    def __iter__(self):
        yield from ((torch.zeros(2), torch.tensor(0)) for _ in range(4))


def test_loader_candidates_fit_the_cores_and_skip_iterable_datasets() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(8, 2), torch.zeros(8)), batch_size=2)
    on_cpu = dataloader.candidates(cpu_laptop(), {}, Workload.inspect(None, loader))
    assert [c["num_workers"] for c in on_cpu] == [0, 1, 4, 8]
    assert not any(c["pin_memory"] for c in on_cpu)
    on_gpu = dataloader.candidates(h100_box(), {}, Workload.inspect(None, loader))
    assert on_gpu[0]["num_workers"] == 8 and on_gpu[0]["pin_memory"]
    assert on_gpu[1] == {**on_gpu[0], "prefetch_factor": 4}
    stream = DataLoader(Stream(), batch_size=2)
    assert dataloader.candidates(h100_box(), {}, Workload.inspect(None, stream)) == []


def test_thread_candidates_leave_room_for_loader_workers() -> None:
    assert threads.candidates(cpu_laptop()) == [{"intra_op": 4}, {"intra_op": 8}]
    assert {"intra_op": 6} in threads.candidates(cpu_laptop(), loader_workers=2)


def _knobs(hardware) -> dict:
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8)), batch_size=2)
    planned = make_plan(hardware=hardware, manager=plugin_manager(),
                        workload=Workload.inspect(nn.Conv2d(3, 3, 1), loader))
    return planned.manager.knobs(planned.context, planned.plan)


def test_priors_order_groups_and_prune_what_the_hardware_cannot_run() -> None:
    cnn = Workload.inspect(nn.Sequential(nn.Conv2d(3, 3, 1)))
    plugins = ["threads", "mixed_precision", "channels_last", "compile", "dataloader",
               "accumulation", "clipping", "parallel_folds"]
    laptop = [g.plugin for g in order_groups(plugins, cpu_laptop(), cnn, "cpu",
                                             _knobs(cpu_laptop()))]
    assert "mixed_precision" not in laptop  # no bf16 on that CPU, no fp16 without CUDA
    # Their knobs change what is trained, or belong to a whole run: never searched.
    assert not {"accumulation", "clipping", "parallel_folds"} & set(laptop)
    assert laptop[-1] == "dataloader"  # loader settings come after the step settings
    gpu = [g.plugin for g in order_groups(plugins, h100_box(), cnn, "cuda", _knobs(h100_box()))]
    assert gpu[0] == "mixed_precision" and gpu[-1] == "dataloader"
    assert prune_reason("mixed_precision", {"dtype": "fp16"}, ZEN4, "cpu")
    assert prune_reason("mixed_precision", {"dtype": "bf16"}, cpu_laptop(), "cpu")
    assert prune_reason("mixed_precision", {"dtype": "bf16"}, ZEN4, "cpu") is None
    assert prune_reason("compile", {"mode": "reduce-overhead"}, ZEN4, "cpu")
    assert prune_reason("compile", {"mode": "reduce-overhead"}, h100_box(), "cuda") is None
    assert prune_reason("dataloader", {"pin_memory": True}, ZEN4, "cpu")


def test_baseline_is_pytorch_defaults_and_the_users_loader_but_keeps_overrides() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8)), batch_size=2,
                        num_workers=1, persistent_workers=True)
    planned = make_plan(hardware=h100_box(), workload=Workload.inspect(model, loader),
                        manager=plugin_manager(), overrides={"compile": {"mode": "default"}})
    torch.set_num_threads(3)
    try:
        knobs = planned.manager.knobs(planned.context, planned.plan)
    finally:
        torch.set_num_threads(THREADS)
    baseline = baseline_config(planned.plan, knobs, knobs)
    assert baseline.values["mixed_precision"] == {"dtype": "fp32", "grad_scaler": False,
                                                  "tf32": None}
    assert baseline.values["channels_last"] == {"enabled": False}
    assert baseline.values["dataloader"] == {"num_workers": 1, "pin_memory": False,
                                             "persistent_workers": True, "prefetch_factor": 2}
    assert baseline.values["threads"]["intra_op"] == 3
    assert "compile" in baseline.values and "mode" not in baseline.values["compile"]  # the
    # user's override is not the tuner's to change; fullgraph's off is PyTorch's
    assert not {"accumulation", "clipping", "parallel_folds"} & set(baseline.values)
    plan = baseline.to_plan(planned.plan, "test")
    assert plan.setting("compile", "mode").source is Source.OVERRIDE
    assert plan.setting("channels_last", "enabled").source is Source.MEASURED


def test_builtin_plugins_answer_the_candidates_hook() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8)), batch_size=2)
    planned = make_plan(hardware=h100_box(), workload=Workload.inspect(model, loader),
                        manager=plugin_manager())
    offered = planned.manager.candidates(planned.context, planned.plan)
    assert {"mixed_precision", "compile", "channels_last", "dataloader", "threads"} <= set(offered)
    assert not {"accumulation", "clipping", "parallel_folds"} & set(offered)
