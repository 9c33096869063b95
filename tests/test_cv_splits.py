"""k-fold splits: disjoint, covering, balanced, stratified, reproducible."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from autotune.cv import CrossValidationError, fold_assignment, kfold
from autotune.cv.splits import labels_from_dataset, split_digest
from cv_helpers import toy_dataset


@pytest.mark.parametrize("n,k", [(10, 2), (97, 5), (100, 10), (7, 7)])
def test_validation_folds_are_disjoint_and_cover_everything(n, k):
    folds = kfold(n, k, seed=3)
    assert [f.index for f in folds] == list(range(k))
    seen = [i for f in folds for i in f.val]
    assert sorted(seen) == list(range(n))  # covering, and no index twice
    for fold in folds:
        assert set(fold.train).isdisjoint(fold.val)
        assert sorted(fold.train + fold.val) == list(range(n))
    sizes = [len(f.val) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_stratified_folds_keep_class_proportions():
    labels = [0] * 60 + [1] * 30 + [2] * 9 + [3] * 1
    folds = kfold(len(labels), 3, seed=1, labels=labels)
    total = Counter(labels)
    for fold in folds:
        counts = Counter(labels[i] for i in fold.val)
        for label, count in total.items():
            assert abs(counts.get(label, 0) - count / 3) < 1, (fold.index, label, counts)
    assert sorted(i for f in folds for i in f.val) == list(range(len(labels)))


def test_stratified_split_differs_from_a_plain_one_and_accepts_tensors():
    labels = torch.tensor([0] * 50 + [1] * 50)
    plain = fold_assignment(100, 5, seed=0)
    stratified = fold_assignment(100, 5, seed=0, labels=labels)
    assert plain != stratified
    per_fold = Counter((stratified[i], int(labels[i])) for i in range(100))
    assert set(per_fold.values()) == {10}


def test_same_inputs_same_folds_other_seed_other_folds():
    assert fold_assignment(50, 5, seed=7) == fold_assignment(50, 5, seed=7)
    assert fold_assignment(50, 5, seed=7) != fold_assignment(50, 5, seed=8)
    assert split_digest(fold_assignment(50, 5, 7)) != split_digest(fold_assignment(50, 5, 8))


def test_labels_read_from_the_dataset():
    dataset = toy_dataset(20)
    assert labels_from_dataset(dataset) == dataset.tensors[1].tolist()


@pytest.mark.parametrize("call,message", [
    (lambda: kfold(10, 1), "k must be an integer >= 2"),
    (lambda: kfold(3, 5), "need at least 5 samples"),
    (lambda: kfold(10, 2, labels=[0, 1]), "2 labels but the dataset has 10"),
    (lambda: kfold(4, 2, labels=[[0], [1], [0], [1]]), "hashable"),
])
def test_bad_split_input_is_one_clear_error(call, message):
    with pytest.raises(CrossValidationError, match=message):
        call()
