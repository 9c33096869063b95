"""A training job's side of the socket.

:func:`join` registers this process with a running daemon (once per
process) and returns its :class:`JobClient`, or ``None`` when no daemon
listens -- then nothing changes. A background thread reads the daemon's
messages (a new share can come at any time; the job takes it at its next
epoch boundary) and sends a heartbeat every
:data:`~autotune.coordinator.protocol.HEARTBEAT_INTERVAL_S`. When the
daemon goes away the job keeps its last share and goes on; when one
listens again the job registers again, with what it measured, so a
restarted daemon re-learns the running jobs.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from autotune.coordinator.allocator import Grant, Observation
from autotune.coordinator.protocol import (HEARTBEAT_INTERVAL_S, MAX_OBSERVATIONS, LineReader,
                                           ProtocolError, encode, parse, socket_path)

log = logging.getLogger("autotune.daemon")

#: How long connecting to the socket may take before the job goes on alone.
CONNECT_TIMEOUT_S = 2.0

#: Seconds between attempts to reach a daemon that went away.
RECONNECT_INTERVAL_S = 1.0


class JobClient:
    """This process, registered as a job with the daemon on ``path``."""

    def __init__(self, path: Path, command: str, loader_workers_usable: bool = True) -> None:
        self.path = Path(path)
        self.command = command
        self.loader_workers_usable = loader_workers_usable
        self.job: str | None = None
        #: The share in force from the daemon (the last one, if it went away).
        self.grant: Grant | None = None
        #: Increases with each share the daemon sends.
        self.generation = 0
        self.observations: list[Observation] = []
        self._waiting_reason = ""
        self._socket: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None

    # -- what the job calls ------------------------------------------------------
    def start(self, wait_s: float | None = None) -> bool:
        """Connect and register; wait (up to ``wait_s``, None: as long as the
        daemon lives) while the daemon has no core free. False when no
        daemon answers."""
        if not self._connect():
            return False
        self._thread = threading.Thread(target=self._run, name="autotune-job", daemon=True)
        self._thread.start()
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self._changed:
            announced = False
            while self.grant is None and not self._closed.is_set():
                if self._socket is None and self.job is None:
                    return False  # the daemon went away before answering
                if self._waiting_reason and not announced:
                    log.warning("autotune: waiting for a share of the machine: %s",
                                self._waiting_reason)
                    announced = True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log.warning("autotune: no share from the daemon after %.0f s; going on "
                                "with the whole machine", wait_s)
                    return False
                self._changed.wait(timeout=0.5 if left is None else min(0.5, left))
        return self.grant is not None

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def report(self, observation: Observation, diagnosis: str = "") -> None:
        """One epoch measured under the share in force."""
        self.observations = [*self.observations, observation][-MAX_OBSERVATIONS:]
        self._send("report", threads=observation.threads,
                   loader_workers=observation.loader_workers,
                   samples_per_s=observation.samples_per_s, data_wait=observation.data_wait,
                   **({"diagnosis": diagnosis} if diagnosis else {}))

    def leave(self) -> None:
        """Give the share back now (also at process exit)."""
        if self._closed.is_set() or os.getpid() != self._pid:
            return
        self._closed.set()  # the daemon's closing the socket is expected now
        self._send("leave")
        self.close()

    def close(self) -> None:
        self._closed.set()
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self._changed:
            self._changed.notify_all()

    # -- the connection --------------------------------------------------------------
    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(self.path))
            register: dict[str, Any] = {
                "pid": os.getpid(), "command": self.command,
                "loader_workers_usable": self.loader_workers_usable,
                "observations": [o.to_dict() for o in self.observations]}
            if self.job:
                register["job"] = self.job
            sock.sendall(encode("register", **register))
        except OSError:
            sock.close()
            return False
        sock.settimeout(None)
        self._socket = sock
        return True

    def _send(self, kind: str, **fields: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked child (a loader worker) is not the job
        data = encode(kind, **fields)
        with self._send_lock:
            sock = self._socket
            if sock is None:
                return
            try:
                sock.sendall(data)
            except OSError:
                pass  # the reader notices and reconnects

    def _run(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeats, name="autotune-job-heartbeat",
                                     daemon=True)
        heartbeat.start()
        while not self._closed.is_set():
            sock = self._socket
            if sock is None:
                if self._closed.wait(RECONNECT_INTERVAL_S):
                    return
                if self._connect():
                    log.info("autotune: the daemon answers again on %s; registered job %s "
                             "again", self.path, self.job)
                continue
            self._read(sock)
            if not self._closed.is_set():
                self._socket = None
                log.warning("autotune: the daemon on %s went away; keeping the last share "
                            "(%s) and going on", self.path,
                            self.grant.reason if self.grant else "none")
                with self._changed:
                    self._changed.notify_all()

    def _read(self, sock: socket.socket) -> None:
        reader = LineReader()
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                for line in reader.feed(chunk):
                    self._on_message(parse(line))
        except (OSError, ProtocolError) as exc:
            if not self._closed.is_set():
                log.info("autotune: daemon connection ended: %s", exc)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        with self._changed:
            if kind == "share":
                self.job = message["job"]
                self.grant = Grant(message["job"], message["threads"], message["loader_workers"],
                                   tuple(message["cpus"]), message["reason"])
                self.generation += 1
                self._waiting_reason = ""
            elif kind == "wait":
                self.job = message["job"]
                self._waiting_reason = message["reason"]
            elif kind == "error":
                log.warning("autotune: the daemon refused a message: %s", message["reason"])
            self._changed.notify_all()

    def _heartbeats(self) -> None:
        while not self._closed.wait(HEARTBEAT_INTERVAL_S):
            if self._socket is not None:
                self._send("heartbeat")


# -- one job per process ---------------------------------------------------------------

_current: JobClient | None = None
_lock = threading.Lock()


def current() -> JobClient | None:
    """This process's registered job, if any (never a parent's, after fork)."""
    client = _current
    if client is None or client._pid != os.getpid():
        return None
    return client


def join(loader_workers_usable: bool = True, wait_s: float | None = None) -> JobClient | None:
    """Register this process with the daemon when one listens (once per
    process; later calls return the same job). None: no daemon."""
    global _current
    with _lock:
        path = socket_path()
        client = current()
        if client is not None and not client._closed.is_set():
            if client.path == path:
                return client
            client.leave()  # the socket changed (a test, another daemon): start afresh
        if not path.exists():
            return None
        client = JobClient(path, _command_line(), loader_workers_usable)
        if not client.start(wait_s=wait_s):
            client.close()
            return None
        _current = client
        atexit.register(client.leave)
        log.info("autotune: registered with the daemon on %s as job %s", path, client.job)
        return client


def leave() -> None:
    """Give this process's share back now (it also happens at exit)."""
    global _current
    with _lock:
        client, _current = current(), None
    if client is not None:
        client.leave()


def _command_line() -> str:
    return " ".join([os.path.basename(sys.executable), *sys.argv])[:300]
