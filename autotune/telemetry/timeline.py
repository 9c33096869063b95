"""The timeline in memory: hardware samples and training steps of one run,
what reading its file skipped, and the summary the diagnosis and the report
read. Reading and writing the file is :mod:`autotune.telemetry.jsonl`.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from autotune.telemetry.sampler import Sample


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


#: How many problem descriptions :class:`Skipped` keeps (the counts cover all).
SKIPPED_EXAMPLES = 5


@dataclass(frozen=True)
class Skipped:
    """What :func:`read_timeline` could not use, counted."""

    #: Lines that are not a JSON object: torn by a kill, or garbage.
    lines: int = 0
    #: Sample, step or meta records dropped because a required field was unusable.
    records: int = 0
    #: Optional fields of the wrong type, read as missing.
    fields: int = 0
    #: The first few problems, ``"FILE:LINE: what"``.
    examples: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.lines or self.records or self.fields)

    def describe(self) -> str:
        """``"1 unreadable line, 2 bad records skipped, 3 bad fields read as
        missing; first: FILE:2: ..."``; empty when nothing was skipped."""
        parts = [f"{count} {what}{'' if count == 1 else plural}{tail}"
                 for count, what, plural, tail in (
                     (self.lines, "unreadable line", "s", ""),
                     (self.records, "bad record", "s", " skipped"),
                     (self.fields, "bad field", "s", " read as missing")) if count]
        if not parts:
            return ""
        return ", ".join(parts) + (f"; first: {self.examples[0]}" if self.examples else "")

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "records": self.records, "fields": self.fields,
                "examples": list(self.examples)}


@dataclass(frozen=True)
class Timeline:
    samples: tuple[Sample, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    #: What was watched: interval_s, pid, command, notes, started...
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Totals over all steps; None means "sum ``steps``".
    step_totals: StepTotals | None = None
    #: What reading the file skipped (nothing for an in-memory timeline).
    skipped: Skipped = field(default_factory=Skipped)

    @property
    def totals(self) -> StepTotals:
        return self.step_totals if self.step_totals is not None else StepTotals.of(self.steps)

    @property
    def notes(self) -> tuple[str, ...]:
        notes = self.meta.get("notes", ())
        if not isinstance(notes, (list, tuple)):
            return ()
        return tuple(note for note in notes if isinstance(note, str))

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
