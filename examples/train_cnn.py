"""Train a small CNN with autotune on a synthetic image dataset.

The dataset augments each sample on the CPU in ``__getitem__`` (random crop
after padding, random horizontal flip), like torchvision transforms do, so
the DataLoader's worker settings matter. Run::

    python examples/train_cnn.py                  # tuned for this machine, while it trains
    python examples/train_cnn.py --disable compile --disable channels_last
    python examples/train_cnn.py --epochs 5 --history runs/cnn

The speed settings are tuned online (``tune="online"``): the search runs on
the training steps themselves, so it costs no time before training
(benchmarks/results/time_to_train.json). Each epoch prints loss, time,
samples/s, effective batch size and the time the loop waited for data; at
the end, what the search tried and kept.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import autotune


class SyntheticImages(Dataset):
    """``n`` 3x32x32 images of ``classes`` noisy class patterns."""

    def __init__(self, n: int, classes: int = 10, seed: int = 0, augment: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed)
        # Smooth class patterns (upsampled 4x4 noise), so that a shifted crop
        # still looks like its class.
        coarse = torch.randn(classes, 3, 4, 4, generator=torch.Generator().manual_seed(42))
        patterns = nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear")
        self.labels = torch.randint(0, classes, (n,), generator=generator)
        self.images = patterns[self.labels] + 0.8 * torch.randn(n, 3, 32, 32, generator=generator)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment:  # per-sample CPU work, as torchvision transforms do
            padded = nn.functional.pad(image, (4, 4, 4, 4), mode="reflect")
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = padded[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image, self.labels[index]


def small_cnn(classes: int = 10) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


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
    parser.add_argument("--history", metavar="DIR", help="write history.json and history.png here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    show_epoch_summaries()

    torch.manual_seed(0)
    model = small_cnn()
    train = DataLoader(SyntheticImages(args.samples), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(SyntheticImages(args.samples // 4, seed=1, augment=False), batch_size=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    tuned = autotune.apply(model, train, optimizer=optimizer, loss_fn=nn.functional.cross_entropy,
                           tune="online", disable=args.disable)
    with tuned.engine(optimizer, progress=not args.no_progress) as engine:
        print(f"profile {tuned.plan.profile} on {tuned.device}; what the plugins did:")
        for event in tuned.report:  # apply's events and the engine's
            print(f"  {event}")
        history = engine.fit(tuned.loader, epochs=args.epochs, val_loader=val)
        accuracy = engine.evaluate(val, metrics={
            "accuracy": lambda out, y: (out.argmax(1) == y).float().mean()})["accuracy"]
    print(f"validation accuracy {accuracy:.1%} after {len(history)} epochs")
    print(tuned.tuning.summary())
    if args.history:
        print(f"history: {history.to_json(f'{args.history}/history.json')}, "
              f"{history.plot(f'{args.history}/history.png')}")


if __name__ == "__main__":
    try:
        main()
    except autotune.AutotuneError as exc:  # bad --disable/--set: one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
