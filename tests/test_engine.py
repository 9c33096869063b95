"""The training engine: PyTorch-equal defaults, accumulation, loss scaling,
scheduler, monitor, history, progress, checkpoints, close."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import autotune
from autotune.engine.engine import Engine
from autotune.errors import AutotuneError, TrainingError
from autotune.engine.history import History
from autotune.plan.plan import Plan
from autotune.display.progress import progress_enabled
from autotune.plugins import clipping, mixed_precision
from autotune.testing import plugin_manager

ALL_PLUGINS = ("threads", "mixed_precision", "accumulation", "clipping", "channels_last",
               "compile", "dataloader", "parallel_folds")


def make_data(n: int = 10, features: int = 5, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=generator),
                         torch.randint(0, 3, (n,), generator=generator))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def only(*enabled: str, overrides: dict | None = None):
    """A plan with just ``enabled`` plugins on (the rest disabled)."""
    disable = [p for p in ALL_PLUGINS if p not in enabled]
    planned = autotune.make_plan(manager=plugin_manager(disable=disable), overrides=overrides)
    return planned.plan, planned.manager


def engine_for(model: nn.Module, plan: Plan, manager=None, lr: float = 0.1, **kwargs) -> Engine:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Engine(model, optimizer, nn.functional.cross_entropy, plan, manager=manager,
                  progress=False, **kwargs)


def test_engine_without_plugins_is_plain_pytorch() -> None:
    data = make_data()
    model, reference = make_model(), make_model()
    with engine_for(model, Plan()) as engine:
        assert engine.describe()["step_hooks"] == {}  # nothing between PyTorch and the step
        engine.fit(DataLoader(data, batch_size=4), epochs=2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        for inputs, targets in DataLoader(data, batch_size=4):
            optimizer.zero_grad()
            nn.functional.cross_entropy(reference(inputs), targets).backward()
            optimizer.step()
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)
    assert engine.optimizer_steps == 6


class Unsized(IterableDataset):
    """The same batches without a length: the engine cannot know in
    advance that the last window is short."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


@pytest.mark.parametrize("how", ["fit", "fit_unsized", "train_step"])
def test_accumulated_micro_batches_equal_one_large_batch(how: str) -> None:
    # 10 samples: large batches 4, 4, 2; micro-batches of 2 in windows of
    # k=2: (2, 2) (2, 2) (2) -- the last window is partial (1 micro-batch).
    data = make_data(10)
    large, accumulated = make_model(), make_model()
    with engine_for(large, Plan()) as engine:
        engine.fit(DataLoader(data, batch_size=4))
    plan, manager = only("accumulation", overrides={"accumulation": {"steps": 2}})
    with engine_for(accumulated, plan, manager) as engine:
        micro = DataLoader(data, batch_size=2)
        if how == "fit":
            engine.fit(micro)
        elif how == "fit_unsized":
            engine.fit(DataLoader(Unsized(micro), batch_size=None))
        else:
            for batch in micro:
                engine.train_step(batch)
            assert engine.flush()
        assert engine.optimizer_steps == 3
        if how != "train_step":
            assert engine.history[-1].effective_batch_size == 4
            assert engine.history[-1].optimizer_steps == 3
    for a, b in zip(large.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scheduler_steps_once_per_optimizer_step() -> None:
    plan, manager = only("accumulation", overrides={"accumulation": {"steps": 2}})
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with Engine(model, optimizer, nn.functional.cross_entropy, plan, manager=manager,
                scheduler=scheduler, progress=False) as engine:
        engine.fit(DataLoader(make_data(8), batch_size=2))  # 4 micro-batches, 2 steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


class InfAt(torch.utils.data.Dataset):
    """A dataset whose sample ``bad`` overflows, as fp16 training sometimes does."""

    def __init__(self, bad: int, n: int = 6) -> None:
        self.data, self.bad = make_data(n), bad

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        x, y = self.data[index]
        return (torch.full_like(x, float("inf")) if index == self.bad else x), y


def test_fp16_grad_scaler_skips_overflowing_steps_and_the_scheduler_waits() -> None:
    # fp16 autocast and GradScaler also run on the CPU, so this path is
    # tested everywhere; tests/test_engine_cuda.py repeats it on a GPU.
    plan, manager = only("mixed_precision", overrides={
        "mixed_precision": {"dtype": "fp16", "grad_scaler": True}})
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with Engine(model, optimizer, nn.functional.cross_entropy, plan, manager=manager,
                scheduler=scheduler, progress=False) as engine:
        assert mixed_precision.autocast_dtype(engine) is torch.float16
        assert mixed_precision.grad_scaler(engine) is not None
        history = engine.fit(DataLoader(InfAt(bad=2), batch_size=2))  # batch 2 of 3 overflows
    assert mixed_precision.skipped_steps(engine) == 1
    assert history[-1].extra["mixed_precision.skipped_steps"] == 1
    assert engine.optimizer_steps == 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)  # 2 of 3 steps counted
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_what_a_plugin_measures_is_its_own_metric() -> None:
    # The engine has no field for either: each plugin reports it under its name.
    plan, manager = only("clipping", overrides={"clipping": {"max_norm": 1e-3}})
    with engine_for(make_model(), plan, manager) as engine:
        history = engine.fit(DataLoader(make_data(), batch_size=5), epochs=2)
    norms = history.column("clipping.grad_norm")
    assert len(norms) == 2 and all(norm > 1e-3 for norm in norms)  # the pre-clip norm
    assert norms == [e.extra["clipping.grad_norm"] for e in history]
    assert f"clipping.grad_norm {norms[-1]:.3g} |" in history[-1].summary()
    with pytest.raises(AutotuneError, match="no metric 'grad_norm'.*measured: clipping.grad_norm"):
        history.column("grad_norm")
    # The fp16 scaler's skipped steps: per epoch, over the engine's life, and in checkpoints.
    plan, manager = only("mixed_precision", overrides={
        "mixed_precision": {"dtype": "fp16", "grad_scaler": True}})
    with engine_for(make_model(), plan, manager) as engine:
        history = engine.fit(DataLoader(InfAt(bad=2), batch_size=2), epochs=2)
        state = engine.state_dict()
    assert history.column("mixed_precision.skipped_steps") == [1.0, 1.0]
    assert mixed_precision.skipped_steps(engine) == 2
    assert state["plugins"]["mixed_precision"]["skipped_steps"] == 2
    with engine_for(make_model(), plan, manager) as restored:
        restored.load_state_dict(state)
        assert mixed_precision.skipped_steps(restored) == 2


def test_clip_by_value_as_well_as_norm() -> None:
    plan, manager = only("clipping", overrides={"clipping": {"max_norm": None,
                                                             "clip_value": 1e-3}})
    model = make_model()
    seen = []
    with engine_for(model, plan, manager) as engine:
        engine.optimizer.register_step_pre_hook(
            lambda opt, a, k: seen.append(max(p.grad.abs().max() for p in model.parameters())))
        engine.train_step(next(iter(DataLoader(make_data(), batch_size=5))))
    assert seen and float(seen[0]) == pytest.approx(1e-3)  # clamped to the value
    assert clipping.last_grad_norm(engine) is not None and clipping.last_grad_norm(engine) > 1e-3


class Recorder:
    """A monitor (the protocol Engine.fit calls), recording its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self) -> None:
        self.calls.append(("start",))

    def stop(self) -> None:
        self.calls.append(("stop",))

    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None:
        assert data_wait_s >= 0 and step_s > 0
        self.calls.append(("step", step, samples))


def test_fit_calls_the_monitor_and_stops_it_on_error() -> None:
    monitor = Recorder()
    with engine_for(make_model(), Plan()) as engine:
        engine.fit(DataLoader(make_data(10), batch_size=4), epochs=2, monitor=monitor)
    assert monitor.calls == [("start",), ("step", 1, 4), ("step", 2, 4), ("step", 3, 2),
                             ("step", 4, 4), ("step", 5, 4), ("step", 6, 2), ("stop",)]

    def broken_loss(outputs, targets):
        raise ValueError("loss exploded")

    monitor = Recorder()
    engine = Engine(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1),
                    broken_loss, progress=False)
    with pytest.raises(ValueError, match="loss exploded"):
        engine.fit(DataLoader(make_data(), batch_size=4), monitor=monitor)
    assert monitor.calls == [("start",), ("stop",)]


def test_history_metrics_json_and_plot(tmp_path) -> None:
    import matplotlib.pyplot as plt

    data = make_data(12)
    with engine_for(make_model(), Plan()) as engine:
        history = engine.fit(DataLoader(data, batch_size=4), epochs=2,
                             val_loader=DataLoader(data, batch_size=6))
        val_loss = engine.evaluate(DataLoader(data, batch_size=6))["loss"]
    assert [e.epoch for e in history] == [1, 2]
    last = history[-1]
    assert last.batches == 3 and last.samples == 12 and last.effective_batch_size == 4
    assert last.val_loss == pytest.approx(val_loss)
    assert last.epoch_time_s > 0 and last.samples_per_s > 0 and last.data_wait_s >= 0
    assert last.train_loss < history[0].train_loss + 1.0  # finite, sane
    saved = History.from_json(history.to_json(tmp_path / "history.json"))
    assert saved.epochs == history.epochs
    figures_before = plt.get_fignums()
    png = history.plot(tmp_path / "history.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == figures_before
    with pytest.raises(AutotuneError, match="not a training history"):
        History.from_json(tmp_path / "history.png")


def test_evaluate_returns_the_mean_loss_and_metrics() -> None:
    data = make_data(10)
    model = make_model()
    with engine_for(model, Plan()) as engine:
        result = engine.evaluate(DataLoader(data, batch_size=4), metrics={
            "accuracy": lambda out, y: (out.argmax(1) == y).float().mean()})
    inputs, targets = data.tensors
    with torch.no_grad():
        outputs = model(inputs)
    assert result["loss"] == pytest.approx(float(nn.functional.cross_entropy(outputs, targets)),
                                           rel=1e-5)
    assert result["accuracy"] == pytest.approx(float((outputs.argmax(1) == targets).float().mean()))
    assert result["samples"] == 10
    assert model.training  # put back as it was


def test_max_steps_counts_micro_batches_and_steps_the_partial_window() -> None:
    plan, manager = only("accumulation", overrides={"accumulation": {"steps": 4}})
    with engine_for(make_model(), plan, manager) as engine:
        history = engine.fit(DataLoader(make_data(40), batch_size=2), epochs=3, max_steps=6)
    assert engine.micro_steps == 6 and len(history) == 1
    assert engine.optimizer_steps == 2  # a full window of 4, then the partial 2


def test_progress_bars_are_silent_off_a_terminal_and_can_be_forced(monkeypatch, capsys) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    assert progress_enabled(True, Terminal())
    assert not progress_enabled(False, Terminal())
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(True, Terminal())
    loader = DataLoader(make_data(), batch_size=4)
    with Engine(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1),
                nn.functional.cross_entropy) as engine:
        engine.fit(loader)  # progress=True, but CI and no terminal: silent
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("AUTOTUNE_PROGRESS", "1")
    with Engine(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1),
                nn.functional.cross_entropy) as engine:
        engine.fit(loader)
    assert "epoch 1" in capsys.readouterr().err


def test_malformed_batch_and_closed_engine_raise_clear_errors() -> None:
    engine = engine_for(make_model(), Plan())
    with pytest.raises(TrainingError, match=r"\(inputs, targets\) pair or a dict, got tuple of "
                                            r"length 3; HINT: pass step_fn=fn"):
        engine.train_step((torch.randn(2, 5), torch.tensor([0, 1]), "extra"))
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(TrainingError, match="closed"):
        engine.train_step((torch.randn(2, 5), torch.tensor([0, 1])))
    with pytest.raises(AutotuneError, match="epochs must be"):
        engine_for(make_model(), Plan()).fit([], epochs=0)


def test_checkpoint_round_trip(tmp_path) -> None:
    data = DataLoader(make_data(), batch_size=4)
    plan, manager = only("mixed_precision", overrides={
        "mixed_precision": {"dtype": "fp16", "grad_scaler": True}})
    with engine_for(make_model(), plan, manager) as engine:
        engine.fit(data)
        engine.save(tmp_path / "ckpt.pt")
        state = engine.state_dict()
    with engine_for(make_model(seed=1), plan, manager) as restored:
        restored.load(tmp_path / "ckpt.pt")
        assert restored.optimizer_steps == engine.optimizer_steps == 3
        assert len(restored.history) == 1
        assert (mixed_precision.grad_scaler(restored).get_scale()
                == mixed_precision.grad_scaler(engine).get_scale())
        for a, b in zip(restored.module.parameters(), engine.module.parameters()):
            assert torch.equal(a, b)
    assert set(state["model"]) == set(make_model().state_dict())
    with pytest.raises(TrainingError, match="does not fit"):
        engine_for(nn.Linear(5, 3), Plan()).load_state_dict(state)


def test_threads_and_env_are_restored_on_close(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    before = torch.get_num_threads()
    plan, manager = only("threads", overrides={"threads": {"intra_op": 1, "set_env": True}})
    engine = engine_for(make_model(), plan, manager)
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    engine.close()
    assert torch.get_num_threads() == before
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "7"


def test_inter_op_threads_that_cannot_be_set_are_a_recorded_warning(caplog) -> None:
    current = torch.get_num_interop_threads()
    try:  # use up torch's one chance to size the pool (or find it already used)
        torch.set_num_interop_threads(current)
    except RuntimeError:
        pass
    plan, manager = only("threads", overrides={"threads": {"inter_op": current + 1}})
    with engine_for(make_model(), plan, manager) as engine:
        warnings = engine.report.of_kind("warning")
    assert torch.get_num_interop_threads() == current
    assert [e.plugin for e in warnings] == ["threads"]
    assert f"inter-op threads stay at {current}" in warnings[0].message
    assert "inter-op threads stay" in caplog.text


def test_tf32_flags_are_a_get_set_pair() -> None:
    from autotune.plugins.mixed_precision import set_tf32

    def state():
        matmul = torch.backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):
            return matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
        return matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    new_api = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    before = state()
    for enabled, expected in ((True, ("tf32", "tf32") if new_api else (True, True)),
                              (False, ("ieee", "ieee") if new_api else (False, False))):
        restore = set_tf32(enabled)
        assert state() == expected
        restore()
        assert state() == before


def test_no_sync_under_ddp_skips_all_reduce_until_the_window_ends(tmp_path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(make_model())
        all_reduces = []

        def counting_hook(state, bucket):
            all_reduces.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, counting_hook)
        plan, manager = only("accumulation", overrides={"accumulation": {"steps": 3}})
        with engine_for(ddp, plan, manager) as engine:
            assert engine.describe()["ddp"]
            engine.fit(DataLoader(make_data(10), batch_size=2))  # windows of 3, 2
        assert engine.optimizer_steps == 2
        assert len(all_reduces) == 2  # one bucket, synced once per window
        assert set(engine.state_dict()["model"]) == set(make_model().state_dict())
    finally:
        dist.destroy_process_group()
