"""``autotune daemon``: a foreground sampler for systemd.

It samples the machine every ``interval`` seconds into a JSONL file (one
``os.write`` per line on an ``O_APPEND`` descriptor, so a kill leaves whole
lines), rotates by size (``FILE`` -> ``FILE.1`` ... ``FILE.K``), stops
cleanly on SIGTERM/SIGINT with exit code 0, and refuses to start a second
time on the same output: ``FILE.lock`` holds an exclusive ``flock`` and the
holder's pid. The kernel drops the lock when the process dies, however it
dies, so a stale lock file never blocks a restart. Files are user-only
(0600); the daemon opens no network port.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

from autotune.coordinator.protocol import socket_path
from autotune.coordinator.server import Coordinator
from autotune.machine.detect import detect
from autotune.telemetry.errors import TelemetryError
from autotune.telemetry.jsonl import FILE_MODE, encode_line, open_append, sample_record
from autotune.telemetry.sampler import Sampler

log = logging.getLogger("autotune.telemetry")


@dataclass(frozen=True)
class DaemonOptions:
    out: Path
    interval_s: float = 1.0
    #: Rotate when the file would grow past this many bytes.
    max_bytes: int = 10 * 1024 * 1024
    #: Rotated files kept (FILE.1 is the newest); 0 truncates in place.
    backups: int = 3
    #: Also watch this process (and its children); None watches none.
    pid: int | None = None
    #: Listen for training jobs and divide the cores among them.
    coordinate: bool = True
    #: The socket; None: autotune.coordinator.protocol.socket_path().
    socket: Path | None = None
    #: Cores to share (the first N this process may use); None: all usable.
    cores: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise TelemetryError(f"--interval must be > 0 seconds, got {self.interval_s}")
        if self.pid is not None and self.pid < 1:
            raise TelemetryError(f"--pid must be >= 1, got {self.pid}")
        if self.max_bytes < 1024:
            raise TelemetryError(f"--max-bytes must be at least 1024, got {self.max_bytes}")
        if self.backups < 0:
            raise TelemetryError(f"--backups must be >= 0, got {self.backups}")
        if self.cores is not None and self.cores < 1:
            raise TelemetryError(f"--cores must be >= 1, got {self.cores}")


class AlreadyRunning(TelemetryError):
    """Another daemon holds the lock on this output."""


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``FILE.lock`` with our pid in it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.with_name(out.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(
                    f"another autotune daemon (pid {holder}) is already writing to "
                    f"{self.out} (lock {self.path}); stop it first or choose another --out"
                ) from None
            raise TelemetryError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays (unlinking it would let a racing daemon lock a
        # different inode); emptying it says nobody holds it.
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


class RotatingWriter:
    """Whole JSON lines to ``path``, rotated before a line would push the
    file past ``max_bytes``; ``header`` is written at the top of every file
    so each rotated file can be read on its own."""

    def __init__(self, path: Path, max_bytes: int, backups: int, header: dict[str, Any]) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.header = header
        self.rotations = 0
        self._lock = threading.Lock()
        self._fd = open_append(path)
        self._size = os.fstat(self._fd).st_size
        if self._size == 0:
            self._write(encode_line(header))

    def _write(self, data: bytes) -> None:
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        self._size += written

    def write(self, record: dict[str, Any]) -> None:
        data = encode_line(record)
        with self._lock:  # the sampler and the coordinator both write
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self.rotate()
            self._write(data)

    def rotate(self) -> None:
        os.close(self._fd)
        if self.backups > 0:
            for k in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{k}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{k + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fd = open_append(self.path, truncate=True)
        self._size = 0
        self.rotations += 1
        self._write(encode_line(self.header))

    def close(self) -> None:
        os.close(self._fd)


def run_daemon(options: DaemonOptions,
               announce: Callable[[str], None] | None = None) -> int:
    """Sample until SIGTERM/SIGINT; returns the exit code (0). ``announce``
    gets a line once the lock is held and sampling starts, and when it stops."""
    say = announce or log.info
    out = options.out
    if out.parent and not out.parent.is_dir():
        raise TelemetryError(f"--out {out}: directory {out.parent} does not exist")
    if options.pid is not None and not psutil.pid_exists(options.pid):
        # Sampling would go on for ever with nothing to watch.
        raise TelemetryError(f"--pid {options.pid}: no such process (has it exited?)")
    lock = OutputLock(out)
    lock.acquire()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    writer: RotatingWriter | None = None
    coordinator = None
    sampler = Sampler(options.interval_s, pid=options.pid or 0, include_children=True)
    try:
        sampler.open()
        header = {"type": "meta", "source": "autotune daemon", "pid": os.getpid(),
                  "watched_pid": options.pid, "interval_s": options.interval_s,
                  "started": time.time(), "notes": list(sampler.notes)}
        writer = RotatingWriter(out, options.max_bytes, options.backups, header)
        say(f"autotune daemon: pid {os.getpid()} sampling every {options.interval_s:g} s "
            f"to {out} (rotating at {options.max_bytes} bytes, {options.backups} backups)")
        if options.coordinate:
            coordinator = start_coordinator(options, writer.write)
            say(f"autotune daemon: sharing {len(coordinator.cpus)} cpu(s) among the training "
                f"jobs that register on {coordinator.path}")
        next_at = time.monotonic()
        while not stop.is_set():
            sample = sampler.sample_once()
            writer.write(sample_record(sample))
            next_at += options.interval_s
            if next_at < time.monotonic():
                next_at = time.monotonic() + options.interval_s
            stop.wait(next_at - time.monotonic())
        say(f"autotune daemon: stopped by signal after {writer.rotations} rotations")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if coordinator is not None:
            coordinator.stop()
        if writer is not None:
            writer.close()
        sampler.close()
        lock.release()


def usable_cpus(cores: int | None = None) -> list[int]:
    """The cpu ids to share: this process's affinity, cut to its CPU quota
    (cgroups) or to ``cores``."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else list(range(os.cpu_count() or 1))
    budget = detect().cpu.worker_budget
    return allowed[:min(len(allowed), budget, cores or len(allowed))]


def start_coordinator(options: DaemonOptions,
                      record: Callable[[dict[str, Any]], None]) -> Coordinator:
    coordinator = Coordinator(options.socket or socket_path(), usable_cpus(options.cores),
                              record=record)
    coordinator.start()
    return coordinator
