"""Train a small Transformer encoder with autotune on synthetic sequences.

The task: does a sequence of random tokens hold more of token A than of
token B? A model must count over the whole sequence to answer. Run::

    python examples/train_transformer.py
    python examples/train_transformer.py --set accumulation.steps=4 --set compile.mode=default

Each epoch prints loss, time, samples/s, effective batch size and data wait.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune

VOCAB, LENGTH, TOKEN_A, TOKEN_B = 16, 48, 3, 7


def synthetic_sequences(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    labels = ((tokens == TOKEN_A).sum(1) > (tokens == TOKEN_B).sum(1)).long()
    return TensorDataset(tokens, labels)


class TinyTransformer(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.zeros(1, LENGTH, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(tokens) + self.position)
        return self.head(hidden.mean(1))


def parse_override(text: str) -> tuple[str, str, object]:
    """``plugin.key=value`` with a YAML-ish value (int, float, true/false, null, str)."""
    import yaml

    target, _, value = text.partition("=")
    plugin, _, key = target.partition(".")
    if not (plugin and key and _):
        raise SystemExit(f"--set {text!r}: expected plugin.key=value")
    return plugin, key, yaml.safe_load(value)


def show_epoch_summaries() -> None:
    """Print the one-line summary the engine logs after each epoch."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    engine_log = logging.getLogger("autotune.engine.engine")
    engine_log.addHandler(handler)
    engine_log.setLevel(logging.INFO)
    engine_log.propagate = False  # printed once, here


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--disable", action="append", default=[], metavar="PLUGIN")
    parser.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    show_epoch_summaries()

    overrides: dict[str, dict[str, object]] = {}
    for text in args.set:
        plugin, key, value = parse_override(text)
        overrides.setdefault(plugin, {})[key] = value

    torch.manual_seed(0)
    model = TinyTransformer()
    train = DataLoader(synthetic_sequences(args.samples, seed=0), batch_size=args.batch_size,
                       shuffle=True)
    val = DataLoader(synthetic_sequences(1024, seed=1), batch_size=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.epochs * len(train))

    # Tuned online: the search runs on the training steps themselves
    # (benchmarks/results/time_to_train.json).
    tuned = autotune.apply(model, train, optimizer=optimizer, loss_fn=nn.functional.cross_entropy,
                           tune="online", disable=args.disable, overrides=overrides)
    with tuned.engine(optimizer, scheduler=scheduler,
                      progress=not args.no_progress) as engine:
        print(f"profile {tuned.plan.profile} on {tuned.device}; step behaviour: "
              f"{engine.describe()}")
        history = engine.fit(tuned.loader, epochs=args.epochs, val_loader=val)
        result = engine.evaluate(val, metrics={
            "accuracy": lambda out, y: (out.argmax(1) == y).float().mean()})
    for event in tuned.report.fallbacks:
        print(f"fallback: {event}")
    print(f"validation loss {result['loss']:.4f}, accuracy {result['accuracy']:.1%} "
          f"after {len(history)} epochs")
    print(tuned.tuning.summary())


if __name__ == "__main__":
    try:
        main()
    except autotune.AutotuneError as exc:  # bad --disable/--set: one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
