"""Every built-in plugin takes real effect, and switching it off gives back
PyTorch's default for its part (composer-style: one registry of cases, each
training a real small model for two batches with the plugin on and off)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

import autotune
from autotune.testing import BUILTIN_PLUGINS, plugin_manager

BATCH = 4


class MarkedImages(Dataset):
    """3x6x6 images whose first pixel says which process loaded them:
    0 for the main process, worker id + 1 inside a DataLoader worker."""

    def __init__(self, n: int = 16) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, 6, 6, generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].clone()
        info = get_worker_info()
        image[0, 0, 0] = 0.0 if info is None else info.id + 1.0
        return image, self.labels[index]


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


@dataclass
class Run:
    """What two real training batches showed."""

    tuned: Any
    engine: Any
    initial: nn.Module                      # a copy of the weights before training
    batches: list[Any]                      # the batches as the user's loader yields them
    head_output_dtypes: list[torch.dtype] = field(default_factory=list)
    inputs_channels_last: list[bool] = field(default_factory=list)
    markers: set[float] = field(default_factory=set)
    threads_in_forward: list[int] = field(default_factory=list)
    env_in_forward: list[str | None] = field(default_factory=list)
    grads_at_step: list[dict[str, torch.Tensor]] = field(default_factory=list)
    threads_before: int = 0
    threads_after_close: int = 0
    graphs_compiled: int = 0
    #: (fused, foreach) of the optimizer's first param group at each step.
    optimizer_flags: list[tuple[Any, Any]] = field(default_factory=list)
    optimizer_flags_after_close: tuple[Any, Any] = (None, None)

    @property
    def module(self) -> nn.Module:
        return self.engine.module


def reference_grads(run: Run, batches: list[Any]) -> dict[str, torch.Tensor]:
    """Plain PyTorch: the gradient of the mean loss of ``batches`` at the
    initial weights (micro-batches of equal size)."""
    model = copy.deepcopy(run.initial)
    model.zero_grad()
    for inputs, targets in batches:
        (nn.functional.cross_entropy(model(inputs), targets) / len(batches)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def total_norm(grads: Mapping[str, torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))


def train_two_batches(case: "PluginCase", enabled: bool) -> Run:
    torch.manual_seed(0)
    model = ConvNet()
    initial = copy.deepcopy(model)
    dataset = MarkedImages()
    loader = DataLoader(dataset, batch_size=BATCH)
    disable = [*case.always_disable] + ([] if enabled else [case.name])
    tuned = autotune.apply(model, loader, device="cpu", manager=plugin_manager(disable=disable),
                           overrides=case.overrides if enabled else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = Run(tuned=tuned, engine=None, initial=initial,
              batches=[b for _, b in zip(range(2), loader)],
              threads_before=torch.get_num_threads())

    def before_forward(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        run.inputs_channels_last.append(x.is_contiguous(memory_format=torch.channels_last)
                                        and not x.is_contiguous())
        run.markers.update(x[:, 0, 0, 0].float().tolist())
        run.threads_in_forward.append(torch.get_num_threads())
        run.env_in_forward.append(os.environ.get("OMP_NUM_THREADS"))

    def after_head(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        run.head_output_dtypes.append(output.dtype)

    def before_step(opt: Any, args: Any, kwargs: Any) -> None:
        run.grads_at_step.append({n: p.grad.clone() for n, p in model.named_parameters()})
        group = opt.param_groups[0]
        run.optimizer_flags.append((group.get("fused"), group.get("foreach")))

    hooks = []
    if case.name != "compile":  # dynamo would trace these hooks into its graphs
        hooks = [model.register_forward_pre_hook(before_forward),
                 model.head.register_forward_hook(after_head)]
    hooks.append(optimizer.register_step_pre_hook(before_step))
    import torch._dynamo.utils as dynamo_utils

    graphs_before = dynamo_utils.counters["stats"]["unique_graphs"]
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        run.engine = engine
        engine.fit(tuned.loader, epochs=1, max_steps=2)
    run.graphs_compiled = dynamo_utils.counters["stats"]["unique_graphs"] - graphs_before
    run.threads_after_close = torch.get_num_threads()
    group = optimizer.param_groups[0]
    run.optimizer_flags_after_close = (group.get("fused"), group.get("foreach"))
    for hook in hooks:
        hook.remove()
    return run


# -- the cases -------------------------------------------------------------------------


def check_precision(run: Run, on: bool) -> None:
    assert run.head_output_dtypes == [torch.bfloat16 if on else torch.float32] * 2
    assert (run.engine.describe().get("autocast_dtype") == "torch.bfloat16") is on


def check_accumulation(run: Run, on: bool) -> None:
    if on:  # one optimizer step, on the mean gradient of both micro-batches
        assert len(run.grads_at_step) == 1
        expected = reference_grads(run, run.batches)
        assert run.engine.history[-1].effective_batch_size == 2 * BATCH
    else:  # PyTorch: a step per batch, on that batch's gradient alone
        assert len(run.grads_at_step) == 2
        expected = reference_grads(run, run.batches[:1])
        assert run.engine.history[-1].effective_batch_size == BATCH
    for name, grad in expected.items():
        torch.testing.assert_close(run.grads_at_step[0][name], grad, rtol=1e-4, atol=1e-6)


MAX_NORM = 0.01


def check_clipping(run: Run, on: bool) -> None:
    plain = reference_grads(run, run.batches[:1])
    assert total_norm(plain) > 10 * MAX_NORM  # so clipping has something to do
    seen = run.grads_at_step[0]
    if on:
        assert total_norm(seen) == pytest.approx(MAX_NORM, rel=1e-3)
        assert run.engine.history[-1].extra.get("clipping.grad_norm") is not None
        # The recorded norm is the pre-clip one, i.e. the plain gradient's.
        for name, grad in plain.items():
            torch.testing.assert_close(seen[name], grad * (MAX_NORM / total_norm(plain)),
                                       rtol=1e-3, atol=1e-7)
    else:
        assert run.engine.history[-1].extra.get("clipping.grad_norm") is None
        for name, grad in plain.items():
            torch.testing.assert_close(seen[name], grad, rtol=1e-5, atol=1e-7)


def check_compile(run: Run, on: bool) -> None:
    from autotune.workload.batches import is_compiled

    assert is_compiled(run.tuned.model) is on
    assert (run.graphs_compiled > 0) is on
    assert not run.tuned.report.fallbacks
    # Checkpoints carry the user's own keys either way.
    assert list(run.engine.state_dict()["model"]) == list(run.initial.state_dict())


def check_channels_last(run: Run, on: bool) -> None:
    weight = run.module.conv.weight
    assert (weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous()) is on
    assert run.inputs_channels_last == [on, on]


def check_dataloader(run: Run, on: bool) -> None:
    assert run.tuned.loader.num_workers == (2 if on else 0)
    # The batches really came from worker processes (markers 1 and 2), or
    # from this process (marker 0).
    assert run.markers == ({1.0, 2.0} if on else {0.0})


def check_threads(run: Run, on: bool) -> None:
    default = run.threads_before
    assert run.threads_after_close == default
    if on:
        assert run.threads_in_forward == [1, 1]
        assert run.env_in_forward == ["1", "1"]
    else:
        assert run.threads_in_forward == [default, default]
        assert run.env_in_forward == [os.environ.get("OMP_NUM_THREADS")] * 2


def check_optimizer(run: Run, on: bool) -> None:
    # The user's SGD, stepped by torch's fused kernel while the engine ran,
    # and given back as built when it closed.
    assert run.optimizer_flags == ([(True, False)] * 2 if on else [(None, None)] * 2)
    assert run.optimizer_flags_after_close == (None, None)
    assert run.engine.optimizer_steps == 2


def check_parallel_folds(run: Run, on: bool) -> None:
    plan = run.tuned.plan
    if on:
        assert set(plan.values("parallel_folds")) == {"max_concurrent", "threads_per_fold",
                                                      "backend"}
    else:
        assert "parallel_folds" not in plan
        assert "disable" in plan.disabled["parallel_folds"]
    assert run.engine.optimizer_steps == 2


def check_daemon(run: Run, on: bool) -> None:
    # No daemon listens in the tests (conftest): on, the plugin adds nothing to
    # the plan or the step. Its effect with a daemon: test_coordinator.py and
    # test_daemon_jobs.py.
    plan = run.tuned.plan
    assert "daemon" not in plan
    assert ("daemon" in plan.disabled) is not on
    assert not any("daemon" in plugins for plugins in run.engine.describe()["step_hooks"].values())
    assert run.engine.live_adapters == ()
    assert run.engine.optimizer_steps == 2


@dataclass(frozen=True)
class PluginCase:
    name: str
    check: Callable[[Run, bool], None]
    #: Settings that make the plugin's effect visible on this tiny run.
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Plugins off in both runs, where their numerics would blur the check.
    always_disable: tuple[str, ...] = ()


CASES = {case.name: case for case in [
    PluginCase("mixed_precision", check_precision, {"mixed_precision": {"dtype": "bf16"}}),
    PluginCase("accumulation", check_accumulation, {"accumulation": {"steps": 2}},
               always_disable=("mixed_precision", "clipping")),
    PluginCase("clipping", check_clipping, {"clipping": {"max_norm": MAX_NORM}},
               always_disable=("mixed_precision",)),
    PluginCase("compile", check_compile, {"compile": {"mode": "default"}},
               always_disable=("mixed_precision", "dataloader")),
    PluginCase("channels_last", check_channels_last, {"channels_last": {"enabled": True}}),
    PluginCase("dataloader", check_dataloader, {"dataloader": {"num_workers": 2}}),
    PluginCase("threads", check_threads, {"threads": {"intra_op": 1, "set_env": True}}),
    PluginCase("optimizer", check_optimizer, {"optimizer": {"implementation": "fused"}}),
    PluginCase("parallel_folds", check_parallel_folds),
    PluginCase("daemon", check_daemon),
]}


def test_every_builtin_plugin_has_a_case() -> None:
    assert set(CASES) == set(BUILTIN_PLUGINS)


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_plugin_effect_and_pytorch_default_when_disabled(name: str, enabled: bool) -> None:
    case = CASES[name]
    run = train_two_batches(case, enabled)
    assert run.engine.micro_steps == 2
    assert all(torch.isfinite(p).all() for p in run.module.parameters())
    case.check(run, enabled)
