"""``autotune monitor -- CMD``: run a command, sample it and its
descendants while it runs, and return its exit code with the timeline.

The command dies with the monitor: on Linux it is started with
``PR_SET_PDEATHSIG`` = SIGTERM, so even a monitor killed with SIGKILL
(which it cannot catch) leaves no command running unwatched. Elsewhere
there is no such kernel hook; a SIGTERM to the monitor is still passed on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from autotune.telemetry.diagnosis import Diagnosis, diagnose, findings
from autotune.telemetry.errors import TelemetryError
from autotune.telemetry.jsonl import open_append, sample_record, write_line
from autotune.telemetry.plot import plot_timeline
from autotune.telemetry.sampler import Sampler
from autotune.telemetry.timeline import Timeline


@dataclass(frozen=True)
class MonitorResult:
    #: The command's exit code; 128+N when signal N killed it (as shells do).
    exit_code: int
    timeline: Timeline
    diagnosis: Diagnosis
    findings: tuple[Diagnosis, ...]
    timeline_path: Path
    plot_path: Path | None


log = logging.getLogger("autotune.telemetry")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_code_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process
    dies, however it dies (Linux ``prctl(PR_SET_PDEATHSIG)``); None where
    the kernel has no such hook (macOS, BSD, Windows) or libc cannot be found.

    libc is loaded here, before the fork, so the child only makes two system
    calls between fork and exec. The signal is tied to the thread that forks,
    so call Popen from a thread that outlives the child (run_monitored waits
    for it on that same thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError) as exc:
        log.info("telemetry: no prctl (%s); the command will not die with the monitor", exc)
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def run_monitored(command: Sequence[str], *, interval_s: float = 1.0,
                  out_dir: str | os.PathLike[str] = "autotune-monitor",
                  plot: bool = True, stdout: IO[Any] | int | None = None) -> MonitorResult:
    """Start ``command``, sample it every ``interval_s`` into
    ``out_dir/timeline.jsonl``, wait for it, plot ``out_dir/timeline.png``.

    ``stdout``: where the command's stdout goes (a file object or a file
    descriptor, as for :class:`subprocess.Popen`); None leaves it ours.
    """
    if not command:
        raise TelemetryError("no command to monitor: put it after '--', e.g. "
                             "autotune monitor -- python train.py")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timeline_path = out / "timeline.jsonl"
    fd = open_append(timeline_path, truncate=True)
    try:
        try:
            child = subprocess.Popen(list(command), stdout=stdout,
                                     preexec_fn=die_with_parent())
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
