"""The GPU session's four workloads (``run_gpu.py``) and their smoke-sized
variants: the same shapes of code -- convolutions with batch norm, a
Transformer LM, the same optimizers, tensor data for the step workloads and a
per-sample augmenting Dataset for the end-to-end one -- small enough for a CPU.

``peer.py``'s worker builds the same workloads in the peer's venv (it imports
:func:`workloads` through ``run_gpu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

NAMES = ("resnet18", "transformer6", "resnet50", "resnet18_e2e")


def workloads(smoke: bool = False) -> dict[str, Any]:
    """The four workloads; ``smoke``: the same shapes of code, CPU-sized."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from autotune.bench.workloads import (AugmentedImages, ReferenceWorkload, TokenSequences,
                                    TransformerLM, lm_loss, resnet18_cifar, resnet50)

    @dataclass(frozen=True)
    class BenchWorkload(ReferenceWorkload):
        #: "step": timed on batches already on the device; "e2e": through the loader.
        kind: str = "step"
        #: The optimizer the peer builds itself (its own API takes a name and an lr).
        peer_optimizer: str = "adamw"
        peer_lr: float = 1e-3

    def adamw(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def tensors(n: int, size: int, classes: int) -> Callable[[], TensorDataset]:
        def make() -> TensorDataset:
            generator = torch.Generator().manual_seed(0)
            return TensorDataset(torch.randn(n, 3, size, size, generator=generator),
                                 torch.randint(0, classes, (n,), generator=generator))
        return make

    ce = nn.functional.cross_entropy
    if smoke:
        def tiny_cnn() -> nn.Module:  # convolutions and batch norm, as a ResNet has, in 1 ms
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

        return {
            "resnet18": BenchWorkload(
                "resnet18", "smoke: conv-BN CNN, 16 px, batch 8, AdamW, tensor data", 8,
                tiny_cnn, tensors(64, 16, 10), adamw, ce),
            "transformer6": BenchWorkload(
                "transformer6", "smoke: Transformer LM 1 layer, d=32, seq 16, batch 4", 4,
                lambda: TransformerLM(vocab=64, d_model=32, heads=2, layers=1, seq_len=16),
                lambda: TokenSequences(64, 16, 64), adamw, lm_loss),
            "resnet50": BenchWorkload(
                "resnet50", "smoke: conv-BN CNN, 16 px, batch 8, SGD, tensor data", 8,
                tiny_cnn, tensors(64, 16, 10), sgd, ce,
                peer_optimizer="sgd", peer_lr=0.1),
            "resnet18_e2e": BenchWorkload(
                "resnet18_e2e", "smoke: conv-BN CNN, 16 px, batch 8, augmenting Dataset, "
                "default DataLoader", 8, tiny_cnn,
                lambda: AugmentedImages(64, size=16), adamw, ce, kind="e2e"),
        }
    return {
        "resnet18": BenchWorkload(
            "resnet18", "CIFAR ResNet-18 (width 64, 32 px), batch 128, AdamW, tensor data",
            128, resnet18_cifar, tensors(4096, 32, 10), adamw, ce),
        "transformer6": BenchWorkload(
            "transformer6", "Transformer encoder LM (6 layers, d=512, 8 heads, seq 128, "
            "vocab 8192), batch 32, AdamW", 32,
            lambda: TransformerLM(vocab=8192, d_model=512, heads=8, layers=6, seq_len=128),
            lambda: TokenSequences(2048, 128, 8192), adamw, lm_loss),
        "resnet50": BenchWorkload(
            "resnet50", "ResNet-50 (224 px), batch 64, SGD+momentum, tensor data", 64,
            resnet50, tensors(1024, 224, 1000), sgd, ce, peer_optimizer="sgd", peer_lr=0.1),
        "resnet18_e2e": BenchWorkload(
            "resnet18_e2e", "CIFAR ResNet-18/32 px/batch 128, AdamW, per-sample augmenting "
            "Dataset (crop+flip+normalise), default DataLoader", 128, resnet18_cifar,
            lambda: AugmentedImages(16384), adamw, ce, kind="e2e"),
    }

