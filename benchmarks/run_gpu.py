"""GPU benchmarks: PyTorch defaults vs autotune's pick on one CUDA GPU.

    python benchmarks/run_gpu.py                 # all four workloads
    python benchmarks/run_gpu.py --workload resnet18_e2e --grid

Workloads:

* resnet18      CIFAR ResNet-18 (width 64, 32 px), batch 128, AdamW; data
                already on tensors (the step is what is measured)
* resnet50      ResNet-50 (ImageNet stem, 224 px), batch 64, SGD+momentum
* transformer6  Transformer encoder LM: 6 layers, d=512, 8 heads, seq 128,
                vocab 8192, batch 32, AdamW
* resnet18_e2e  ResNet-18/32 px/batch 128, AdamW, with a per-sample
                augmenting Dataset (random crop + flip + normalise on the CPU)
                and a default DataLoader: tuning must fix the loader too

Without CUDA this prints why and exits 0 (skips cleanly), so it can run in CI.
Results go to benchmarks/results/gpu_<name>.json and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OUT, run_one  # noqa: E402

FLOOR = 0.97


def workloads() -> dict:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from autotune.workloads import (AugmentedImages, ReferenceWorkload, TokenSequences,
                                    TransformerLM, lm_loss, resnet18_cifar, resnet50)

    def adamw(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def tensors(n: int, size: int, classes: int):
        generator = torch.Generator().manual_seed(0)
        return lambda: TensorDataset(torch.randn(n, 3, size, size, generator=generator),
                                     torch.randint(0, classes, (n,), generator=generator))

    ce = nn.functional.cross_entropy
    return {
        "resnet18": ReferenceWorkload(
            "resnet18", "CIFAR ResNet-18 (width 64, 32 px), batch 128, AdamW, tensor data",
            128, resnet18_cifar, tensors(16384, 32, 10), adamw, ce),
        "resnet50": ReferenceWorkload(
            "resnet50", "ResNet-50 (224 px), batch 64, SGD+momentum, tensor data", 64,
            resnet50, tensors(2048, 224, 1000), sgd, ce),
        "transformer6": ReferenceWorkload(
            "transformer6", "Transformer encoder LM (6 layers, d=512, 8 heads, seq 128, "
            "vocab 8192), batch 32, AdamW", 32,
            lambda: TransformerLM(vocab=8192, d_model=512, heads=8, layers=6, seq_len=128),
            lambda: TokenSequences(8192, 128, 8192), adamw, lm_loss),
        "resnet18_e2e": ReferenceWorkload(
            "resnet18_e2e", "CIFAR ResNet-18/32 px/batch 128, AdamW, per-sample augmenting "
            "Dataset (crop+flip+normalise), default DataLoader", 128, resnet18_cifar,
            lambda: AugmentedImages(16384), adamw, ce),
    }


NAMES = ("resnet18", "resnet50", "transformer6", "resnet18_e2e")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=NAMES,
                        help="repeatable; default: all four")
    parser.add_argument("--budget", type=float, default=300.0, help="tuner budget, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="confirmation rounds")
    parser.add_argument("--chunk-s", type=float, default=0.5, help="seconds per timed chunk")
    parser.add_argument("--grid", action="store_true", help="also measure the exhaustive grid")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-load", type=float, default=4.0)
    parser.add_argument("--max-wait", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where results go (default %(default)s; the committed ones are "
                             "in benchmarks/results)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("run_gpu: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    specs = workloads()
    missed = []
    for name in args.workload or NAMES:
        record = run_one(specs[name], name, "gpu", budget_s=args.budget, grid=args.grid,
                         rounds=args.rounds, chunk_s=args.chunk_s, device=args.device,
                         max_load=args.max_load, max_wait_s=args.max_wait,
                         targets={"tuned_vs_defaults": FLOOR}, out_dir=args.out)
        missed += [f"{name}: {k}" for k, c in record["targets"].items() if not c["met"]]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
