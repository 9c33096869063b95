"""The ``optimizer`` plugin: torch's fused and foreach kernels for the
user's own optimizer, switched in place, measured like any speed knob."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autotune.plugin.context import Workload
from autotune.engine.engine import Engine
from autotune.planner import make_plan
from autotune.plugins import optimizer as optimizer_plugin
from autotune.testing import plugin_manager

OPTIMIZERS = {
    "Adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "AdamW": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "SGD": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "Adagrad": lambda params: torch.optim.Adagrad(params, lr=0.1),
}


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(3)
    return DataLoader(TensorDataset(torch.randn(48, 6, generator=generator),
                                    torch.randint(0, 3, (48,), generator=generator)),
                      batch_size=8)


def only_optimizer(net: nn.Module, optimizer: torch.optim.Optimizer, implementation: str):
    manager = plugin_manager(disable=[n for n in plugin_manager().names() if n != "optimizer"])
    planned = make_plan(workload=Workload.inspect(net, data(), optimizer), manager=manager,
                        overrides={"optimizer": {"implementation": implementation}})
    return planned.plan, manager


def plain_pytorch(make_optimizer) -> nn.Module:
    net = model()
    optimizer = make_optimizer(net.parameters())
    for _ in range(2):
        for inputs, targets in data():
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(inputs), targets).backward()
            optimizer.step()
    return net


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_and_foreach_train_like_the_optimizer_as_built(name, implementation) -> None:
    reference = plain_pytorch(OPTIMIZERS[name])
    net = model()
    optimizer = OPTIMIZERS[name](net.parameters())
    plan, manager = only_optimizer(net, optimizer, implementation)
    with Engine(net, optimizer, nn.functional.cross_entropy, plan, manager=manager,
                progress=False) as engine:
        assert engine.describe()["optimizer_implementation"] == implementation
        assert engine.optimizer is optimizer  # switched in place, not replaced
        engine.fit(data(), epochs=2)
    for ours, theirs in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # Closing the engine gives the optimizer back as it was built.
    assert all(not g.get("fused") and not g.get("foreach") for g in optimizer.param_groups)


def test_state_param_groups_and_a_bound_scheduler_are_kept() -> None:
    net = model()
    optimizer = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 1e-2},
                                   {"params": net[2].parameters(), "lr": 1e-3}])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    inputs, targets = next(iter(data()))
    nn.functional.cross_entropy(net(inputs), targets).backward()
    optimizer.step()  # state exists before the switch
    moments = {id(p): optimizer.state[p]["exp_avg"].clone() for p in net.parameters()}
    plan, manager = only_optimizer(net, optimizer, "fused")
    with Engine(net, optimizer, nn.functional.cross_entropy, plan, manager=manager,
                scheduler=scheduler, progress=False) as engine:
        assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]
        for p in net.parameters():
            assert torch.equal(optimizer.state[p]["exp_avg"], moments[id(p)])
        engine.fit(data(), max_steps=2)
        assert int(optimizer.state[next(net.parameters())]["step"]) == 3
    # The scheduler stepped the same param groups the fused kernel used.
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.5e-3, 2.5e-4])


class Plain(torch.optim.Optimizer):
    """An optimizer of the user's own, without fused kernels."""

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.1})

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"])


def test_an_optimizer_without_fused_kernels_falls_back_and_the_plan_says_so() -> None:
    net = model()
    optimizer = Plain(net.parameters())
    plan, manager = only_optimizer(net, optimizer, "fused")
    with Engine(net, optimizer, nn.functional.cross_entropy, plan, manager=manager,
                progress=False) as engine:
        engine.fit(data(), max_steps=1)
        setting = engine.plan.setting("optimizer", "implementation")
    assert setting.value == "off" and "has no 'fused' option" in setting.reason
    assert any("fused not used" in e.message for e in engine.report.events)


def test_candidates_follow_the_users_optimizer() -> None:
    net = model()
    assert optimizer_plugin.candidates(Workload.inspect(net, None, torch.optim.Adam(
        net.parameters()))) == [{"implementation": "fused"}, {"implementation": "foreach"}]
    assert optimizer_plugin.candidates(Workload.inspect(net, None, Plain(net.parameters()))) == []


def test_an_unknown_implementation_is_refused_when_planned() -> None:
    from autotune.errors import AutotuneError

    net = model()
    with pytest.raises(AutotuneError, match="optimizer.implementation"):
        only_optimizer(net, torch.optim.Adam(net.parameters()), "turbo")
