"""Models, datasets and callables for the cross-validation tests.

They live in a module of their own (not in a test file) so that loky and
Dask worker processes can import them by name, the way users' own
module-level functions are imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from autotune.cv.fold import fold_seed


def tiny_mlp() -> torch.nn.Module:
    """Deterministic given the seed: no dropout, no random draws in training."""
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def toy_dataset(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 8, generator=generator)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.8).long()
    return TensorDataset(inputs, labels)


def sgd(params) -> torch.optim.Optimizer:  # noqa: ANN001
    return torch.optim.SGD(params, lr=0.1)


def fold_of_current_seed(seed: int, k: int) -> int | None:
    """Which fold's model is being built: model_fn runs under the fold's seed."""
    current = torch.initial_seed()
    for fold in range(k):
        if fold_seed(seed, fold) == current:
            return fold
    return None


class FailOnFold:
    """A model_fn whose call for fold ``fold`` raises (the others build a model)."""

    def __init__(self, fold: int, seed: int = 0, k: int = 4) -> None:
        self.fold, self.seed, self.k = fold, seed, k

    def __call__(self) -> torch.nn.Module:
        if fold_of_current_seed(self.seed, self.k) == self.fold:
            raise ValueError(f"model for fold {self.fold} is broken on purpose")
        return tiny_mlp()


class DieOnFold(FailOnFold):
    """A model_fn that kills its worker process for fold ``fold``."""

    def __call__(self) -> torch.nn.Module:
        if fold_of_current_seed(self.seed, self.k) == self.fold:
            os._exit(3)
        return tiny_mlp()


class LoggingModelFn:
    """A model_fn that appends the fold it builds for to a file, so a test
    can tell which folds were trained (across processes)."""

    def __init__(self, log_path: str, seed: int = 0, k: int = 4) -> None:
        self.log_path, self.seed, self.k = log_path, seed, k

    def __call__(self) -> torch.nn.Module:
        fold = fold_of_current_seed(self.seed, self.k)
        with open(self.log_path, "a") as handle:
            handle.write(f"{fold}\n")
        return tiny_mlp()

    def folds_built(self) -> list[int | None]:
        path = Path(self.log_path)
        if not path.exists():
            return []
        return [None if line == "None" else int(line) for line in path.read_text().split()]


def threads_in_fold(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A metric reporting the intra-op threads the fold ran with."""
    return torch.tensor(float(torch.get_num_threads()))


def omp_env_in_fold(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A metric reporting OMP_NUM_THREADS where the fold ran (-1: unset)."""
    return torch.tensor(float(os.environ.get("OMP_NUM_THREADS", "-1")))
