"""The daemon's side of the socket: registered jobs, their shares, faults.

:class:`Coordinator` listens on the Unix socket (see
:mod:`autotune.coordinator.protocol`), keeps one record per registered job,
and re-divides the cores (:func:`autotune.coordinator.allocator.allocate`)
whenever a job arrives, leaves, dies or reports a measurement at a share it
had not been measured at. A job whose socket closes (killed, OOM) leaves at
once; one silent for :data:`HEARTBEAT_TIMEOUT_S`, or whose process is gone,
is dropped by the watchdog. Every share given is an event in
:attr:`Coordinator.events` and, through ``record``, a ``share`` line in the
daemon's timeline. A message that is not valid is refused with a log line
and its connection closed; the daemon goes on.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from autotune.coordinator.allocator import Demand, Grant, Observation, allocate
from autotune.coordinator.protocol import (HEARTBEAT_TIMEOUT_S, MAX_OBSERVATIONS, LineReader,
                                           ProtocolError, encode, parse)
from autotune.errors import AutotuneError

log = logging.getLogger("autotune.daemon")

class AlreadyListening(AutotuneError):
    """Another daemon answers on this socket."""


@dataclass
class _Job:
    job: str
    pid: int
    command: str
    connection: socket.socket
    loader_workers_usable: bool
    registered: float
    last_seen: float
    observations: list[Observation] = field(default_factory=list)
    last_report: dict[str, Any] = field(default_factory=dict)
    grant: Grant | None = None
    generation: int = 0
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, kind: str, **fields: Any) -> None:
        data = encode(kind, **fields)
        with self.send_lock:
            try:
                self.connection.sendall(data)
            except OSError as exc:  # it is going; the reader thread drops it
                log.info("daemon: could not send %s to job %s (pid %d): %s", kind, self.job,
                         self.pid, exc)


class Coordinator:
    """Shares of ``cpus`` for the jobs that register on ``path``."""

    def __init__(self, path: Path, cpus: Sequence[int],
                 record: Callable[[dict[str, Any]], None] | None = None,
                 heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S) -> None:
        if not cpus:
            raise AutotuneError("daemon: no usable cpu to share")
        self.path = Path(path)
        self.cpus = tuple(cpus)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._record = record or (lambda event: None)
        self._jobs: dict[str, _Job] = {}  # in arrival order
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._counter = 0
        #: The latest share changes, newest last (``autotune daemon status``).
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        try:
            _prepare_directory(self.path.parent)
            if self.path.exists() or self.path.is_symlink():
                if _answers(self.path):
                    raise AlreadyListening(f"another autotune daemon listens on {self.path}; "
                                           "stop it first or choose another --socket")
                self.path.unlink()  # left by a daemon that died
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # the socket is born 0600, never readable by others
            try:
                server.bind(str(self.path))
            except OSError:
                server.close()
                raise
            finally:
                os.umask(old_umask)
        except OSError as exc:  # a path too long for a Unix socket, a directory not ours...
            raise AutotuneError(f"daemon: cannot listen on {self.path}: "
                                f"{exc.strerror or exc}; choose another --socket "
                                "(or $AUTOTUNE_SOCKET)") from None
        os.chmod(self.path, 0o600)
        server.listen(16)
        server.settimeout(0.2)
        self._server = server
        for target, name in ((self._accept_loop, "accept"), (self._watchdog, "watchdog")):
            thread = threading.Thread(target=target, name=f"autotune-daemon-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("daemon: listening on %s for jobs to share %d cpu(s)", self.path, len(self.cpus))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for job in self._jobs.values():
                _close(job.connection)
            self._jobs.clear()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    # -- what the CLI and the tests read ---------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            jobs = [_describe(job) for job in self._jobs.values()]
            return {"cores": len(self.cpus), "jobs": jobs, "events": list(self.events)[-20:]}

    # -- connections ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            connection.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(connection,),
                                      name="autotune-daemon-job", daemon=True)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        peer = _peer_pid(connection)
        reader = LineReader()
        job: _Job | None = None
        try:
            while not self._stop.is_set():
                chunk = connection.recv(65536)
                if not chunk:
                    return  # closed: the job ended or was killed
                for line in reader.feed(chunk):
                    message = parse(line)
                    job = self._handle(message, connection, peer, job)
                    if job is None and message["type"] == "status":
                        return
        except _Left:
            return
        except ProtocolError as exc:
            who = f"job {job.job} (pid {job.pid})" if job else f"pid {peer or '?'}"
            log.warning("daemon: refused a message from %s: %s; connection closed", who, exc)
            try:
                connection.sendall(encode("error", reason=str(exc)[:500]))
            except OSError:
                pass
        except OSError as exc:
            log.info("daemon: connection lost: %s", exc)
        finally:
            _close(connection)
            if job is not None:
                self._drop(job, "its connection closed")

    def _handle(self, message: dict[str, Any], connection: socket.socket, peer: int | None,
                job: _Job | None) -> _Job | None:
        kind = message["type"]
        if job is None:
            if kind == "status":
                connection.sendall(encode("status", **self.status()))
                return None
            if kind != "register":
                raise ProtocolError(f"the first message is register or status, not {kind}")
            return self._register(message, connection, peer)
        job.last_seen = time.monotonic()
        if kind == "report":
            self._report(job, message)
        elif kind == "leave":
            self._drop(job, "it left")
            raise _Left()
        elif kind not in ("heartbeat",):
            raise ProtocolError(f"{kind} is not a message a registered job sends")
        return job

    def _register(self, message: dict[str, Any], connection: socket.socket,
                  peer: int | None) -> _Job:
        observations = []
        for item in message.get("observations", [])[-MAX_OBSERVATIONS:]:
            if not isinstance(item, dict):
                raise ProtocolError("register.observations: each is an object")
            try:
                observations.append(Observation.from_dict(item))
            except ValueError as exc:
                raise ProtocolError(f"register.observations: {exc}") from None
        now = time.monotonic()
        with self._lock:
            wanted = message.get("job")
            if wanted and wanted not in self._jobs:
                name = wanted  # a job re-registering with a restarted daemon
            else:
                self._counter += 1
                name = f"{peer or message['pid']}-{self._counter}"
            job = _Job(job=name, pid=peer or message["pid"], command=message["command"][:300],
                       connection=connection,
                       loader_workers_usable=message.get("loader_workers_usable", True),
                       registered=time.time(), last_seen=now, observations=observations)
            self._jobs[name] = job
            log.info("daemon: job %s (pid %d) registered%s: %s", name, job.pid,
                     " again" if wanted == name else "", job.command)
            self._rebalance(f"job {name} arrived")
        return job

    def _report(self, job: _Job, message: dict[str, Any]) -> None:
        try:
            observation = Observation.from_dict(message)
        except ValueError as exc:
            raise ProtocolError(f"report: {exc}") from None
        with self._lock:
            new_point = all((o.threads, o.loader_workers) !=
                            (observation.threads, observation.loader_workers)
                            for o in job.observations)
            job.observations = [*job.observations, observation][-MAX_OBSERVATIONS:]
            job.last_report = {**message, "time": time.time()}
            job.last_report.pop("type", None)
            if new_point:  # something learnt: the shares may change
                self._rebalance(f"job {job.job} measured {observation.samples_per_s:.1f} "
                                f"samples/s at {observation.threads} thread(s), "
                                f"{observation.loader_workers} worker(s)")

    def _drop(self, job: _Job, why: str) -> None:
        with self._lock:
            if self._jobs.get(job.job) is not job:
                return
            del self._jobs[job.job]
            log.info("daemon: job %s (pid %d) released its share: %s", job.job, job.pid, why)
            self._event({"job": job.job, "pid": job.pid, "left": why})
            self._rebalance(f"job {job.job} left ({why})")
        _close(job.connection)

    # -- shares ------------------------------------------------------------------------
    def _rebalance(self, trigger: str) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
            grants = allocate([Demand(j.job, tuple(j.observations), j.loader_workers_usable)
                               for j in jobs], self.cpus)
            for job in jobs:
                grant = grants[job.job]
                if job.grant is not None and _same(job.grant, grant):
                    continue
                job.grant = grant
                job.generation += 1
                self._event({"job": job.job, "pid": job.pid, "threads": grant.threads,
                             "loader_workers": grant.loader_workers, "cpus": list(grant.cpus),
                             "generation": job.generation, "reason": grant.reason,
                             "trigger": trigger})
                if grant.waiting:
                    job.send("wait", job=job.job, reason=grant.reason)
                else:
                    job.send("share", job=job.job, threads=grant.threads,
                             loader_workers=grant.loader_workers, cpus=list(grant.cpus),
                             generation=job.generation, reason=grant.reason)

    def _event(self, event: dict[str, Any]) -> None:
        event = {"type": "share", "time": time.time(), **event}
        self.events.append(event)
        try:
            self._record(event)
        except Exception as exc:  # noqa: BLE001 - the timeline is not worth a crash
            log.warning("daemon: could not record a share event: %s", exc)

    def _watchdog(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                jobs = list(self._jobs.values())
            for job in jobs:
                if not _alive(job.pid):
                    self._drop(job, f"process {job.pid} is gone")
                elif now - job.last_seen > self.heartbeat_timeout_s:
                    self._drop(job, f"no heartbeat for {now - job.last_seen:.1f} s")


class _Left(Exception):
    pass


def _same(a: Grant, b: Grant) -> bool:
    return (a.threads, a.loader_workers, a.cpus) == (b.threads, b.loader_workers, b.cpus)


def _describe(job: _Job) -> dict[str, Any]:
    grant = job.grant
    report = job.last_report
    return {"job": job.job, "pid": job.pid, "command": job.command,
            "threads": grant.threads if grant else 0,
            "loader_workers": grant.loader_workers if grant else 0,
            "cpus": list(grant.cpus) if grant else [],
            "waiting": bool(grant and grant.waiting),
            "samples_per_s": report.get("samples_per_s"), "data_wait": report.get("data_wait"),
            # The job's own reading of its epoch (the daemon plugin sends one).
            "diagnosis": report.get("diagnosis", ""),
            "registered": job.registered, "reason": grant.reason if grant else ""}


def _prepare_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise AutotuneError(f"daemon: {directory} belongs to uid {info.st_uid}, not to you; "
                            "choose another --socket")
    if stat.S_IMODE(info.st_mode) & 0o077 and directory.name.startswith("autotune"):
        os.chmod(directory, 0o700)  # our own directory: nobody else looks in


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _peer_pid(connection: socket.socket) -> int | None:
    try:
        data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                     struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", data)
        return pid or None
    except (OSError, AttributeError):  # not Linux
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
