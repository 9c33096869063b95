"""autotune.bridges.huggingface on a real ``transformers.Trainer``: a tiny BERT
built from a config (no downloads), pre-padded tensors and
``default_data_collator``; the plan's arguments checked from inside training."""

from __future__ import annotations

import logging

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from transformers import (BertConfig, BertForSequenceClassification, Trainer,  # noqa: E402
                          TrainerCallback, TrainingArguments, default_data_collator)

import autotune  # noqa: E402
from autotune.bridges.huggingface import (AutotuneTrainerCallback,  # noqa: E402
                                          training_arguments, unsupported)

from bridge_helpers import readme_snippet  # noqa: E402

pytestmark = pytest.mark.slow


class Pairs(Dataset):
    """Sequences already padded to one length, as dicts the Trainer feeds the model."""

    def __init__(self, n: int = 32, length: int = 12) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 100, (n, length), generator=generator)
        self.mask = torch.ones(n, length, dtype=torch.long)
        self.mask[::2, length // 2:] = 0
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i],
                "labels": self.labels[i]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2))


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.optimizer_steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.optimizer_steps += 1


def _record_forward(model: BertForSequenceClassification) -> list[dict]:
    """What the classifier head sees in each training forward. A hook on the
    model itself would run outside autocast: Accelerate puts it around the
    model's forward, inside the module call."""
    seen: list[dict] = []

    def hook(module, args, output):
        if module.training:
            seen.append({"autocast": torch.get_autocast_dtype("cpu")
                         if torch.is_autocast_enabled("cpu") else None,
                         "logits": output.dtype, "threads": torch.get_num_threads()})

    model.classifier.register_forward_hook(hook)
    return seen


def test_a_hugging_face_trainer_trains_with_the_plan(tmp_path, caplog):
    model, dataset = tiny_bert(), Pairs()
    loader = DataLoader(dataset, batch_size=4, collate_fn=default_data_collator)
    threads_before = torch.get_num_threads()
    threads = 1 if threads_before != 1 else 2
    tuned = autotune.apply(model, loader, optimizer=torch.optim.AdamW(model.parameters()),
                           tune=False,
                           overrides={"mixed_precision": {"dtype": "bf16"},
                                      "accumulation": {"steps": 2},
                                      "dataloader": {"num_workers": 1},
                                      "optimizer": {"implementation": "fused"},
                                      "threads": {"intra_op": threads}})
    seen, recorder = _record_forward(model), Recorder()
    with caplog.at_level(logging.INFO, logger="autotune.bridges.huggingface"):
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, report_to=[],
                                 per_device_train_batch_size=4, save_strategy="no",
                                 **training_arguments(tuned))
        trainer = Trainer(model, args, train_dataset=dataset, data_collator=default_data_collator,
                          callbacks=[AutotuneTrainerCallback(tuned), recorder])
        max_norms = []  # what each clip_grad_norm_ call clipped to
        clip = trainer.accelerator.clip_grad_norm_

        def recording_clip(parameters, max_norm, *args, **kwargs):
            max_norms.append(max_norm)
            return clip(parameters, max_norm, *args, **kwargs)

        trainer.accelerator.clip_grad_norm_ = recording_clip
        trainer.train()

    assert args.bf16 is True and args.fp16 is False
    assert args.gradient_accumulation_steps == 2
    assert args.max_grad_norm == 0.0
    # Newer Trainers log the norm through clip_grad_norm_(..., inf): no clipping.
    assert all(n == float("inf") for n in max_norms), "autotune's clipping is off"
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers,
            args.dataloader_prefetch_factor, args.dataloader_pin_memory) == (1, True, 2, False)
    assert args.optim == "adamw_torch_fused"
    assert recorder.optimizer_steps == 4 and len(seen) == 8, "a step every 2 micro-batches"
    assert {s["autocast"] for s in seen} == {torch.bfloat16}
    assert {s["logits"] for s in seen} == {torch.bfloat16}
    assert {s["threads"] for s in seen} == {threads}
    assert torch.get_num_threads() == threads_before, "restored at on_train_end"
    assert trainer.get_train_dataloader().num_workers == 1
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for prefix in ("mixed_precision.dtype='bf16': bf16=True", "accumulation.steps=2",
                   "clipping off: max_grad_norm=0.0", "optimizer.implementation='fused'",
                   "dataloader.num_workers=1", "threads: intra-op threads"):
        assert any(line.startswith(prefix) for line in info), prefix
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("autotune.bridges")]


def test_clipping_on_reaches_max_grad_norm():
    model = tiny_bert()
    tuned = autotune.apply(model, tune=False,
                           overrides={"clipping": {"max_norm": 0.5, "clip_value": 1.0}})
    assert training_arguments(tuned)["max_grad_norm"] == 0.5
    assert [line.split(":", 1)[0] for line in unsupported(tuned)] == ["clipping.clip_value=1.0"]


class ConvClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.formats: list[bool] = []

    def forward(self, pixel_values, labels=None):
        self.formats.append(pixel_values.is_contiguous(memory_format=torch.channels_last))
        return self.conv(pixel_values).mean()


def test_the_callback_converts_a_conv_model_and_its_inputs(tmp_path):
    model = ConvClassifier()
    tuned = autotune.apply(model, tune=False, overrides={"channels_last": {"enabled": True}})
    callback = AutotuneTrainerCallback(tuned)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    callback.on_train_begin(args, None, None, model=model)
    model(pixel_values=torch.randn(2, 3, 8, 8))
    callback.on_train_end(args, None, None, model=model)
    model(pixel_values=torch.randn(2, 3, 8, 8))
    assert model.formats == [True, False]
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_readme_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_bert()
    seen = _record_forward(model)
    namespace = {"model": model, "train_dataset": Pairs(16)}
    exec(compile(readme_snippet("huggingface"), "README.md (Hugging Face)", "exec"), namespace)
    args = namespace["args"]
    assert args.bf16 and args.gradient_accumulation_steps == 2 and args.max_grad_norm == 0.0
    assert len(seen) == 2 and {s["autocast"] for s in seen} == {torch.bfloat16}, \
        "16 samples in batches of 8: 2 micro-batches, one optimizer step"
