"""autotune.bridges.lightning on a real ``lightning.Trainer``: an autotune plan
asking for bf16, accumulation 2, clipping 0.5, channels_last, one loader
worker and one thread, checked from inside training."""

from __future__ import annotations

import logging

import pytest

L = pytest.importorskip("lightning")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import autotune  # noqa: E402
from autotune.bridges.lightning import AutotuneCallback, trainer_kwargs, unsupported  # noqa: E402

from bridge_helpers import readme_snippet  # noqa: E402

pytestmark = pytest.mark.slow


class LitConvNet(L.LightningModule):
    """A LightningModule as Lightning's docs write one; its forward records
    what training looked like from inside."""

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

    def training_step(self, batch, batch_idx):
        x, y = batch
        # Large gradients, so that clipping to 0.5 has something to do.
        return 100.0 * nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class Recorder(L.Callback):
    """Optimizer steps (after how many batches, and the gradient norm the
    optimizer saw, after clipping), pre-clip norms, the loader used."""

    def __init__(self) -> None:
        self.steps_after: list[int] = []
        self.clipped_norms: list[float] = []
        self.pre_clip_norms: list[float] = []
        self.workers: int | None = None

    def on_train_start(self, trainer, pl_module):
        self.workers = trainer.train_dataloader.num_workers

        def after_step(optimizer, args, kwargs):
            self.steps_after.append(len(pl_module.seen))
            self.clipped_norms.append(_norm(pl_module))

        trainer.optimizers[0].register_step_post_hook(after_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.pre_clip_norms.append(_norm(pl_module))


def _norm(module: nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def _loader(n: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 8, 8, generator=generator),
                         torch.randint(0, 2, (n,), generator=generator))
    return DataLoader(data, batch_size=4)


def test_a_lightning_trainer_trains_with_the_plan(caplog):
    model, loader = LitConvNet(), _loader()
    threads_before = torch.get_num_threads()
    threads = 1 if threads_before != 1 else 2
    tuned = autotune.apply(model, loader, tune=False, overrides={
        "mixed_precision": {"dtype": "bf16"}, "accumulation": {"steps": 2},
        "clipping": {"max_norm": 0.5}, "channels_last": {"enabled": True},
        "dataloader": {"num_workers": 1}, "threads": {"intra_op": threads}})
    recorder = Recorder()
    with caplog.at_level(logging.INFO, logger="autotune.bridges.lightning"):
        kwargs = trainer_kwargs(tuned)
        trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, **kwargs,
                            callbacks=[AutotuneCallback(tuned), recorder])
        trainer.fit(model, train_dataloaders=tuned.loader)

    assert kwargs == {"precision": "bf16-mixed", "accumulate_grad_batches": 2,
                      "gradient_clip_val": 0.5, "gradient_clip_algorithm": "norm"}
    seen = model.seen
    assert len(seen) == 8, "4 optimizer steps of 2 micro-batches"
    assert {s["autocast"] for s in seen} == {torch.bfloat16}
    assert {s["conv_dtype"] for s in seen} == {torch.bfloat16}
    assert all(s["channels_last"] for s in seen), "inputs converted by the pre-hook"
    assert not tuned.loader.dataset.tensors[0].is_contiguous(memory_format=torch.channels_last)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert {s["threads"] for s in seen} == {threads}
    assert torch.get_num_threads() == threads_before, "restored at teardown"
    assert not model._forward_pre_hooks, "the input hook is removed at teardown"
    assert recorder.steps_after == [2, 4, 6, 8], "a step every 2 batches"
    assert min(recorder.pre_clip_norms) > 0.5, "the test's gradients need clipping"
    assert max(recorder.clipped_norms) <= 0.5 * 1.001, "clipped to max_norm"
    assert recorder.workers == 1 and trainer.train_dataloader is tuned.loader

    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for prefix in ("mixed_precision.dtype=", "accumulation.steps=", "clipping.max_norm=",
                   "dataloader.num_workers=", "threads: intra-op threads",
                   "channels_last.enabled=True: weights"):
        assert any(line.startswith(prefix) for line in info), prefix
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("autotune.bridges")]
    assert unsupported(tuned) == []


def test_the_callback_warns_when_the_trainer_lacks_the_plan(caplog):
    model = LitConvNet()
    tuned = autotune.apply(model, _loader(8), tune=False,
                           overrides={"accumulation": {"steps": 2}})
    with caplog.at_level(logging.WARNING, logger="autotune.bridges.lightning"):
        L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[AutotuneCallback(tuned)]).fit(model, train_dataloaders=tuned.loader)
    lines = [r.getMessage() for r in caplog.records if r.name == "autotune.bridges.lightning"]
    assert lines == ["the Trainer has accumulate_grad_batches=1 where the plan gives 2: pass "
                     "**trainer_kwargs(tuned) to lightning.Trainer"]


def test_the_readme_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning's default logger and checkpoints land here
    model = LitConvNet()
    namespace = {"model": model, "loader": _loader(16)}
    exec(compile(readme_snippet("lightning"), "README.md (Lightning)", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == 2
    assert trainer.global_step == 2 * 2, "2 epochs of 4 batches, a step every 2"
    assert {s["autocast"] for s in model.seen} == {torch.bfloat16}
