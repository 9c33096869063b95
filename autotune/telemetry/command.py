"""``autotune monitor -- CMD``: run a command, sample it and its
descendants while it runs, and return its exit code with the timeline."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autotune.telemetry.diagnosis import Diagnosis, diagnose, findings
from autotune.telemetry.plot import plot_timeline
from autotune.telemetry.sampler import Sampler
from autotune.telemetry.timeline import (TelemetryError, Timeline, open_append, sample_record,
                                         write_line)


@dataclass(frozen=True)
class MonitorResult:
    #: The command's exit code; 128+N when signal N killed it (as shells do).
    exit_code: int
    timeline: Timeline
    diagnosis: Diagnosis
    findings: tuple[Diagnosis, ...]
    timeline_path: Path
    plot_path: Path | None


def exit_code_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_monitored(command: Sequence[str], *, interval_s: float = 1.0,
                  out_dir: str | os.PathLike[str] = "autotune-monitor",
                  plot: bool = True) -> MonitorResult:
    """Start ``command``, sample it every ``interval_s`` into
    ``out_dir/timeline.jsonl``, wait for it, plot ``out_dir/timeline.png``."""
    if not command:
        raise TelemetryError("no command to monitor: put it after '--', e.g. "
                             "autotune monitor -- python train.py")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timeline_path = out / "timeline.jsonl"
    fd = open_append(timeline_path, truncate=True)
    try:
        try:
            child = subprocess.Popen(list(command))
        except OSError as exc:
            raise TelemetryError(f"cannot run {shlex.join(command)!r}: "
                                 f"{exc.strerror or exc}") from None
        sampler = Sampler(interval_s, pid=child.pid, include_children=True,
                          sink=lambda s: write_line(fd, sample_record(s)))
        sampler.open()
        meta = {"source": "autotune monitor", "command": list(command), "pid": child.pid,
                "interval_s": interval_s, "started": time.time(), "notes": list(sampler.notes)}
        write_line(fd, {"type": "meta", **meta})
        # The child is in our process group, so Ctrl-C reaches it directly;
        # a SIGTERM sent to us alone is passed on, and we wait for it to exit.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        try:
            sampler.start()
            returncode = child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            sampler.close()
    finally:
        os.close(fd)
    timeline = Timeline(samples=sampler.samples(), meta=meta)
    plot_path = None
    if plot:
        plot_path = plot_timeline(timeline, out / "timeline.png",
                                  title=f"autotune monitor -- {shlex.join(command)}"[:90])
    return MonitorResult(exit_code=exit_code_of(returncode), timeline=timeline,
                         diagnosis=diagnose(timeline), findings=tuple(findings(timeline)),
                         timeline_path=timeline_path, plot_path=plot_path)
