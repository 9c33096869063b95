""":class:`TrainingMonitor`: the ``monitor=`` object ``Engine.fit`` calls.

It runs a :class:`~autotune.telemetry.sampler.Sampler` on this process and
its DataLoader workers while ``fit`` runs and records every micro-step's
data wait and step time beside the hardware samples, so the diagnosis can
say "data wait 62% of step time: input-bound". With ``out=DIR`` it also
streams ``DIR/timeline.jsonl`` as it goes and writes ``DIR/timeline.png``
at the end.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any

from autotune.telemetry.diagnosis import Diagnosis, diagnose, findings
from autotune.telemetry.jsonl import open_append, sample_record, step_record, write_line
from autotune.telemetry.plot import plot_timeline
from autotune.telemetry.sampler import DEFAULT_CAPACITY, Sample, Sampler
from autotune.telemetry.timeline import StepRecord, StepTotals, Timeline

#: Step records kept in memory; totals cover every step regardless.
DEFAULT_STEP_CAPACITY = 100_000


class TrainingMonitor:
    """Implements the engine's monitor protocol (``autotune.engine.step.Monitor``).

    ``interval_s``: seconds between hardware samples. ``out``: a directory
    for ``timeline.jsonl`` (streamed) and ``timeline.png`` (at stop), or
    None to keep everything in memory only. ``pid``: the process to watch
    (default this one, with its children: the DataLoader workers).
    """

    def __init__(self, interval_s: float = 1.0, *, out: str | os.PathLike[str] | None = None,
                 plot: bool = True, pid: int | None = None, include_children: bool = True,
                 capacity: int = DEFAULT_CAPACITY,
                 step_capacity: int = DEFAULT_STEP_CAPACITY) -> None:
        self.out = None if out is None else Path(out)
        self.plot = plot
        self._fd: int | None = None
        self._steps: collections.deque[StepRecord] = collections.deque(maxlen=step_capacity)
        self._totals = StepTotals()
        self._lock = threading.Lock()
        self.sampler = Sampler(interval_s, pid=pid, include_children=include_children,
                               capacity=capacity, sink=self._write_sample)
        self.started: float | None = None
        self._running = False

    @property
    def timeline_path(self) -> Path | None:
        return None if self.out is None else self.out / "timeline.jsonl"

    @property
    def plot_path(self) -> Path | None:
        return None if self.out is None or not self.plot else self.out / "timeline.png"

    # -- the engine's protocol ---------------------------------------------------------

    def start(self) -> None:
        if self.started is None:
            self.started = time.time()
        if self.timeline_path is not None and self._fd is None:
            self.out.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            first = not self.timeline_path.exists() or self.timeline_path.stat().st_size == 0
            self._fd = open_append(self.timeline_path)
            self.sampler.open()  # so the meta line carries its notes (no NVML, ...)
            if first:
                write_line(self._fd, {"type": "meta", **self._meta()})
        self.sampler.start()
        self._running = True

    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None:
        record = StepRecord(time=round(time.time(), 4), step=int(step),
                            data_wait_s=round(float(data_wait_s), 6), step_s=round(float(step_s), 6),
                            samples=int(samples))
        with self._lock:
            self._steps.append(record)
            self._totals = self._totals.add(record)
        if self._fd is not None:
            write_line(self._fd, step_record(record))

    def stop(self) -> None:
        if not self._running:
            return  # stopped already (close() after fit's own stop())
        self._running = False
        self.sampler.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.plot_path is not None and (self._steps or self.sampler.samples()):
            plot_timeline(self.timeline(), self.plot_path, title="autotune training monitor")

    # -- results -----------------------------------------------------------------------

    def timeline(self) -> Timeline:
        with self._lock:
            steps, totals = tuple(self._steps), self._totals
        return Timeline(samples=self.sampler.samples(), steps=steps, meta=self._meta(),
                        step_totals=totals)

    def diagnose(self) -> Diagnosis:
        return diagnose(self.timeline())

    def findings(self) -> list[Diagnosis]:
        return findings(self.timeline())

    def close(self) -> None:
        self.stop()
        self.sampler.close()

    def __enter__(self) -> "TrainingMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self) -> dict[str, Any]:
        return {"source": "TrainingMonitor", "pid": self.sampler.pid,
                "interval_s": self.sampler.interval_s, "started": self.started,
                "notes": list(self.sampler.notes)}

    def _write_sample(self, sample: Sample) -> None:
        if self._fd is not None:
            write_line(self._fd, sample_record(sample))
