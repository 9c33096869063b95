"""What cross-validation returns: typed, frozen, JSON round-trippable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from autotune.engine.history import EpochMetrics, History
from autotune.plan.plan import Plan


@dataclass(frozen=True)
class FoldResult:
    """One fold that trained to the end."""

    fold: int
    #: Validation metrics after the last epoch: ``val_loss``, one entry per
    #: ``metrics=`` function (``val_<name>``), and ``train_loss``.
    metrics: Mapping[str, float]
    #: Per-epoch training history (see :class:`autotune.engine.history.EpochMetrics`).
    history: tuple[EpochMetrics, ...]
    train_size: int
    val_size: int
    device: str
    threads: int
    duration_s: float
    #: SHA-256 of the trained weights (state_dict bytes): equal digests mean
    #: bit-identical models, e.g. a parallel and a sequential run.
    weights_sha256: str
    #: Where the fold's checkpoint was written (``checkpoint=True``), else "".
    checkpoint: str = ""
    #: Peak CUDA memory of the fold (bytes), 0 on CPU.
    peak_memory_bytes: int = 0
    #: True when this result was read from ``run_dir`` instead of trained now.
    resumed: bool = False
    #: Which process trained it ("pid@host"), for the curious and for tests.
    worker: str = ""
    #: What did not go as planned in this fold (plugin fallbacks and
    #: warnings, e.g. "compile: fallback: torch.compile failed, trained eagerly").
    events: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [asdict(e) for e in self.history]
        data["metrics"] = dict(self.metrics)
        data["events"] = list(self.events)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FoldResult":
        values = dict(data)
        values["history"] = tuple(EpochMetrics.from_dict(e) for e in values.get("history", ()))
        values["metrics"] = {str(k): float(v) for k, v in values["metrics"].items()}
        values["events"] = tuple(values.get("events", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def training_history(self) -> History:
        return History(list(self.history))


@dataclass(frozen=True)
class FoldFailure:
    """A fold that raised; the others went on."""

    fold: int
    error: str
    message: str
    traceback: str
    duration_s: float = 0.0
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FoldFailure":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def __str__(self) -> str:
        return f"fold {self.fold}: {self.error}: {self.message}"


@dataclass(frozen=True)
class MetricSummary:
    """One metric across the folds that finished (sample standard deviation;
    0 for a single fold)."""

    mean: float
    std: float
    min: float
    max: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> "MetricSummary":
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(mean=mean, std=math.sqrt(var), min=min(values), max=max(values), count=n)

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g}"


@dataclass(frozen=True)
class CVResult:
    """What :func:`autotune.cross_validate` returns."""

    k: int
    #: Folds that finished, by fold index (trained now or resumed).
    folds: tuple[FoldResult, ...]
    #: Folds that raised, with their tracebacks.
    failed: tuple[FoldFailure, ...]
    #: The plan every fold trained with (its ``parallel_folds`` and
    #: ``threads`` settings say how the folds shared the machine).
    plan: Plan
    #: How the folds ran: "sequential", "loky", "threading" or "dask".
    backend: str
    #: Folds in flight at once.
    concurrency: int
    threads_per_fold: int
    #: The metric the best fold is chosen by, and whether higher is better.
    best_by: str = "val_loss"
    higher_is_better: bool = False
    run_dir: str = ""
    wall_time_s: float = 0.0
    seed: int = 0
    aggregate: Mapping[str, MetricSummary] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every fold finished."""
        return not self.failed and len(self.folds) == self.k

    @property
    def best_fold(self) -> FoldResult | None:
        """The finished fold with the best ``best_by`` metric (None if none has it)."""
        scored = [f for f in self.folds if self.best_by in f.metrics
                  and not math.isnan(f.metrics[self.best_by])]
        if not scored:
            return None
        pick = max if self.higher_is_better else min
        return pick(scored, key=lambda f: f.metrics[self.best_by])

    def fold(self, index: int) -> FoldResult:
        for result in self.folds:
            if result.fold == index:
                return result
        raise KeyError(f"fold {index} did not finish (failed: {[f.fold for f in self.failed]})")

    def summary(self) -> str:
        """A few lines for logs and scripts."""
        lines = [f"{len(self.folds)}/{self.k} folds finished ({self.backend}, "
                 f"{self.concurrency} at once, {self.threads_per_fold} threads each) "
                 f"in {self.wall_time_s:.1f} s"]
        for name, stat in self.aggregate.items():
            lines.append(f"  {name}: {stat.mean:.4f} ± {stat.std:.4f} (min {stat.min:.4f}, "
                         f"max {stat.max:.4f})")
        best = self.best_fold
        if best is not None:
            lines.append(f"  best fold: {best.fold} ({self.best_by} {best.metrics[self.best_by]:.4f})")
        for failure in self.failed:
            lines.append(f"  FAILED {failure}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        best = self.best_fold
        return {
            "k": self.k, "backend": self.backend, "concurrency": self.concurrency,
            "threads_per_fold": self.threads_per_fold, "seed": self.seed,
            "run_dir": self.run_dir, "wall_time_s": self.wall_time_s,
            "best_by": self.best_by, "higher_is_better": self.higher_is_better,
            "best_fold": None if best is None else best.fold,
            "aggregate": {k: asdict(v) for k, v in self.aggregate.items()},
            "folds": [f.to_dict() for f in self.folds],
            "failed": [f.to_dict() for f in self.failed],
            "plan": self.plan.to_dict(),
        }


def aggregate(folds: tuple[FoldResult, ...]) -> dict[str, MetricSummary]:
    """Mean, std, min and max of every metric the finished folds share."""
    if not folds:
        return {}
    names = [n for n in folds[0].metrics if all(n in f.metrics for f in folds)]
    return {n: MetricSummary.of([float(f.metrics[n]) for f in folds]) for n in names}
