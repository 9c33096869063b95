"""The timeline: hardware samples and training steps, in memory and as JSONL.

A timeline file has one JSON object per line, each with a ``type``:
``meta`` (what was watched, how often), ``sample`` (a :class:`Sample`) or
``step`` (a :class:`StepRecord`). Every line is written with one
``os.write`` on an ``O_APPEND`` descriptor, so concurrent writers (the
sampler thread and the training loop) never interleave inside a line and a
process killed mid-run leaves whole lines; :func:`read_timeline` skips a
torn last line. Files are created user-only (0600).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from autotune.errors import AutotuneError
from autotune.telemetry.sampler import Sample

FILE_MODE = 0o600


class TelemetryError(AutotuneError):
    """Bad telemetry input: an unreadable timeline, a bad interval, a command
    that cannot start, an output another daemon already writes."""


@dataclass(frozen=True)
class StepRecord:
    time: float
    step: int
    data_wait_s: float
    step_s: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepTotals:
    """Sums over every step of a run, kept even when the in-memory step
    ring has dropped the oldest records."""

    count: int = 0
    data_wait_s: float = 0.0
    step_s: float = 0.0
    samples: int = 0

    @property
    def data_wait_fraction(self) -> float:
        loop = self.data_wait_s + self.step_s
        return self.data_wait_s / loop if loop > 0 else 0.0

    def add(self, record: StepRecord) -> "StepTotals":
        return StepTotals(self.count + 1, self.data_wait_s + record.data_wait_s,
                          self.step_s + record.step_s, self.samples + record.samples)

    @classmethod
    def of(cls, steps: Iterable[StepRecord]) -> "StepTotals":
        totals = cls()
        for record in steps:
            totals = totals.add(record)
        return totals


@dataclass(frozen=True)
class Timeline:
    samples: tuple[Sample, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    #: What was watched: interval_s, pid, command, notes, started...
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Totals over all steps; None means "sum ``steps``".
    step_totals: StepTotals | None = None

    @property
    def totals(self) -> StepTotals:
        return self.step_totals if self.step_totals is not None else StepTotals.of(self.steps)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self.meta.get("notes", ()))

    def summary(self) -> "Summary":
        return summarize(self)


@dataclass(frozen=True)
class GPUSummary:
    index: int
    mean_utilization_percent: float | None
    peak_memory_fraction: float | None
    peak_temperature_c: float | None
    mean_power_w: float | None


@dataclass(frozen=True)
class Summary:
    duration_s: float
    sample_count: int
    cores: float
    mean_cpu_percent: float
    peak_cpu_percent: float
    peak_memory_fraction: float
    memory_total_bytes: int
    mean_runnable_threads: float | None
    peak_process_rss_bytes: int | None
    mean_process_cpu_percent: float | None
    gpus: tuple[GPUSummary, ...]
    steps: StepTotals

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"]["data_wait_fraction"] = round(self.steps.data_wait_fraction, 4)
        return data


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 2) if present else None


def _peak(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarize(timeline: Timeline) -> Summary:
    samples = timeline.samples
    # The first sample's deltas cover no interval (it opens the counters).
    busy = samples[1:] or samples
    gpus = []
    indexes = sorted({g.index for s in samples for g in s.gpus})
    for index in indexes:
        readings = [g for s in busy for g in s.gpus if g.index == index]
        gpus.append(GPUSummary(
            index=index,
            mean_utilization_percent=_mean(g.utilization_percent for g in readings),
            peak_memory_fraction=_peak(g.memory_fraction for g in readings),
            peak_temperature_c=_peak(g.temperature_c for g in readings),
            mean_power_w=_mean(g.power_w for g in readings)))
    peak_rss = _peak(s.process_rss_bytes for s in samples)
    return Summary(
        duration_s=round(samples[-1].time - samples[0].time, 3) if samples else 0.0,
        sample_count=len(samples),
        cores=samples[-1].cores if samples else 0.0,
        mean_cpu_percent=_mean(s.cpu_percent for s in busy) or 0.0,
        peak_cpu_percent=_peak(s.cpu_percent for s in busy) or 0.0,
        peak_memory_fraction=round(_peak(s.memory_fraction for s in samples) or 0.0, 4),
        memory_total_bytes=samples[-1].memory_total_bytes if samples else 0,
        mean_runnable_threads=_mean(s.runnable_threads for s in samples),
        peak_process_rss_bytes=None if peak_rss is None else int(peak_rss),
        mean_process_cpu_percent=_mean(s.process_cpu_percent for s in busy),
        gpus=tuple(gpus), steps=timeline.totals)


# -- JSONL ---------------------------------------------------------------------------


def open_append(path: str | os.PathLike[str], *, truncate: bool = False) -> int:
    """An O_APPEND descriptor on ``path``, created (and forced) user-only."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through os.open
    return fd


def encode_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


def write_line(fd: int, record: Mapping[str, Any]) -> int:
    """One whole line with one write(2); returns the bytes written."""
    data = encode_line(record)
    written = os.write(fd, data)
    if written != len(data):  # a regular file only writes short when the disk is full
        raise OSError(f"short write: {written} of {len(data)} bytes (disk full?)")
    return written


def sample_record(sample: Sample) -> dict[str, Any]:
    return {"type": "sample", **sample.to_dict()}


def step_record(step: StepRecord) -> dict[str, Any]:
    return {"type": "step", **step.to_dict()}


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Each JSON line of ``path``; a torn last line (a writer killed
    mid-write) is skipped, a malformed line elsewhere is an error."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TelemetryError(f"cannot read timeline {path}: {exc.strerror or exc}") from None
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: torn by a kill
                return
            raise TelemetryError(f"{path}:{number}: not a JSON line: {line[:60]!r}") from None
        if not isinstance(record, dict):
            raise TelemetryError(f"{path}:{number}: expected a JSON object, got {line[:60]!r}")
        yield record


def read_timeline(path: str | os.PathLike[str]) -> Timeline:
    samples: list[Sample] = []
    steps: list[StepRecord] = []
    meta: dict[str, Any] = {}
    for record in iter_records(path):
        kind = record.pop("type", None)
        try:
            if kind == "sample":
                samples.append(Sample.from_dict(record))
            elif kind == "step":
                steps.append(StepRecord(**{k: record[k] for k in StepRecord.__dataclass_fields__}))
            elif kind == "meta" and not meta:  # rotated daemon files repeat it
                meta = record
        except (TypeError, KeyError) as exc:
            raise TelemetryError(f"{path}: a {kind} line is missing a field ({exc})") from None
    if not samples and not steps:
        raise TelemetryError(f"{path}: no samples or steps in this timeline")
    return Timeline(samples=tuple(samples), steps=tuple(steps), meta=meta)
