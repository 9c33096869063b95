"""Built-in synthetic workloads for ``autotune bench`` and benchmarks/.

Real models and real DataLoaders over synthetic data, so a benchmark needs
no download and is the same on every machine:

* ``cnn``         CIFAR-style ResNet-18 (width 64, 32x32 inputs, 10 classes),
  SGD with momentum; the dataset does a per-sample random crop (padding 4)
  and horizontal flip on the CPU, as a CIFAR training pipeline does.
* ``transformer`` a pre-norm Transformer encoder language model (4 layers,
  d=256, 4 heads, sequence 128, vocabulary 8192), AdamW.
* ``mlp``         a 3-layer MLP on 784-dim inputs, Adam.

torchvision is deliberately not used (its wheels pin one torch version), so
ResNet-18/50 are written here; the GPU benchmarks reuse these builders at
their own sizes (ResNet-50 at 224 px, a 6-layer d=512 encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autotune.errors import AutotuneError

# -- models ----------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 conv, no max-pool) or an ImageNet stem
    (7x7 stride-2 conv and max-pool)."""

    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], *, width: int = 64,
                 num_classes: int = 10, imagenet_stem: bool = False) -> None:
        super().__init__()
        self.in_planes = width
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages = []
        for i, blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            stages.append(self._stage(block, width * 2**i, blocks, stride))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(self.in_planes, num_classes)

    def _stage(self, block: Any, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def resnet18_cifar(width: int = 64, num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), width=width, num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width=64, num_classes=num_classes,
                  imagenet_stem=True)


class TransformerLM(nn.Module):
    """Token embedding + learned positions, a pre-norm encoder, an LM head.
    Returns ``(batch * seq, vocab)`` logits so cross_entropy takes them as they are."""

    def __init__(self, *, vocab: int = 8192, d_model: int = 256, heads: int = 4,
                 layers: int = 4, seq_len: int = 128, ff_mult: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, ff_mult * d_model, dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        x = self.head(self.norm(self.encoder(x)))
        return x.reshape(-1, x.shape[-1])


def mlp(in_features: int = 784, hidden: int = 1024, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))


# -- datasets --------------------------------------------------------------------

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class AugmentedImages(Dataset):
    """Synthetic uint8 images, augmented per sample on the CPU the way a
    CIFAR/ImageNet pipeline does: random crop from a padded image, random
    horizontal flip, to float, normalise. The randomness comes from torch's
    global generator (per worker seeded by the DataLoader)."""

    def __init__(self, n: int = 2048, size: int = 32, padding: int = 4, classes: int = 10,
                 seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        padded = size + 2 * padding
        self.images = torch.randint(0, 256, (n, 3, padded, padded), dtype=torch.uint8,
                                    generator=generator)
        self.labels = torch.randint(0, classes, (n,), generator=generator)
        self.size = size
        self.padding = padding
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        image = self.images[index, :, top: top + self.size, left: left + self.size]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        image = (image.float() / 255.0 - self.mean) / self.std
        return image, self.labels[index]


class TokenSequences(Dataset):
    """Random token sequences; the target is the next token (shifted)."""

    def __init__(self, n: int = 1024, seq_len: int = 128, vocab: int = 8192, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, seq_len + 1), generator=generator)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.tokens[index]
        return row[:-1], row[1:]


class Vectors(Dataset):
    def __init__(self, n: int = 8192, features: int = 784, classes: int = 10, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=generator)
        self.y = torch.randint(0, classes, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, targets.reshape(-1))


# -- the registry ----------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceWorkload:
    """A model, its DataLoader, optimizer and loss, built fresh on demand."""

    name: str
    description: str
    batch_size: int
    make_model: Callable[[], nn.Module]
    make_dataset: Callable[[], Dataset]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    #: DataLoader arguments as a user would write them (PyTorch defaults otherwise).
    loader_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0, batch_size: int | None = None
              ) -> tuple[nn.Module, DataLoader, torch.optim.Optimizer]:
        """Fresh model (seeded), loader and optimizer."""
        torch.manual_seed(seed)
        model = self.make_model()
        loader = DataLoader(self.make_dataset(), batch_size=batch_size or self.batch_size,
                            shuffle=True, drop_last=True, **self.loader_kwargs)
        return model, loader, self.make_optimizer(model)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)


def _adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


WORKLOADS: dict[str, ReferenceWorkload] = {
    "cnn": ReferenceWorkload(
        "cnn", "CIFAR-style ResNet-18 (width 64, 32 px), batch 64, SGD+momentum, per-sample "
        "random crop/flip in the dataset", 64, resnet18_cifar, lambda: AugmentedImages(2048),
        _sgd, nn.functional.cross_entropy),
    "transformer": ReferenceWorkload(
        "transformer", "Transformer encoder LM (4 layers, d=256, 4 heads, seq 128, vocab 8192), "
        "batch 16, AdamW", 16, TransformerLM, lambda: TokenSequences(1024), _adamw, lm_loss),
    "mlp": ReferenceWorkload(
        "mlp", "MLP 784-1024-1024-10, batch 128, Adam", 128, mlp, lambda: Vectors(8192), _adam,
        nn.functional.cross_entropy),
}


def get_workload(name: str) -> ReferenceWorkload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise AutotuneError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
