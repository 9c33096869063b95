"""Tuning never trains or changes the user's model: everything is restored
bitwise after real trials. And the opt-in batch-size search, with
out-of-memory injected the way CUDA raises it, through the real code path."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autotune import hookimpl
from autotune.plugin.context import Workload
from autotune.errors import TrainingError
from autotune.plan.plan import Setting, Source
from autotune.planner import make_plan
from autotune.testing import BUILTIN_PLUGINS, plugin_manager
from autotune.tuner import SearchOptions, TrialOptions, find_batch_size, tune
from autotune.tuner.state import Snapshot

FAST = SearchOptions(trial=TrialOptions(warmup_steps=2, chunks=3, chunk_s=0.02))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def images(n: int = 48, batch: int = 8, generator: torch.Generator | None = None) -> DataLoader:
    data = torch.Generator().manual_seed(3)
    return DataLoader(TensorDataset(torch.randn(n, 3, 8, 8, generator=data),
                                    torch.randint(0, 3, (n,), generator=data)),
                      batch_size=batch, shuffle=True, generator=generator)


def flags() -> dict[str, Any]:
    return {"threads": torch.get_num_threads(), "benchmark": torch.backends.cudnn.benchmark,
            "matmul": torch.backends.cuda.matmul.fp32_precision,
            "conv": torch.backends.cudnn.conv.fp32_precision}


def test_tuning_restores_model_optimizer_rng_and_flags_bitwise() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = images(generator=torch.Generator().manual_seed(7))
    # Some history: optimizer state, BatchNorm statistics, leftover gradients.
    for inputs, targets in list(loader)[:2]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    model.eval()
    random.seed(5)
    np.random.seed(5)
    params = {n: (p, p.detach().clone(), p.stride(), p.grad.clone()) for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    opt_state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                 for i, s in optimizer.state_dict()["state"].items()}
    groups = optimizer.state_dict()["param_groups"]
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(),
           loader.generator.get_state())
    flags_before = flags()

    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager())
    result = tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                  context=planned.context, manager=planned.manager, device="cpu",
                  options=SearchOptions(trial=FAST.trial, only=(
                      "mixed_precision", "channels_last", "dataloader")), progress=False)

    measured = result.report.measured_trials()
    assert len(measured) >= 4 and all(t.chunk_rates for t in measured if t.ok)
    assert any(t.changes.get("channels_last") for t in measured)
    assert any(t.changes.get("dataloader", {}).get("num_workers") for t in measured)
    for name, (param, value, stride, grad) in params.items():
        live = dict(model.named_parameters())[name]
        assert live is param, f"{name}: the Parameter object was replaced"
        assert torch.equal(param, value) and param.stride() == stride, name
        assert torch.equal(param.grad, grad), name
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    state = optimizer.state_dict()
    assert state["param_groups"] == groups
    for index, values in opt_state.items():
        for key, value in values.items():
            assert torch.equal(state["state"][index][key], value), (index, key)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert torch.equal(loader.generator.get_state(), rng[3])
    assert flags() == flags_before
    assert not model.training and all(not m.training for m in model.modules())


def test_snapshot_restores_a_channels_last_model_to_its_layout() -> None:
    model = SmallCNN()
    snapshot = Snapshot.capture(model)
    model.to(memory_format=torch.channels_last)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    snapshot.restore()
    assert model.conv.weight.is_contiguous()


class Fragile(nn.Module):
    """Runs out of memory above a batch size, as a GPU would: the same
    exception type torch raises (torch.cuda.OutOfMemoryError), from inside
    the forward pass the engine runs."""

    def __init__(self, train_limit: int, eval_limit: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.train_limit = train_limit
        self.eval_limit = eval_limit if eval_limit is not None else train_limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = self.train_limit if self.training else self.eval_limit
        if x.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {x.shape[0]} MiB")
        return self.linear(x)


def vectors(batch: int, n: int = 256) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=generator),
                                    torch.randint(0, 2, (n,), generator=generator)),
                      batch_size=batch, shuffle=True)


def batch_plan(model: nn.Module, loader: DataLoader, steps: int) -> Any:
    return make_plan(workload=Workload.inspect(model, loader),
                     manager=plugin_manager(disable=["compile", "dataloader", "threads"]),
                     overrides={"accumulation": {"steps": steps}})


@pytest.mark.parametrize("batch, steps, expected_micro", [(8, 4, 16), (64, 1, 16)])
def test_batch_size_search_keeps_the_effective_batch(batch: int, steps: int,
                                                     expected_micro: int) -> None:
    model = Fragile(train_limit=20)
    loader = vectors(batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    planned = batch_plan(model, loader, steps)
    found = find_batch_size(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                            context=planned.context, manager=planned.manager, device="cpu")
    assert found.effective_batch == batch * steps == found.micro_batch * found.accumulation_steps
    assert found.largest_fitting == 20 and found.smallest_oom == 21
    # 20 fits; with the 10% margin at most 18; the largest divisor of the
    # effective batch below that is 16.
    assert found.micro_batch == expected_micro
    assert any("out of memory" in outcome for _, outcome in found.probes)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert found.loader(loader).batch_size == expected_micro


def test_evaluation_oom_never_changes_the_training_batch() -> None:
    model = Fragile(train_limit=64, eval_limit=4)
    loader = vectors(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    planned = batch_plan(model, loader, 4)
    found = find_batch_size(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                            context=planned.context, manager=planned.manager, device="cpu",
                            val_loader=vectors(8))
    assert found.micro_batch == 32 and found.accumulation_steps == 1
    assert found.eval_fits is False and "training batch is unchanged" in found.note


def test_apply_with_batch_size_search_records_accumulation_as_measured() -> None:
    import autotune

    model = Fragile(train_limit=20)
    loader = vectors(64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = dict(optimizer=optimizer, loss_fn=nn.functional.cross_entropy, device="cpu",
                  batch_size=True, tune=SearchOptions(trial=FAST.trial, only=("channels_last",)),
                  manager=plugin_manager(disable=["compile", "dataloader", "threads"]))
    tuned = autotune.apply(model, loader, **kwargs)
    assert tuned.loader.batch_size == 16 and loader.batch_size == 64
    steps = tuned.plan.setting("accumulation", "steps")
    assert steps.value == 4 and steps.source is Source.MEASURED

    # accumulation.steps set by the user: the effective batch cannot be kept
    # with another micro-batch, so the batch size is left alone (and said so).
    # The batch of 64 then does not fit: with tune=True that is an error,
    # by default one warning naming it.
    kwargs["manager"] = plugin_manager(disable=["compile", "dataloader", "threads"])
    with pytest.raises(TrainingError, match="could not train this model.*out of memory"):
        autotune.apply(model, loader, overrides={"accumulation": {"steps": 2}}, **kwargs)
    kwargs.update(manager=plugin_manager(disable=["compile", "dataloader", "threads"]), tune=None)
    tuned = autotune.apply(model, loader, overrides={"accumulation": {"steps": 2}}, **kwargs)
    assert tuned.loader.batch_size == 64
    assert tuned.plan.setting("accumulation", "steps").source is Source.OVERRIDE
    assert any(e.plugin == "tuner" and "accumulation.steps" in e.message for e in tuned.report)
    assert any("could not train this model" in e.message for e in tuned.report)


def test_a_loader_rebuilt_for_another_batch_size_keeps_what_the_user_set() -> None:
    from autotune.tuner.batch_size import BatchSizeResult, with_batch_size

    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.zeros(32)), batch_size=8,
                        shuffle=True, drop_last=True, num_workers=1, timeout=7.0, in_order=False,
                        prefetch_factor=3, persistent_workers=True)
    found = BatchSizeResult(4, 2, 8, 5, 6, ())
    for rebuilt in (with_batch_size(loader, 4), found.loader(loader)):
        assert rebuilt.batch_size == 4 and rebuilt.drop_last and rebuilt.sampler is loader.sampler
        assert rebuilt.timeout == 7.0 and rebuilt.in_order is False
        assert rebuilt.num_workers == 1 and rebuilt.prefetch_factor == 3
        assert rebuilt.persistent_workers
    assert loader.batch_size == 8  # the user's loader is left as it was
    probe = with_batch_size(loader, 2, num_workers=0)  # probes load in this process
    assert probe.batch_size == 2 and probe.num_workers == 0 and probe.in_order is False


class Windows:
    """A third-party plugin that owns micro-batches per optimizer step."""

    NAME = "windows"

    def __init__(self) -> None:
        self.engine_sizes: list[int] = []

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        return {"size": Setting(3, Source.DEFAULT, "three micro-batches per step")}

    @hookimpl
    def autotune_micro_batches(self, plan: Any) -> int:
        return plan.get(self.NAME, "size")

    @hookimpl
    def autotune_batch_size_found(self, batch_size: int, effective_batch: int) -> Any:
        return {"size": Setting(effective_batch // batch_size, Source.MEASURED, "found")}

    @hookimpl
    def autotune_setup_engine(self, engine: Any, plan: Any) -> None:
        self.engine_sizes.append(plan.get(self.NAME, "size"))


def test_the_plugin_that_declares_micro_batches_keeps_the_effective_batch() -> None:
    from autotune.tuner.batch_size import kept_by_user, with_settings

    model, loader = Fragile(train_limit=20), vectors(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    windows = Windows()
    planned = make_plan(workload=Workload.inspect(model, loader),
                        manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[windows]))
    found = find_batch_size(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                            context=planned.context, manager=planned.manager, device="cpu")
    assert found.effective_batch == 24 and found.micro_batch == 12  # 20 fits; 18 with margin
    assert set(windows.engine_sizes) == {1}  # every probe steps at each micro-batch
    plan = with_settings(planned.plan, planned.manager.batch_size_found(
        planned.plan, planned.context, found.micro_batch, found.effective_batch))
    assert plan.setting("windows", "size") == Setting(2, Source.MEASURED, "found")
    assert kept_by_user(planned.plan, planned.manager, planned.context, 8) is None
    fixed = make_plan(workload=Workload.inspect(model, loader), overrides={"windows": {"size": 2}},
                      manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[Windows()]))
    assert kept_by_user(fixed.plan, fixed.manager, fixed.context, 8) == (
        "windows.size is set by the user")
    alone = make_plan(manager=plugin_manager(disable=BUILTIN_PLUGINS))
    assert "no plugin" in kept_by_user(alone.plan, alone.manager, alone.context, 8)
