"""torch.compile in the engine: a model that fails to compile still trains
(eagerly), the reason is in the report and the plan, and checkpoints carry
the user's own keys. Failures are real: dynamo rejecting a model under
fullgraph=True, and a compiler backend that raises on the backward graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune.workload.batches import is_compiled
from autotune.engine.engine import Engine
from autotune.testing import plugin_manager

OTHERS = ("threads", "mixed_precision", "accumulation", "clipping", "channels_last",
          "dataloader", "parallel_folds")


class DataDependent(nn.Module):
    """Branches on a tensor's value: fine eagerly, but torch.compile with
    fullgraph=True rejects it (it cannot trace a data-dependent branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if y.sum().item() > 1e9:
            y = y * 0
        return y


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 4, generator=generator),
                                    torch.randint(0, 2, (8,), generator=generator)), batch_size=4)


def train_plainly(model: nn.Module, loader: DataLoader) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, targets in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model


def test_model_rejected_by_the_compiler_trains_eagerly_with_the_reason_recorded() -> None:
    torch.manual_seed(0)
    model = DataDependent()
    reference = train_plainly(copy.deepcopy(model), data())
    tuned = autotune.apply(model, data(), device="cpu", manager=plugin_manager(disable=OTHERS),
                           overrides={"compile": {"mode": "default", "fullgraph": True}})
    assert is_compiled(tuned.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(tuned.loader)
        assert not engine.compiled and engine.model is model
        setting = engine.plan.setting("compile", "mode")
    assert history[-1].optimizer_steps == 2
    assert setting.value == "off" and setting.source.value == "measured"
    assert "torch.compile failed, trained eagerly" in setting.reason
    [fallback] = tuned.report.fallbacks
    assert fallback.plugin == "compile" and "during training" in fallback.message
    assert tuned.plan.get("compile", "mode") == "default"  # what was asked for stays on record
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)


def test_backend_failing_on_the_backward_graph_falls_back_too() -> None:
    from torch._dynamo.backends.common import aot_autograd

    def forward_compiler(graph, example_inputs):
        return graph.forward

    def broken_backward_compiler(graph, example_inputs):
        raise RuntimeError("backward compiler crashed")

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=broken_backward_compiler)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference = train_plainly(copy.deepcopy(model), data())
    manager = plugin_manager(disable=OTHERS)
    plan = autotune.make_plan(manager=manager,
                              overrides={"compile": {"mode": "default"}}).plan
    with Engine(torch.compile(model, backend=backend), torch.optim.SGD(model.parameters(), lr=0.1),
                nn.functional.cross_entropy, plan, manager=manager, progress=False) as engine:
        engine.fit(data())
        assert "backward compiler crashed" in engine.report.fallbacks[0].message
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)


def test_a_genuine_model_error_is_not_hidden_by_the_fallback() -> None:
    model = nn.Linear(3, 2)  # the data has 4 features: wrong in any mode
    tuned = autotune.apply(model, data(), device="cpu", manager=plugin_manager(disable=OTHERS),
                           overrides={"compile": {"mode": "default"}})
    engine = tuned.engine(torch.optim.SGD(model.parameters(), lr=0.1),
                          nn.functional.cross_entropy, progress=False)
    with engine, pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        engine.fit(tuned.loader)
    assert not tuned.report.fallbacks and engine.compiled  # nothing to fall back from


def test_compiled_checkpoints_have_the_users_keys(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    keys = list(model.state_dict())
    manager = plugin_manager(disable=OTHERS)
    plan = autotune.make_plan(manager=manager, overrides={"compile": {"mode": "default"}}).plan
    compiled = torch.compile(model, backend="eager")  # dynamo without a code generator: quick
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    with Engine(compiled, torch.optim.SGD(model.parameters(), lr=0.1),
                nn.functional.cross_entropy, plan, manager=manager, progress=False) as engine:
        engine.fit(data())
        assert engine.compiled
        engine.save(tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert list(state["model"]) == keys
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    fresh.load_state_dict(state["model"])  # a plain model loads it as it is
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)
