"""The engine's step events: plugins change the step through hooks, in
pluggy's order, and a plugin that fails is left out of one engine only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autotune import hookimpl
from autotune.plugin.context import Workload
from autotune.engine.engine import Engine
from autotune.errors import TrainingError
from autotune.plan.plan import Setting, default
from autotune.planner import make_plan
from autotune.testing import BUILTIN_PLUGINS, plugin_manager

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _ema_module():
    name = "_ema_plugin_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "ema_plugin.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(5)
    return DataLoader(TensorDataset(torch.randn(24, 4, generator=generator),
                                    torch.randint(0, 2, (24,), generator=generator)),
                      batch_size=6)


def engine_with(*plugins, overrides=None, net=None, builtins=()):
    net = net or model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    manager = plugin_manager(plugins=list(plugins),
                             disable=[n for n in BUILTIN_PLUGINS if n not in builtins])
    planned = make_plan(workload=Workload.inspect(net, loader(), optimizer), manager=manager,
                        overrides=overrides or {})
    return Engine(net, optimizer, nn.functional.cross_entropy, planned.plan,
                  manager=planned.manager, progress=False)


# -- a complete plugin that changes the step (docs/engine.md's example) ----------------


def test_the_ema_example_averages_the_weights_after_each_step(tmp_path) -> None:
    ema = _ema_module()
    net = model()
    expected = [p.detach().clone() for p in net.parameters()]
    with engine_with(ema, overrides={"ema": {"decay": 0.5}}, net=net) as engine:
        engine.optimizer.register_step_post_hook(lambda opt, a, k: [
            e.mul_(0.5).add_(p.detach(), alpha=0.5) for e, p in zip(expected, net.parameters())])
        engine.fit(loader())
        assert engine.plan.setting("ema", "decay").source.value == "override"
        averaged = ema.averaged_state_dict(engine)
        engine.save(tmp_path / "ckpt.pt")
    for (name, _), e in zip(net.named_parameters(), expected):
        torch.testing.assert_close(averaged[name], e)
    with engine_with(ema, overrides={"ema": {"decay": 0.5}}) as restored:
        restored.load(tmp_path / "ckpt.pt")
        for name, value in ema.averaged_state_dict(restored).items():
            torch.testing.assert_close(value, averaged[name])


def test_installed_but_not_asked_for_the_ema_changes_nothing() -> None:
    ema = _ema_module()
    with engine_with(ema) as engine:
        assert engine.plan.get("ema", "decay") is None
        engine.fit(loader())
        with pytest.raises(ValueError, match="ema is off"):
            ema.averaged_state_dict(engine)


# -- order -------------------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str, log: list[str], **marks) -> None:
        self.NAME = name
        decorate = hookimpl(**marks) if marks else hookimpl

        def before() -> None:
            log.append(f"{name}:before_step")

        def apply(model):
            log.append(f"{name}:apply_model")

        self.autotune_before_optimizer_step = decorate(before)
        self.autotune_apply_model = decorate(apply)

    @hookimpl
    def autotune_configure(self) -> dict[str, Setting]:
        return {"on": default(True, "test")}


def test_tryfirst_and_trylast_order_the_step_and_apply_hooks() -> None:
    log: list[str] = []
    plugins = [Recorder("late", log, trylast=True), Recorder("plain", log),
               Recorder("early", log, tryfirst=True)]
    net = model()
    manager = plugin_manager(plugins=plugins, disable=BUILTIN_PLUGINS)
    planned = make_plan(workload=Workload.inspect(net), manager=manager)
    manager.apply_model(net, planned.plan, planned.context)
    assert log == ["early:apply_model", "plain:apply_model", "late:apply_model"]
    log.clear()
    with Engine(net, torch.optim.SGD(net.parameters(), lr=0.1), nn.functional.cross_entropy,
                planned.plan, manager=manager, progress=False) as engine:
        engine.train_step(next(iter(loader())))
    assert log == ["early:before_step", "plain:before_step", "late:before_step"]


def test_a_transform_marked_tryfirst_runs_before_compile() -> None:
    seen = []

    class Transform:
        NAME = "transform"

        @hookimpl
        def autotune_configure(self):
            return {"on": default(True, "test")}

        @hookimpl(tryfirst=True)
        def autotune_apply_model(self, model):
            seen.append(type(model).__name__)
            return None

    net = model()
    manager = plugin_manager(plugins=[Transform()],
                             disable=[n for n in BUILTIN_PLUGINS if n != "compile"])
    planned = make_plan(workload=Workload.inspect(net), manager=manager,
                        overrides={"compile": {"mode": "default"}})
    compiled = manager.apply_model(net, planned.plan, planned.context)
    assert seen == ["Sequential"]  # the user's module, not the OptimizedModule
    assert type(compiled).__name__ == "OptimizedModule"


# -- failures ------------------------------------------------------------------------------


class Flaky:
    """Fails in setup_engine the first ``failures`` times, then works."""

    NAME = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.steps = 0

    @hookimpl
    def autotune_configure(self):
        return {"on": default(True, "test")}

    @hookimpl
    def autotune_setup_engine(self, engine) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("no such device")
        engine.plugin_state(self.NAME)["ready"] = True

    @hookimpl
    def autotune_after_optimizer_step(self, engine) -> None:
        assert engine.plugin_state(self.NAME).get("ready")
        self.steps += 1


def test_a_plugin_failing_in_setup_is_left_out_of_that_engine_only() -> None:
    flaky = Flaky(failures=1)
    with engine_with(flaky) as first:
        first.fit(loader())
        assert "flaky" not in first.plan.settings  # the plan never claims it
        assert "setup_engine raised RuntimeError: no such device" in first.plan.disabled["flaky"]
        assert any(e.plugin == "flaky" and e.kind.value == "fallback"
                   for e in first.report.events)
    assert flaky.steps == 0
    with engine_with(flaky) as second:  # the next engine (the next trial) asks it again
        second.fit(loader())
        assert "flaky" in second.plan.settings
    assert flaky.steps == 4


def test_a_step_hook_that_raises_is_a_training_error_naming_the_plugin() -> None:
    class Broken:
        NAME = "broken"

        @hookimpl
        def autotune_configure(self):
            return {"on": default(True, "test")}

        @hookimpl
        def autotune_transform_loss(self, loss):
            raise ValueError("bad loss")

    with engine_with(Broken()) as engine:
        with pytest.raises(TrainingError, match="plugin 'broken' failed in "
                                                "autotune_transform_loss: ValueError: bad loss"):
            engine.train_step(next(iter(loader())))


def test_a_window_size_from_a_plugin_drives_the_optimizer_steps() -> None:
    class Every3:
        NAME = "every3"

        @hookimpl
        def autotune_configure(self):
            return {"on": default(True, "test")}

        @hookimpl
        def autotune_window_size(self, remaining):
            return 3 if remaining is None else min(3, remaining)

    with engine_with(Every3()) as engine:
        history = engine.fit(loader())  # 4 batches: windows of 3 and 1
        assert engine.optimizer_steps == 2 and engine.micro_batches_per_step == 3
        assert history[-1].effective_batch_size == 18


class EveryEvent:
    """Takes part in every engine event, recording the order they come in."""

    NAME = "every_event"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _log(self, name: str) -> None:
        self.calls.append(name)

    @hookimpl
    def autotune_configure(self):
        return {"on": default(True, "test")}

    @hookimpl
    def autotune_apply_optimizer(self, optimizer, engine, plan):
        self._log("apply_optimizer")

    @hookimpl
    def autotune_setup_engine(self, engine, plan):
        self._log("setup_engine")

    @hookimpl
    def autotune_epoch_start(self, engine, epoch):
        self._log(f"epoch_start {epoch}")

    @hookimpl
    def autotune_prepare_inputs(self, engine, inputs):
        self._log("prepare_inputs")
        return inputs * 1.0

    @hookimpl
    def autotune_forward_context(self, engine, training):
        self._log(f"forward_context {'train' if training else 'eval'}")
        return None

    @hookimpl
    def autotune_window_size(self, engine, remaining):
        self._log("window_size")
        return None

    @hookimpl
    def autotune_transform_loss(self, engine, loss):
        self._log("transform_loss")
        return None

    @hookimpl
    def autotune_before_optimizer_step(self, engine, optimizer, micro_batches):
        self._log(f"before_optimizer_step {micro_batches}")

    @hookimpl
    def autotune_optimizer_step(self, engine, optimizer):
        self._log("optimizer_step")
        optimizer.step()
        return True

    @hookimpl
    def autotune_after_optimizer_step(self, engine, optimizer, skipped):
        self._log(f"after_optimizer_step {skipped}")

    @hookimpl
    def autotune_epoch_end(self, engine, epoch):
        self._log(f"epoch_end {epoch}")
        return {"calls": float(len(self.calls))}

    @hookimpl
    def autotune_step_failed(self, engine, error, phase):
        self._log(f"step_failed {phase}")
        return None

    @hookimpl
    def autotune_engine_state(self, engine):
        return {"calls": len(self.calls)}

    @hookimpl
    def autotune_load_engine_state(self, engine, state):
        self._log(f"load_engine_state {state['calls']}")

    @hookimpl
    def autotune_describe_engine(self, engine):
        return {"every_event": True}


def test_the_events_of_one_step_in_order() -> None:
    plugin = EveryEvent()
    generator = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 4, generator=generator),
                                    torch.randint(0, 2, (8,), generator=generator)), batch_size=4)
    net = model()
    reference = model()
    with engine_with(plugin, net=net) as engine:
        history = engine.fit(data)
        assert engine.describe()["every_event"] is True
        state = engine.state_dict()
        engine.load_state_dict(state)
    one_step = ["window_size", "prepare_inputs", "forward_context train", "transform_loss",
                "before_optimizer_step 1", "optimizer_step", "after_optimizer_step False"]
    # fit asks for the full window once (the effective batch), describe() once.
    assert plugin.calls == ["apply_optimizer", "setup_engine", "epoch_start 1",
                            *one_step, "window_size", *one_step, "epoch_end 1", "window_size",
                            "load_engine_state 20"]
    assert history[-1].extra == {"calls": 19.0}
    assert state["plugins"]["every_event"] == {"calls": 20}
    # Hooks that change nothing leave plain PyTorch's result.
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for inputs, targets in data:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(reference(inputs), targets).backward()
        optimizer.step()
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_a_failed_step_is_offered_to_the_plugins_and_retried() -> None:
    """The compile plugin's fallback, through the hook any plugin has."""
    from autotune.engine.step import Recovery

    class FailsOnce(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model()
            self.failed = False

        def forward(self, x):
            if not self.failed:
                self.failed = True
                raise RuntimeError("kernel not found")
            return self.inner(x)

    class Retry:
        NAME = "retry"
        reasons: list[str] = []

        @hookimpl
        def autotune_configure(self):
            return {"on": default(True, "test")}

        @hookimpl
        def autotune_step_failed(self, engine, error, phase):
            return Recovery(undo=lambda: None, done=self.reasons.append)

    retry = Retry()
    with engine_with(retry, net=FailsOnce()) as engine:
        engine.train_step(next(iter(loader())))
    assert retry.reasons == ["RuntimeError during training: kernel not found"]
    assert engine.optimizer_steps == 1


class Changes:
    """A live adapter (autotune.engine.step.LiveHook) that records when the engine calls it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def at_epoch_start(self, epoch: int) -> None:
        self.log.append(f"adapter epoch {epoch}")

    def at_step(self) -> None:
        self.log.append("adapter step")


class MakesAnAdapter:
    NAME = "makes_an_adapter"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def autotune_configure(self):
        return {"on": default(True, "test")}

    @hookimpl
    def autotune_live_adapter(self, engine, plan):
        self.calls.append("live_adapter")
        return Changes(self.calls)

    @hookimpl
    def autotune_epoch_start(self, engine, epoch):
        self.calls.append(f"epoch_start {epoch}")

    @hookimpl
    def autotune_after_optimizer_step(self, engine):
        self.calls.append("after_optimizer_step")


def test_live_adapters_are_the_plugins_unless_the_builder_names_them() -> None:
    plugin = MakesAnAdapter()
    with engine_with(plugin) as engine:
        assert [type(a) for a in engine.live_adapters] == [Changes]
        assert engine.describe()["step_hooks"]["live_adapter"] == ["makes_an_adapter"]
        engine.fit(DataLoader(TensorDataset(torch.randn(4, 4), torch.zeros(4, dtype=torch.long)),
                              batch_size=2))
    # Made once, after set-up; called after the plugins' own epoch and step events.
    assert plugin.calls == ["live_adapter", "epoch_start 1", "adapter epoch 1",
                            "after_optimizer_step", "adapter step",
                            "after_optimizer_step", "adapter step"]
    # A tuner's trial is built with none: the hook is not asked, nothing is called.
    plugin.calls.clear()
    net = model()
    planned = make_plan(workload=Workload.inspect(net, loader()), manager=plugin_manager(
        plugins=[plugin], disable=BUILTIN_PLUGINS))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with Engine(net, optimizer, nn.functional.cross_entropy, planned.plan,
                manager=planned.manager, progress=False, live=()) as trial:
        trial.fit(loader(), max_steps=1)
    assert trial.live_adapters == () and plugin.calls == ["epoch_start 1", "after_optimizer_step"]
    # Or the builder names them: made from the engine, driven the same way.
    seen: list[str] = []
    with Engine(net, optimizer, nn.functional.cross_entropy, live=[lambda e: Changes(seen)],
                progress=False) as own:
        own.fit(loader(), max_steps=1)
    assert seen == ["adapter epoch 1", "adapter step"]
