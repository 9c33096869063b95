"""What autotune plans and searches on the GPUs people train on, checked on
any machine through autotune.testing's presets and profiles/; then the CUDA
paths themselves (skipped without CUDA, run by benchmarks/run_gpu.py's
tests phase on a GPU machine)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune import make_plan
from autotune.plugin.context import Workload
from autotune.testing import (a100_box, fake_gpu, fake_hardware, h100_box, plugin_manager,
                              requires, rtx4090_box, rtx5080_7950x)
from autotune.tuner.search import search_groups
from autotune.bench.workloads import resnet18_cifar

#: Preset, the profile it matches, its loader-worker range (profiles/*.yaml).
GPU_BOXES = [(h100_box, "h100"), (a100_box, "a100"), (rtx4090_box, "rtx4090"),
             (rtx5080_7950x, "rtx5080_7950x")]


def resnet_workload() -> Workload:
    model = resnet18_cifar(width=8)
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)),
                        batch_size=4)
    return Workload.inspect(model, loader, torch.optim.AdamW(model.parameters()))


@pytest.mark.parametrize("make, profile", GPU_BOXES, ids=[p for _, p in GPU_BOXES])
def test_each_gpu_profile_chosen_by_name_gives_bf16_pinned_workers(make, profile) -> None:
    hardware = make()
    plan = make_plan(hardware=hardware, profile=profile, manager=plugin_manager()).plan
    assert plan.profile == profile
    assert plan.get("mixed_precision", "dtype") == "bf16"  # every one of these GPUs has bf16
    assert plan.get("mixed_precision", "grad_scaler") is False  # bf16 needs no scaler
    assert plan.get("dataloader", "pin_memory") is True
    workers = plan.get("dataloader", "num_workers")
    assert 1 <= workers <= hardware.cpu.usable_cores


@pytest.mark.parametrize("make, profile", GPU_BOXES, ids=[p for _, p in GPU_BOXES])
def test_each_gpu_searches_precision_cuda_graphs_and_the_fused_optimizer(make, profile) -> None:
    planned = make_plan(hardware=make(), workload=resnet_workload(), manager=plugin_manager())
    assert planned.plan.profile == profile
    offered = planned.manager.candidates(planned.context, planned.plan)
    assert offered["mixed_precision"][0] == {"dtype": "bf16", "grad_scaler": False}
    assert {"dtype": "fp16", "grad_scaler": True} in offered["mixed_precision"]
    modes = [c["mode"] for c in offered["compile"]]
    assert modes[0] == "reduce-overhead" and "max-autotune" in modes and modes[-1] == "off"
    assert {"implementation": "fused"} in offered["optimizer"]
    assert {"enabled": True} in offered["channels_last"]
    # On the GPU device every one of them is worth a trial; on the CPU of
    # the same box, CUDA graphs and fp16 are pruned.
    manager, context = planned.manager, planned.context
    assert manager.prune_reason(context, "compile", {"mode": "reduce-overhead"}, "cuda") is None
    assert manager.prune_reason(context, "compile", {"mode": "reduce-overhead"}, "cpu")
    knobs = manager.knobs(context, planned.plan)
    searched = [g.plugin for g in search_groups(planned.plan, context, "cuda", knobs,
                                                manager=manager)]
    assert {"mixed_precision", "compile", "channels_last", "optimizer", "dataloader"} <= set(searched)


def test_a_pre_ampere_gpu_searches_fp16_with_a_scaler_and_no_bf16() -> None:
    t4 = fake_hardware(gpus=[fake_gpu("Tesla T4", 15, (7, 5))])
    planned = make_plan(hardware=t4, workload=resnet_workload(), manager=plugin_manager())
    precisions = planned.manager.candidates(planned.context, planned.plan)["mixed_precision"]
    assert {"dtype": "fp16", "grad_scaler": True} in precisions
    assert all(c["dtype"] != "bf16" for c in precisions)


# -- on a CUDA GPU ----------------------------------------------------------------


@requires(cuda=True)
def test_nvml_detection_agrees_with_torch_cuda() -> None:
    hardware = autotune.detect()
    assert hardware.has_cuda and len(hardware.gpus) == torch.cuda.device_count()
    gpu = hardware.gpus[0]
    assert gpu.name == torch.cuda.get_device_name(0)
    assert gpu.compute_capability == torch.cuda.get_device_capability(0)
    total = torch.cuda.get_device_properties(0).total_memory
    assert abs(gpu.memory_total_bytes - total) <= 0.05 * total
    assert gpu.source == "nvml" and gpu.driver_version  # nvidia-ml-py is a dependency


class Hungry(nn.Module):
    """Allocates ``per_sample`` bytes of GPU memory per sample in its forward:
    a real CUDA out-of-memory error above a batch size, from the allocator."""

    def __init__(self, per_sample: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.per_sample = per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.empty(x.shape[0] * self.per_sample, dtype=torch.uint8, device=x.device)
        return self.linear(x) + scratch[:1].float() * 0


@requires(cuda=True)
def test_the_batch_size_finder_survives_a_real_cuda_oom() -> None:
    from autotune.tuner.batch_size import find_batch_size

    free, _ = torch.cuda.mem_get_info()
    model = Hungry(per_sample=free // 40).cuda()  # about 40 samples fit
    loader = DataLoader(TensorDataset(torch.randn(512, 4), torch.randint(0, 2, (512,))),
                        batch_size=256)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    planned = make_plan(workload=Workload.inspect(model, loader),
                        manager=plugin_manager(disable=["compile", "dataloader", "threads"]))
    before = torch.cuda.memory_allocated()
    found = find_batch_size(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                            context=planned.context, manager=planned.manager, device="cuda")
    assert any("out of memory" in outcome for _, outcome in found.probes)
    assert 1 <= found.largest_fitting < found.smallest_oom <= 48
    assert found.effective_batch == 256 == found.micro_batch * found.accumulation_steps
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() <= before + 1024**2  # the OOM left nothing behind


@requires(cuda=True)
def test_reduce_overhead_trains_through_a_partial_last_batch_without_falling_back() -> None:
    """CUDA graphs need static shapes: 10 samples in batches of 4 end with a
    batch of 2, a new shape every epoch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    loader = DataLoader(TensorDataset(torch.randn(10, 8), torch.randint(0, 3, (10,))), batch_size=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=False, device="cuda",
                           overrides={"compile": {"mode": "reduce-overhead"},
                                      "optimizer": {"implementation": "fused"}})
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(tuned.loader, epochs=3)
        assert engine.compiled
    assert len(history.epochs) == 3
    assert all(torch.isfinite(torch.tensor(e.train_loss)) for e in history.epochs)
    fallbacks = [str(e) for e in tuned.report if e.kind.value == "fallback"]
    assert not fallbacks, fallbacks
    assert all(p.is_cuda for p in model.parameters())
