"""Any model, any batch: the step contract (autotune.workload.contract) in the
engine and in measured tuning -- dict batches with the model's own loss,
detection-style (images, target dicts) with a dict of losses, two inputs,
a loss that needs the inputs -- and your own loop with the plan's step."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import autotune
from autotune.errors import TrainingError
from autotune.testing import BUILTIN_PLUGINS, plugin_manager
from autotune.tuner import SearchOptions, TrialOptions

#: Short trials: these tests check that trials run on these models, not speed.
QUICK = SearchOptions(trial=TrialOptions(warmup_steps=1, chunks=3, min_chunks=2, chunk_s=0.02),
                      only=("channels_last", "dataloader"))


def only(*names: str):
    return plugin_manager(disable=[n for n in BUILTIN_PLUGINS if n not in names])


# -- dict batches, the model's own loss (how Hugging Face models train) ------------


@dataclass
class Output:
    """Like transformers' ModelOutput: a loss attribute, logits."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class TinyClassifier(nn.Module):
    """Called as model(**batch), the way transformers' models are."""

    def __init__(self, vocab: int = 50, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, classes)

    def forward(self, input_ids, attention_mask=None, labels=None) -> Output:
        hidden = self.embed(input_ids)
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1)
        logits = self.head(hidden.mean(1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss, logits)


class Sentences(Dataset):
    def __init__(self, n: int = 24) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (n, 7), generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(7),
                "labels": self.labels[i]}


def test_a_dict_batch_trains_with_the_models_own_loss() -> None:
    torch.manual_seed(0)
    model, reference = TinyClassifier(), TinyClassifier()
    reference.load_state_dict(model.state_dict())
    loader = DataLoader(Sentences(), batch_size=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuned = autotune.apply(model, loader, optimizer=optimizer, manager=only())
    with tuned.engine(optimizer, progress=False) as engine:
        history = engine.fit(tuned.loader)
    assert history[-1].samples == 24 and history[-1].batches == 4
    # Plain PyTorch, the way Hugging Face's docs write the loop.
    plain = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in DataLoader(Sentences(), batch_size=6):
        plain.zero_grad()
        reference(**batch).loss.backward()
        plain.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_measured_tuning_runs_on_dict_batches_when_asked() -> None:
    model = TinyClassifier()
    loader = DataLoader(Sentences(48), batch_size=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=QUICK, budget_s=60,
                           manager=only("dataloader"), remeasure=True)
    baseline = tuned.tuning.baseline
    assert baseline.ok, tuned.tuning.table()
    assert baseline.samples_per_s > 0


def test_without_a_loss_function_the_default_does_not_measure() -> None:
    model = TinyClassifier()
    tuned = autotune.apply(model, DataLoader(Sentences(), batch_size=6),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1), manager=only())
    assert tuned.tuning is None


# -- detection: (images, targets) in, a dict of losses out (torchvision's signature)


class TinyDetector(nn.Module):
    """``model(images, targets)`` -> dict of losses in train mode, like
    torchvision.models.detection: images a list of [3, H, W] tensors (sizes
    may differ), targets a list of {"boxes": [N, 4], "labels": [N]}."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.classifier = nn.Linear(4, 3)
        self.box = nn.Linear(4, 4)

    def forward(self, images, targets=None):
        if self.training and targets is None:
            raise AssertionError("targets should not be none when in training mode")
        features = torch.stack([self.backbone(img.unsqueeze(0)).mean((2, 3))[0] for img in images])
        if not self.training:
            return [{"boxes": self.box(f).unsqueeze(0), "scores": f[:1]} for f in features]
        classifier, box = [], []
        for f, target in zip(features, targets):
            n = len(target["labels"])
            classifier.append(nn.functional.cross_entropy(self.classifier(f).expand(n, 3),
                                                          target["labels"]))
            box.append(nn.functional.smooth_l1_loss(self.box(f).expand(n, 4), target["boxes"]))
        return {"loss_classifier": torch.stack(classifier).mean(),
                "loss_box_reg": torch.stack(box).mean()}


class Scenes(Dataset):
    """Images of two sizes with 5 boxes each (so boxes != images)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        generator = torch.Generator().manual_seed(i)
        size = 12 if i % 2 else 16
        image = torch.rand(3, size, size, generator=generator)
        target = {"boxes": torch.rand(5, 4, generator=generator) * size,
                  "labels": torch.randint(0, 3, (5,), generator=generator)}
        return image, target


def collate(batch):
    return tuple(zip(*batch))  # torchvision's detection references do this


def test_a_detection_model_trains_and_counts_images_not_boxes() -> None:
    torch.manual_seed(0)
    model = TinyDetector()
    loader = DataLoader(Scenes(), batch_size=4, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    tuned = autotune.apply(model, loader, optimizer=optimizer, manager=only())
    with tuned.engine(optimizer, progress=False) as engine:
        history = engine.fit(tuned.loader)
    epoch = history[-1]
    assert epoch.samples == 16 and epoch.effective_batch_size == 4  # images, not 20 boxes
    assert set(epoch.extra) == {"loss_classifier", "loss_box_reg"}  # each part logged
    assert epoch.train_loss == pytest.approx(epoch.extra["loss_classifier"]
                                             + epoch.extra["loss_box_reg"], rel=1e-5)


def test_measured_tuning_runs_the_detection_model() -> None:
    model = TinyDetector()
    loader = DataLoader(Scenes(), batch_size=2, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=QUICK, budget_s=60,
                           manager=only("channels_last", "dataloader"), remeasure=True)
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    # 2 images per step: samples/s is images/s.
    first = tuned.tuning.baseline
    assert first.samples_per_s == pytest.approx(2 * 1000 / first.step_ms, rel=0.5)
    for k, v in model.state_dict().items():  # the trials left the weights as they were
        assert torch.equal(v, before[k])


# -- step_fn: two inputs, a loss that needs the inputs ---------------------------------


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x1, x2):
        return self.head(torch.relu(self.a(x1) + self.b(x2)))


def test_a_two_input_model_trains_through_step_fn() -> None:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(20, 4, generator=generator), torch.randn(20, 3, generator=generator),
                         torch.randint(0, 2, (20,), generator=generator))
    model = TwoInputs()

    def step_fn(model, batch):
        x1, x2, y = batch
        return nn.functional.cross_entropy(model(x1, x2), y)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuned = autotune.apply(model, DataLoader(data, batch_size=5), optimizer=optimizer,
                           step_fn=step_fn, tune=QUICK, budget_s=60, manager=only("dataloader"),
                           remeasure=True)
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    with tuned.engine(optimizer, progress=False) as engine:  # step_fn carried from apply
        history = engine.fit(tuned.loader)
    assert history[-1].samples == 20 and history[-1].optimizer_steps == 4


def test_an_autoencoder_whose_loss_needs_the_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 2), nn.ReLU(), nn.Linear(2, 6))
    data = TensorDataset(torch.randn(24, 6))  # batches are [x]: no targets at all
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def reconstruction(model, batch):
        (x,) = batch
        return nn.functional.mse_loss(model(x), x)

    with autotune.apply(model, DataLoader(data, batch_size=8), optimizer=optimizer,
                        step_fn=reconstruction, manager=only()).engine(
                            optimizer, progress=False) as engine:
        first = engine.fit(DataLoader(data, batch_size=8))[-1].train_loss
        for _ in range(5):
            engine.fit(DataLoader(data, batch_size=8))
        assert engine.history[-1].train_loss < first
        assert engine.evaluate(DataLoader(data, batch_size=8))["samples"] == 24


def test_batch_size_fn_counts_what_the_user_says() -> None:
    model = TwoInputs()
    data = TensorDataset(torch.randn(10, 4), torch.randn(10, 3), torch.randint(0, 2, (10,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tuned = autotune.apply(model, None, optimizer=optimizer, manager=only(),
                           step_fn=lambda m, b: nn.functional.cross_entropy(m(b[0], b[1]), b[2]),
                           batch_size_fn=lambda batch: 2 * len(batch[2]))
    with tuned.engine(optimizer, progress=False) as engine:
        assert engine.fit(DataLoader(data, batch_size=5))[-1].samples == 20


# -- loud failures -------------------------------------------------------------------------


def three_tuples() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(12, 4), torch.randn(12, 3),
                                    torch.randint(0, 2, (12,))), batch_size=4)


def test_a_baseline_that_cannot_train_warns_and_ships_nothing_measured(caplog) -> None:
    model = TwoInputs()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level("WARNING"):
        tuned = autotune.apply(model, three_tuples(), optimizer=optimizer,
                               loss_fn=nn.functional.cross_entropy, manager=only("channels_last"),
                               remeasure=True, budget_s=30)
    warning = [e for e in tuned.report.events if "could not train this model" in e.message]
    assert warning and "pair or a dict, got list of length 3" in warning[0].message
    assert all(s.source.value != "measured" for s in tuned.plan.settings["channels_last"].values())


def test_tune_true_with_a_baseline_that_cannot_train_raises() -> None:
    model = TwoInputs()
    with pytest.raises(TrainingError, match="could not train this model on this loader"):
        autotune.apply(model, three_tuples(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       loss_fn=nn.functional.cross_entropy, tune=True, manager=only(),
                       remeasure=True, budget_s=30)


# -- your own loop, with the plan's step -----------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 4 * 4, 3)
        self.inputs_channels_last: list[bool] = []

    def forward(self, x):
        self.inputs_channels_last.append(x.is_contiguous(memory_format=torch.channels_last)
                                         and not x.is_contiguous())
        return self.head(torch.relu(self.conv(x)).flatten(1))


def images() -> DataLoader:
    generator = torch.Generator().manual_seed(2)
    return DataLoader(TensorDataset(torch.randn(24, 3, 6, 6, generator=generator),
                                    torch.randint(0, 3, (24,), generator=generator)), batch_size=4)


OVERRIDES = {"accumulation": {"steps": 2}, "clipping": {"max_norm": 0.05},
             "channels_last": {"enabled": True}, "mixed_precision": {"dtype": "bf16"},
             "optimizer": {"implementation": "foreach"}, "threads": {"intra_op": 1},
             "dataloader": {"num_workers": 1}}


def test_your_own_loop_trains_bitwise_like_the_engine() -> None:
    manager = only("accumulation", "clipping", "channels_last", "mixed_precision", "optimizer",
                   "threads", "dataloader")
    torch.manual_seed(0)
    by_engine = Net()
    torch.manual_seed(0)
    by_hand = Net()
    results = []
    for model, own_loop in ((by_engine, False), (by_hand, True)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tuned = autotune.apply(model, images(), optimizer=optimizer, overrides=OVERRIDES,
                               manager=manager)
        with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
            if not own_loop:
                engine.fit(tuned.loader)
            else:
                assert tuned.loader.num_workers == 1  # the plan's loader
                assert torch.get_num_threads() == 1  # the plan's threads, while the engine lives
                assert optimizer.param_groups[0]["foreach"] is True  # the plan's optimizer
                for batch in tuned.loader:
                    inputs, targets = engine.prepare_batch(batch)
                    with engine.autocast():
                        loss = nn.functional.cross_entropy(tuned.model(inputs), targets)
                    engine.backward(loss)
                    engine.step()
                engine.flush()
            results.append((engine.optimizer_steps, engine.micro_steps))
    assert results[0] == results[1] == (3, 6)  # one step per 2 micro-batches
    assert by_hand.inputs_channels_last == [True] * 6  # the plugin's input format
    for a, b in zip(by_engine.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)


def test_the_autoencoder_is_measured_through_its_step_fn() -> None:
    model = nn.Sequential(nn.Linear(6, 2), nn.ReLU(), nn.Linear(2, 6))
    data = TensorDataset(torch.randn(48, 6))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    tuned = autotune.apply(model, DataLoader(data, batch_size=8), optimizer=optimizer,
                           step_fn=lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[0]),
                           tune=QUICK, budget_s=60, manager=only("dataloader"), remeasure=True)
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    assert tuned.tuning.baseline.samples_per_s > 0


def _torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision.models import detection
    except Exception as exc:  # noqa: BLE001 - a CUDA build beside a CPU torch fails to import
        pytest.skip(f"torchvision does not import here: {type(exc).__name__}: {exc}")
    return detection


def test_torchvisions_own_detector_trains_and_is_measured() -> None:
    detection = _torchvision()
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                            num_classes=3)
    loader = DataLoader(Scenes(), batch_size=2, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=QUICK, budget_s=120,
                           manager=only("dataloader"), remeasure=True)
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    with tuned.engine(optimizer, progress=False) as engine:
        epoch = engine.fit(tuned.loader, max_steps=2)[-1]
    assert epoch.samples == 4 and "loss_box_reg" in epoch.extra
