"""The one error cross-validation raises on bad input or a run directory
that does not fit the run asked for."""

from __future__ import annotations

from autotune.errors import AutotuneError


class CrossValidationError(AutotuneError):
    """Bad cross-validation input (k, labels, backend...), or a ``run_dir``
    made by a different run (another k, seed or dataset)."""
