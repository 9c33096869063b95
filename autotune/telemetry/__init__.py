"""Hardware telemetry for training runs: a low-overhead sampler, a
timeline (in memory and as JSONL), a one-sentence bottleneck diagnosis,
plots, a training monitor for ``Engine.fit(monitor=...)`` and a daemon.

See docs/monitor.md.
"""

from autotune.telemetry.diagnosis import Diagnosis, diagnose, findings
from autotune.telemetry.sampler import GPUSample, Sample, Sampler
from autotune.telemetry.timeline import (Skipped, StepRecord, StepTotals, Summary, TelemetryError,
                                         Timeline, read_timeline, summarize)
from autotune.telemetry.training import TrainingMonitor

__all__ = [
    "Diagnosis", "GPUSample", "Sample", "Sampler", "Skipped", "StepRecord", "StepTotals", "Summary",
    "TelemetryError", "Timeline", "TrainingMonitor", "diagnose", "findings", "read_timeline",
    "summarize",
]
