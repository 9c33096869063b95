"""autotune.apply end to end: the user's objects stay usable, bad input is a
clear error, a failing plugin is named and left out."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune.api import Tuned, apply, apply_plan
from autotune.errors import AutotuneError, PluginError
from autotune.plugin.markers import hookimpl
from autotune.plugin.manager import PluginWarning
from autotune.testing import plugin_manager


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def images(n: int = 12) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 8, 8, generator=generator),
                                    torch.randint(0, 2, (n,), generator=generator)),
                      batch_size=4, shuffle=True)


def test_apply_end_to_end_keeps_the_users_objects_usable() -> None:
    torch.manual_seed(0)
    model, loader = SmallCNN(), images()
    keys = list(model.state_dict())
    # An optimizer built before apply: apply converts in place, so it still
    # holds the parameters that train.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    tuned = autotune.apply(model, loader, optimizer=optimizer, device="cpu",
                           manager=plugin_manager())
    assert isinstance(tuned, Tuned) and tuned.device == torch.device("cpu")
    assert set(tuned.plan.plugins()) == {"threads", "mixed_precision", "accumulation",
                                         "clipping", "channels_last", "compile", "optimizer",
                                         "dataloader", "parallel_folds"}
    assert tuned.context.workload.has_conv2d
    assert {e.plugin for e in tuned.report} >= {"channels_last", "compile", "dataloader"}
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(tuned.loader, epochs=2, val_loader=loader)
    assert len(history) == 2 and history[-1].val_loss is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # The user's model: same object, same keys, still callable on ordinary input.
    assert tuned.model is model and list(model.state_dict()) == keys
    model.eval()
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 2)
    # The user's loader: untouched and still iterable.
    assert loader.num_workers == 0 and len(list(loader)) == 3
    assert tuned.recommendation is not None and tuned.plan.profile


def test_apply_is_exported_and_imports_lazily() -> None:
    assert autotune.apply is apply
    assert autotune.Engine.__name__ == "Engine"
    with pytest.raises(AttributeError):
        autotune.no_such_thing  # noqa: B018


@pytest.mark.parametrize("call, message", [
    (lambda: apply("not a model", None), "model must be a torch.nn.Module, got str"),
    (lambda: apply(nn.Linear(2, 2), None, device="tpu9"), "device='tpu9' is not a torch device"),
    (lambda: apply(nn.Linear(2, 2), None, overrides={"accumulation": {"stpes": 2}},
                   manager=plugin_manager()), r"unknown key\(s\) \['stpes'\]"),
])
def test_bad_input_is_a_one_line_autotune_error(call, message) -> None:
    with pytest.raises(AutotuneError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_unknown_plugin_to_disable_is_an_error() -> None:
    with pytest.raises(PluginError, match="unknown plugin name"):
        apply(nn.Linear(2, 2), None, disable=["turbo"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_an_error() -> None:
    with pytest.raises(AutotuneError, match="CUDA is not available"):
        apply(nn.Linear(2, 2), None, device="cuda")


class ExplodingPlugin:
    """A third-party plugin whose apply hook has a bug."""

    NAME = "exploding"
    setup_calls: list = []

    @hookimpl
    def autotune_configure(self, context):
        return {"level": 11}

    @hookimpl
    def autotune_apply_model(self, model, plan):
        raise RuntimeError("kaboom")

    @hookimpl
    def autotune_setup_engine(self, engine, plan):
        self.setup_calls.append(engine)  # a plugin that failed must not be asked again


def test_a_plugin_failing_in_its_apply_hook_is_named_and_left_out() -> None:
    model = nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), batch_size=2)
    plugin = ExplodingPlugin()
    with pytest.warns(PluginWarning, match="plugin 'exploding' failed in autotune_apply_model"):
        tuned = apply(model, loader, device="cpu", manager=plugin_manager(plugins=[plugin]))
    [event] = tuned.report.for_plugin("exploding")
    assert event.kind.value == "fallback" and "kaboom" in event.message
    with tuned.engine(torch.optim.SGD(model.parameters(), lr=0.1),
                      nn.functional.cross_entropy, progress=False) as engine:
        engine.fit(tuned.loader)
    assert engine.optimizer_steps == 2 and plugin.setup_calls == []


def test_apply_plan_applies_a_given_plan_to_fresh_objects() -> None:
    planned = autotune.make_plan(manager=plugin_manager(),
                                 overrides={"accumulation": {"steps": 2}})
    model = nn.Linear(3, 2)
    tuned = apply_plan(model, None, planned.plan, context=planned.context,
                       manager=planned.manager, device="cpu")
    assert tuned.loader is None and tuned.recommendation is None
    with tuned.engine(torch.optim.SGD(model.parameters(), lr=0.1),
                      nn.functional.cross_entropy, progress=False) as engine:
        assert engine.micro_batches_per_step == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_apply_end_to_end_on_cuda() -> None:
    model, loader = SmallCNN(), images()
    tuned = autotune.apply(model, loader, manager=plugin_manager())
    assert tuned.device.type == "cuda" and next(model.parameters()).is_cuda
    with tuned.engine(torch.optim.SGD(model.parameters(), lr=0.1),
                      nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(tuned.loader, epochs=1, val_loader=loader)
    assert history[-1].samples == 12 and history[-1].val_loss is not None
