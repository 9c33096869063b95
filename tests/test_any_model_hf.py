"""Hugging Face models built from configs (no downloads), with the stock
collators, trained the way transformers' docs write it -- through
``autotune.apply`` + ``Engine.fit`` and through measured tuning. Skipped
where transformers is not installed (it is in the dev extras)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import autotune
from autotune.testing import BUILTIN_PLUGINS, plugin_manager
from autotune.tuner import SearchOptions, TrialOptions

transformers = pytest.importorskip("transformers")

QUICK = SearchOptions(trial=TrialOptions(warmup_steps=1, chunks=3, min_chunks=2, chunk_s=0.02),
                      only=("dataloader",))


def only(*names: str):
    return plugin_manager(disable=[n for n in BUILTIN_PLUGINS if n not in names])


def bert():
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                     n_head=2)
    return transformers.GPT2LMHeadModel(config)


def sentences(n: int = 16) -> list[dict]:
    """Tokenized examples of different lengths, as a tokenizer gives them."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = 5 + i % 4
        ids = torch.randint(1, 64, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": i % 3})
    return out


class PadOnly:
    """The padding half of a tokenizer, all DataCollatorWithPadding needs
    (so no vocabulary has to be downloaded)."""

    def __init__(self) -> None:
        self.tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=_word_level(), pad_token="[PAD]")

    def __call__(self, features):
        return transformers.DataCollatorWithPadding(self.tokenizer)(features)


def _word_level():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"[PAD]": 0, **{f"w{i}": i for i in range(1, 64)}},
                                      unk_token="[PAD]"))


def test_bert_with_data_collator_with_padding_trains_and_is_measured() -> None:
    torch.manual_seed(0)
    model = bert()
    loader = DataLoader(sentences(), batch_size=4, collate_fn=PadOnly())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=QUICK, budget_s=90,
                           manager=only("dataloader"), remeasure=True)
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    with tuned.engine(optimizer, progress=False) as engine:
        history = engine.fit(tuned.loader, epochs=2)
    assert history[-1].samples == 16 and history[-1].effective_batch_size == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gpt2_with_the_default_data_collator_trains_and_is_measured() -> None:
    torch.manual_seed(0)
    model = gpt2()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (12, 16), generator=generator)
    examples = [{"input_ids": row, "labels": row} for row in ids]  # causal LM: labels = inputs
    loader = DataLoader(examples, batch_size=4, collate_fn=transformers.default_data_collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=QUICK, budget_s=90,
                           manager=only("dataloader"), remeasure=True)
    assert tuned.tuning.baseline.ok, tuned.tuning.table()
    with tuned.engine(optimizer, progress=False) as engine:
        first = engine.fit(tuned.loader)[-1].train_loss
        for _ in range(3):
            engine.fit(tuned.loader)
        assert engine.history[-1].train_loss < first
        assert engine.history[-1].samples == 12


def test_bert_with_its_collator_is_tuned_online_while_it_trains() -> None:
    """The online search switches the loader (workers, mid-epoch) under a
    Hugging Face model fed by DataCollatorWithPadding, with the model's own
    loss; every batch trains once. Real clock: which candidate wins is the
    machine's business, that the search ran and lost nothing is ours."""
    from autotune.tuner import OnlineOptions

    torch.manual_seed(0)
    model = bert()
    loader = DataLoader(sentences(32), batch_size=4, shuffle=True, collate_fn=PadOnly())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    eager = OnlineOptions(chunk_s=0.001, settle_steps=1, max_loss=1.0)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=eager,
                           manager=only("dataloader"), remeasure=True)
    with tuned.engine(optimizer, progress=False) as engine:
        history = engine.fit(tuned.loader, epochs=4)
    report = tuned.tuning.report
    assert [t.plugin for t in report.tried][:1] == ["dataloader"], report.table()
    assert report.steps == engine.optimizer_steps == 32
    assert all(epoch.samples == 32 for epoch in history)
    assert len({m.label for m in engine.history.marks}) >= 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bert_with_its_collator_is_rehearsed_before_training_and_comes_back() -> None:
    """A rehearsal trains the Hugging Face model (its own loss, its collator)
    for real before training, tries the loader settings, and leaves the
    weights and the optimizer as they were; the run then trains with the
    winner as a fixed plan."""
    from autotune.tuner import OnlineOptions

    torch.manual_seed(0)
    model = bert()
    loader = DataLoader(sentences(32), batch_size=4, shuffle=True, collate_fn=PadOnly())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eager = OnlineOptions(rehearse=True, chunk_s=0.001, settle_steps=1)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=eager, budget_s=30,
                           manager=only("dataloader"), remeasure=True)
    report = tuned.tuning.report
    assert report.mode == "rehearsal" and report.steps > 0
    assert [t.plugin for t in report.tried][:1] == ["dataloader"], report.table()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}
    assert tuned.plan.setting("dataloader", "num_workers").source.value == "measured"
    with tuned.engine(optimizer, progress=False) as engine:
        assert engine.live_adapters == ()
        history = engine.fit(tuned.loader, epochs=1)
    assert history[-1].samples == 32
