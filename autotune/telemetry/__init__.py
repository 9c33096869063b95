"""Hardware telemetry for training runs: a low-overhead sampler, a
timeline (in memory and as JSONL), a one-sentence bottleneck diagnosis,
plots, a training monitor for ``Engine.fit(monitor=...)`` and a daemon.

See docs/monitor.md.
"""

from autotune.telemetry.diagnosis import Diagnosis, diagnose, findings
from autotune.telemetry.errors import TelemetryError
from autotune.telemetry.jsonl import read_timeline
from autotune.telemetry.sampler import GPUSample, Sample, Sampler
from autotune.telemetry.timeline import (Skipped, StepRecord, StepTotals, Summary, Timeline,
                                         summarize)
from autotune.telemetry.training import TrainingMonitor

__all__ = [
    "Diagnosis", "GPUSample", "Sample", "Sampler", "Skipped", "StepRecord", "StepTotals", "Summary",
    "TelemetryError", "Timeline", "TrainingMonitor", "diagnose", "findings", "read_timeline",
    "summarize",
]
