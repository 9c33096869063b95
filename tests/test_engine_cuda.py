"""The engine's GPU paths. Each test skips cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune.plugins import mixed_precision
from autotune.testing import plugin_manager, requires

pytestmark = requires(cuda=True)

ALL = ("threads", "mixed_precision", "accumulation", "clipping", "channels_last", "compile",
       "dataloader", "parallel_folds")


def only(*enabled: str) -> list[str]:
    return [p for p in ALL if p not in enabled]


def loader(n: int = 32, bad: int | None = None) -> DataLoader:
    x, y = torch.randn(n, 16), torch.randint(0, 4, (n,))
    if bad is not None:
        x[bad] = float("inf")
    return DataLoader(TensorDataset(x, y), batch_size=8)


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_fp16_with_grad_scaler_on_cuda_counts_skipped_steps() -> None:
    net = model()
    tuned = autotune.apply(net, loader(bad=9), device="cuda",
                           manager=plugin_manager(disable=only("mixed_precision")),
                           overrides={"mixed_precision": {"dtype": "fp16", "grad_scaler": True}})
    dtypes = []
    net[0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    with tuned.engine(optimizer, nn.functional.cross_entropy, scheduler=scheduler,
                      progress=False) as engine:
        scaler = mixed_precision.grad_scaler(engine)
        assert scaler is not None and scaler.is_enabled()
        history = engine.fit(tuned.loader)
    assert set(dtypes) == {torch.float16}
    skipped = int(history[-1].extra["mixed_precision.skipped_steps"])
    assert skipped == mixed_precision.skipped_steps(engine)
    assert skipped >= 1 and engine.optimizer_steps == 4  # at least the inf batch
    # The scheduler moved only on the steps that ran.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** (4 - skipped))
    assert all(torch.isfinite(p).all() for p in net.parameters())


@requires(cuda=True, bf16=True)
def test_bf16_autocast_on_cuda_and_tf32_restored() -> None:
    net = model()
    tuned = autotune.apply(net, loader(), device="cuda",
                           manager=plugin_manager(disable=only("mixed_precision")),
                           overrides={"mixed_precision": {"dtype": "bf16", "tf32": True}})
    dtypes = []
    net[0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    matmul = torch.backends.cuda.matmul
    read = (lambda: matmul.fp32_precision) if hasattr(matmul, "fp32_precision") \
        else (lambda: matmul.allow_tf32)
    before = read()
    with tuned.engine(torch.optim.SGD(net.parameters(), lr=0.1), nn.functional.cross_entropy,
                      progress=False) as engine:
        assert read() in ("tf32", True)
        engine.fit(tuned.loader)
    assert set(dtypes) == {torch.bfloat16} and mixed_precision.grad_scaler(engine) is None
    assert read() == before


def test_pinned_loader_and_compile_on_cuda() -> None:
    net = model()
    tuned = autotune.apply(net, loader(), device="cuda",
                           manager=plugin_manager(disable=only("compile", "dataloader")),
                           overrides={"compile": {"mode": "default"},
                                      "dataloader": {"num_workers": 1, "pin_memory": True}})
    assert tuned.loader.pin_memory
    with tuned.engine(torch.optim.SGD(net.parameters(), lr=0.1), nn.functional.cross_entropy,
                      progress=False) as engine:
        history = engine.fit(tuned.loader)
        assert engine.compiled and not tuned.report.fallbacks
        assert list(engine.state_dict()["model"]) == list(model().state_dict())
    assert history[-1].samples == 32
