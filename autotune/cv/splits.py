"""k-fold splits: disjoint validation folds that together cover the dataset,
stratified by label when labels are given.

The assignment depends only on ``(n, k, seed, labels)``, so the same call on
any machine (a loky worker, a Dask worker, a rerun next week) gives the same
folds; :func:`split_digest` fingerprints it for the run directory's manifest.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import torch

from autotune.cv.errors import CrossValidationError

log = logging.getLogger("autotune.cv")


@dataclass(frozen=True)
class Fold:
    """Fold ``index`` of ``k``: validate on ``val``, train on ``train``."""

    index: int
    train: tuple[int, ...]
    val: tuple[int, ...]


def _as_labels(labels: Any, n: int) -> list[Hashable]:
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    elif hasattr(labels, "tolist"):  # a numpy array, without importing numpy
        labels = labels.tolist()
    try:
        values = list(labels)
    except TypeError:
        raise CrossValidationError(f"stratify must be a sequence of labels (one per sample) or "
                                   f"True, got {type(labels).__name__}") from None
    if len(values) != n:
        raise CrossValidationError(f"stratify has {len(values)} labels but the dataset has {n} "
                                   "samples; give one label per sample")
    try:
        for value in values:
            hash(value)
    except TypeError:
        raise CrossValidationError(f"stratify labels must be hashable scalars (class ids), got "
                                   f"{type(value).__name__}") from None
    return values


def fold_assignment(n: int, k: int, seed: int = 0, labels: Any = None) -> list[int]:
    """The fold of every sample: ``assignment[i]`` is in ``range(k)``.

    Without labels: a seeded permutation cut into ``k`` contiguous parts of
    ``n // k`` or ``n // k + 1`` samples. With labels: each class is shuffled
    and dealt round-robin, the dealer carrying on from class to class, so
    every fold holds each class's share to within one sample and the fold
    sizes differ by at most one.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise CrossValidationError(f"k must be an integer >= 2, got {k!r}")
    if n < k:
        raise CrossValidationError(f"k={k} folds need at least {k} samples; the dataset has {n}")
    generator = torch.Generator().manual_seed(int(seed))
    assignment = [0] * n
    if labels is None:
        order = torch.randperm(n, generator=generator).tolist()
        base, extra = divmod(n, k)
        start = 0
        for fold in range(k):
            size = base + (1 if fold < extra else 0)
            for i in order[start:start + size]:
                assignment[i] = fold
            start += size
        return assignment
    values = _as_labels(labels, n)
    by_class: dict[Hashable, list[int]] = {}
    for i, value in enumerate(values):
        by_class.setdefault(value, []).append(i)
    small = {c: len(ix) for c, ix in by_class.items() if len(ix) < k}
    if small:
        log.warning("stratified %d-fold split: classes %s have fewer than %d samples, so some "
                    "validation folds lack them", k, dict(sorted(small.items(), key=str)), k)
    dealer = 0
    for value in sorted(by_class, key=lambda c: (str(type(c)), str(c))):
        members = by_class[value]
        for j in torch.randperm(len(members), generator=generator).tolist():
            assignment[members[j]] = dealer % k
            dealer += 1
    return assignment


def kfold(n: int, k: int = 5, seed: int = 0, labels: Any = None) -> tuple[Fold, ...]:
    """The ``k`` folds of ``range(n)`` (see :func:`fold_assignment`)."""
    assignment = fold_assignment(n, k, seed, labels)
    val: list[list[int]] = [[] for _ in range(k)]
    for i, fold in enumerate(assignment):
        val[fold].append(i)
    folds = []
    for index in range(k):
        chosen = set(val[index])
        folds.append(Fold(index, tuple(i for i in range(n) if i not in chosen), tuple(val[index])))
    return tuple(folds)


def split_digest(assignment: Sequence[int]) -> str:
    """A short fingerprint of a fold assignment (for the run manifest)."""
    return hashlib.sha256(",".join(map(str, assignment)).encode()).hexdigest()[:16]


def class_counts(labels: Any, indices: Sequence[int]) -> Counter:
    """How many samples of each label ``indices`` holds (for reports and tests)."""
    values = _as_labels(labels, len(labels))
    return Counter(values[i] for i in indices)


def labels_from_dataset(dataset: Any) -> list[Hashable]:
    """Labels for ``stratify=True``: ``dataset.targets`` / ``dataset.labels``
    when present (torchvision datasets), else the target of every sample."""
    for attribute in ("targets", "labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return _as_labels(values, len(dataset))
    out: list[Hashable] = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise CrossValidationError("stratify=True needs samples that are (inputs, label) "
                                       "pairs; pass the labels instead (stratify=labels)")
        target = sample[1]
        if isinstance(target, torch.Tensor):
            if target.numel() != 1:
                raise CrossValidationError("stratify=True needs one class label per sample; "
                                           f"sample {i} has a target of shape "
                                           f"{tuple(target.shape)}")
            target = target.item()
        out.append(target)
    return out
