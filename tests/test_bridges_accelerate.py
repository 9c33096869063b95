"""autotune.bridges.accelerate on a real ``accelerate.Accelerator``: prepared
model, optimizer and loader, a loop as Accelerate's docs write it, and the
plan's mixed precision and accumulation checked from inside it."""

from __future__ import annotations

import logging

import pytest

accelerate = pytest.importorskip("accelerate")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import autotune  # noqa: E402
from autotune.bridges import runtime  # noqa: E402
from autotune.bridges.accelerate import accelerator_kwargs, unsupported  # noqa: E402

from bridge_helpers import readme_snippet  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Accelerate keeps one process-wide state; each test builds its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)
        self.seen: list[dict] = []

    def forward(self, x):
        h = torch.relu(self.conv(x))
        self.seen.append({"autocast": torch.get_autocast_dtype("cpu")
                          if torch.is_autocast_enabled("cpu") else None,
                          "conv_dtype": h.dtype,
                          "channels_last": x.is_contiguous(memory_format=torch.channels_last),
                          "threads": torch.get_num_threads()})
        return self.head(h.mean(dim=(2, 3)))


def _loader(n: int = 16, **kwargs) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 8, 8, generator=generator),
                         torch.randint(0, 2, (n,), generator=generator))
    return DataLoader(data, batch_size=4, **kwargs)


def test_an_accelerate_loop_trains_with_the_plan(caplog):
    model = ConvNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    threads_before = torch.get_num_threads()
    threads = 1 if threads_before != 1 else 2
    tuned = autotune.apply(model, _loader(), optimizer=optimizer, tune=False, overrides={
        "mixed_precision": {"dtype": "bf16"}, "accumulation": {"steps": 2},
        "channels_last": {"enabled": True}, "dataloader": {"num_workers": 1},
        "threads": {"intra_op": threads}})
    with caplog.at_level(logging.INFO, logger="autotune.bridges.accelerate"):
        kwargs = accelerator_kwargs(tuned)
    assert kwargs["mixed_precision"] == "bf16" and kwargs["gradient_accumulation_steps"] == 2
    accelerator = Accelerator(**kwargs)
    steps: list[int] = []
    optimizer.register_step_post_hook(lambda *_: steps.append(len(model.seen)))
    prepared, prepared_optimizer, loader = accelerator.prepare(tuned.model, optimizer,
                                                               tuned.loader)
    with runtime(tuned):
        for inputs, targets in loader:
            with accelerator.accumulate(prepared):
                loss = nn.functional.cross_entropy(prepared(inputs), targets)
                accelerator.backward(loss)
                prepared_optimizer.step()
                prepared_optimizer.zero_grad()

    assert accelerator.mixed_precision == "bf16" and accelerator.gradient_accumulation_steps == 2
    assert len(model.seen) == 4 and steps == [2, 4], "4 batches, a real step every 2"
    assert {s["autocast"] for s in model.seen} == {torch.bfloat16}
    assert {s["conv_dtype"] for s in model.seen} == {torch.bfloat16}
    assert all(s["channels_last"] for s in model.seen) and {s["threads"] for s in model.seen} \
        == {threads}
    assert torch.get_num_threads() == threads_before
    assert loader.num_workers == 1, "accelerator.prepare keeps tuned.loader's workers"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == unsupported(tuned)
    assert [w.split("=", 1)[0] for w in warnings] == ["threads.intra_op", "channels_last.enabled"]


def test_clipping_is_stated_as_a_call_in_the_loop():
    model = ConvNet()
    tuned = autotune.apply(model, _loader(), tune=False,
                           overrides={"clipping": {"max_norm": 0.5}})
    [line] = unsupported(tuned)
    assert line.startswith("clipping.max_norm=0.5: ")
    assert "accelerator.clip_grad_norm_(model.parameters(), 0.5)" in line


def test_the_readme_snippet_runs():
    model = ConvNet()
    namespace = {"model": model, "loader": _loader(16)}
    exec(compile(readme_snippet("accelerate"), "README.md (Accelerate)", "exec"), namespace)
    accelerator = namespace["accelerator"]
    assert accelerator.mixed_precision == "bf16" and accelerator.gradient_accumulation_steps == 2
    assert len(model.seen) == 4 and {s["autocast"] for s in model.seen} == {torch.bfloat16}
