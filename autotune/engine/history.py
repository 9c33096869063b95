"""Per-epoch training metrics: what :meth:`Engine.fit` records, saves and plots."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

from autotune.errors import AutotuneError


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of :meth:`Engine.fit`. Times are wall-clock seconds."""

    epoch: int
    #: Mean training loss over the epoch's micro-batches (weighted by samples).
    train_loss: float
    #: Mean loss on ``val_loader``; ``None`` without one.
    val_loss: float | None
    epoch_time_s: float
    #: Epoch time (without validation) / batches.
    avg_batch_time_s: float
    samples_per_s: float
    #: Samples per optimizer step: batch size x micro-batches per step.
    effective_batch_size: int
    #: Time the loop spent waiting for the DataLoader to hand over a batch.
    data_wait_s: float
    batches: int = 0
    samples: int = 0
    #: Optimizer steps taken, a step a plugin skipped included (the fp16
    #: GradScaler's on inf/NaN gradients).
    optimizer_steps: int = 0
    #: What the plugins measured, as each returns it from
    #: ``autotune_epoch_end``, under its own keys (``clipping.grad_norm``:
    #: the mean pre-clip norm; ``mixed_precision.skipped_steps``: steps the
    #: fp16 GradScaler skipped), and each part's mean when the loss is a
    #: dict of losses (``loss_classifier``...). The engine knows none of them.
    extra: Mapping[str, float] = field(default_factory=dict)
    #: Intra-op threads at the epoch's end, and the loader's workers: what
    #: the epoch ran with (they can change between epochs, autotune.live.adapter).
    threads: int | None = None
    loader_workers: int | None = None

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_s / self.epoch_time_s if self.epoch_time_s > 0 else 0.0

    def summary(self, epochs: int | None = None) -> str:
        """One line for logs and example scripts."""
        of = f"/{epochs}" if epochs else ""
        val = f" val_loss {self.val_loss:.4f}" if self.val_loss is not None else ""
        extra = "".join(f" {name} {value:.3g}" for name, value in self.extra.items())
        return (f"epoch {self.epoch}{of}: train_loss {self.train_loss:.4f}{val}{extra} | "
                f"{self.epoch_time_s:.2f} s, {self.avg_batch_time_s * 1000:.1f} ms/batch, "
                f"{self.samples_per_s:.0f} samples/s, effective batch {self.effective_batch_size}, "
                f"data wait {self.data_wait_s:.2f} s ({self.data_wait_fraction:.0%})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpochMetrics":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Mark:
    """From micro-step ``step`` on (counted over the engine's life, in epoch
    ``epoch``), training ran under the configuration ``label`` (online
    tuning marks each chunk it runs)."""

    step: int
    epoch: int
    label: str


class History:
    """The epochs of one engine, in order; grows with each :meth:`Engine.fit`.
    :attr:`marks` says which configuration ran from which step on, when
    something changed settings during the run."""

    def __init__(self, epochs: list[EpochMetrics] | None = None,
                 marks: list[Mark] | None = None) -> None:
        self.epochs: list[EpochMetrics] = list(epochs or [])
        self.marks: list[Mark] = list(marks or [])

    def mark(self, step: int, label: str) -> None:
        """Training runs under ``label`` from micro-step ``step`` on."""
        if self.marks and self.marks[-1].label == label:
            return
        self.marks.append(Mark(step, len(self.epochs) + 1, label))

    def append(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self) -> Iterator[EpochMetrics]:
        return iter(self.epochs)

    def __getitem__(self, index: int) -> EpochMetrics:
        return self.epochs[index]

    @property
    def last(self) -> EpochMetrics | None:
        return self.epochs[-1] if self.epochs else None

    def column(self, name: str) -> list[Any]:
        """One metric across epochs, e.g. ``history.column("train_loss")``;
        a plugin's (``"clipping.grad_norm"``) is ``None`` in an epoch
        without it."""
        known = {f.name for f in fields(EpochMetrics)}
        if name in known:
            return [getattr(e, name) for e in self.epochs]
        if self.epochs and not any(name in e.extra for e in self.epochs):
            measured = ", ".join(sorted({k for e in self.epochs for k in e.extra})) or "-"
            raise AutotuneError(f"no metric {name!r} in this history; fields: "
                                f"{', '.join(sorted(known))}; measured: {measured}")
        return [e.extra.get(name) for e in self.epochs]

    # -- JSON ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(e) for e in self.epochs],
                "marks": [asdict(m) for m in self.marks]}

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "History":
        try:
            data = json.loads(Path(path).read_text())
            return cls([EpochMetrics.from_dict(e) for e in data["epochs"]],
                       [Mark(**m) for m in data.get("marks", [])])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AutotuneError(f"{path}: not a training history written by "
                                f"History.to_json ({type(exc).__name__}: {exc})") from exc

    # -- plot ------------------------------------------------------------------
    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write loss and throughput curves to a PNG.

        Uses matplotlib's object API with the Agg canvas, never pyplot: no
        GUI backend is touched (works headless) and no figure is registered
        in pyplot's global list, so none can be left open.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.epochs:
            raise AutotuneError("nothing to plot: the history has no epochs yet")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        x = self.column("epoch")
        fig = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(fig)
        loss_ax, speed_ax = fig.subplots(1, 2)
        loss_ax.plot(x, self.column("train_loss"), marker="o", label="train")
        val = [(e.epoch, e.val_loss) for e in self.epochs if e.val_loss is not None]
        if val:
            loss_ax.plot([v[0] for v in val], [v[1] for v in val], marker="o", label="validation")
        loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
        loss_ax.legend()
        speed_ax.plot(x, self.column("samples_per_s"), marker="o", color="tab:green")
        speed_ax.set(xlabel="epoch", ylabel="samples/s", title="throughput")
        wait_ax = speed_ax.twinx()
        wait_ax.plot(x, [e.data_wait_fraction * 100 for e in self.epochs], marker=".",
                     linestyle="--", color="tab:red")
        wait_ax.set_ylabel("data wait (% of epoch)", color="tab:red")
        for ax in (loss_ax, speed_ax):
            ax.set_xticks(x)
        fig.savefig(path, dpi=100)
        return path
