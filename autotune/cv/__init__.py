"""Cross-validation: k folds trained with one plan on the shared engine,
in parallel through joblib (loky processes, threads) or on a Dask cluster,
each fold stored as it finishes so a rerun resumes. See
docs/cross_validation.md."""

from autotune.cv.context import context_for_plan
from autotune.cv.errors import CrossValidationError
from autotune.cv.fold import default_loss, default_optimizer, weights_digest
from autotune.cv.metrics import accuracy
from autotune.cv.result import CVResult, FoldFailure, FoldResult, MetricSummary
from autotune.cv.runner import cross_validate
from autotune.cv.splits import Fold, fold_assignment, kfold
from autotune.cv.store import Manifest, RunStore

__all__ = [
    "CVResult", "CrossValidationError", "Fold", "FoldFailure", "FoldResult", "Manifest",
    "MetricSummary", "RunStore", "accuracy", "context_for_plan", "cross_validate",
    "default_loss", "default_optimizer", "fold_assignment", "kfold", "weights_digest",
]
