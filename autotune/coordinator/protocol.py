"""The wire between training jobs and ``autotune daemon``: where the socket
lives, how a message is framed and what each message may hold.

One Unix stream socket, user-only (the directory 0700, the socket 0600),
no TCP port. A message is one JSON object on one line, at most
:data:`MAX_MESSAGE_BYTES` bytes, with a ``type``:

job -> daemon
    ``register``  ``{pid, command, job?, loader_workers_usable, observations?}``:
                  a new job (or, with ``job``, one re-registering after a
                  daemon restart, with what it measured so far)
    ``report``    ``{threads, loader_workers, samples_per_s, data_wait}``:
                  one epoch measured under the share in force (also a heartbeat)
    ``heartbeat`` ``{}``: still alive
    ``leave``     ``{}``: done; give the share to the others
    ``status``    ``{}``: (the CLI) list the jobs
daemon -> job
    ``share``     ``{job, threads, loader_workers, cpus, generation, reason}``
    ``wait``      ``{job, reason}``: no core is free; a ``share`` follows
    ``status``    ``{cores, jobs, events}``
    ``error``     ``{reason}``: the message was refused (the daemon closes)

:func:`parse` checks a message against :data:`FIELDS` and raises
:class:`ProtocolError` naming what is wrong; the daemon logs it and drops
that connection, never itself.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from autotune.errors import AutotuneError

#: The socket path, when set (tests and several daemons use their own).
SOCKET_ENV = "AUTOTUNE_SOCKET"

#: A longer line is refused and its connection closed (a register with a
#: full history of observations stays far below this).
MAX_MESSAGE_BYTES = 64 * 1024

#: A job that sent nothing for this long is taken for dead (hung, stopped)
#: and its share goes to the others; a killed job's socket closes at once.
HEARTBEAT_TIMEOUT_S = 5.0

#: How often a job says it is alive.
HEARTBEAT_INTERVAL_S = 1.0

#: Observations a job keeps and re-sends when it registers again, and the
#: daemon keeps per job (the latest ones count).
MAX_OBSERVATIONS = 32

_NUMBER = (int, float)

#: Per message type: field -> (accepted types, required).
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "register": {"pid": ((int,), True), "command": ((str,), True), "job": ((str,), False),
                 "loader_workers_usable": ((bool,), False),
                 "observations": ((list,), False)},
    "report": {"threads": ((int,), True), "loader_workers": ((int,), True),
               "samples_per_s": (_NUMBER, True), "data_wait": (_NUMBER, True),
               "diagnosis": ((str,), False)},
    "heartbeat": {},
    "leave": {},
    "status": {"cores": ((int,), False), "jobs": ((list,), False), "events": ((list,), False)},
    "share": {"job": ((str,), True), "threads": ((int,), True),
              "loader_workers": ((int,), True), "cpus": ((list,), True),
              "generation": ((int,), True), "reason": ((str,), True)},
    "wait": {"job": ((str,), True), "reason": ((str,), True)},
    "error": {"reason": ((str,), True)},
}


class ProtocolError(AutotuneError):
    """A message that is not JSON, too long, of an unknown type or with a bad field."""


def socket_path() -> Path:
    """``$AUTOTUNE_SOCKET``, else ``$XDG_RUNTIME_DIR/autotune/daemon.sock``,
    else ``/tmp/autotune-<uid>/daemon.sock``."""
    given = os.environ.get(SOCKET_ENV)
    if given:
        return Path(given)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "autotune" if runtime else Path(f"/tmp/autotune-{os.getuid()}")
    return base / "daemon.sock"


def encode(kind: str, **fields: Any) -> bytes:
    """One message as a line of bytes; raises ProtocolError if it would be refused."""
    message = {"type": kind, **fields}
    check(message)
    data = (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{kind} message of {len(data)} bytes is over the "
                            f"{MAX_MESSAGE_BYTES}-byte limit")
    return data


def parse(line: bytes) -> dict[str, Any]:
    """The message in ``line`` (one JSON object, newline optional), checked."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes is over the "
                            f"{MAX_MESSAGE_BYTES}-byte limit")
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message is a JSON object, got {type(message).__name__}")
    check(message)
    return message


def check(message: Mapping[str, Any]) -> None:
    kind = message.get("type")
    if kind not in FIELDS:
        raise ProtocolError(f"unknown message type {kind!r}; known: {', '.join(FIELDS)}")
    spec = FIELDS[str(kind)]
    for name, (types, required) in spec.items():
        if name not in message:
            if required:
                raise ProtocolError(f"{kind}: missing field {name!r}")
            continue
        value = message[name]
        # bool is an int to Python; only a field that asks for bool takes one.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ProtocolError(f"{kind}.{name}: expected {'/'.join(t.__name__ for t in types)}, "
                                f"got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"{kind}.{name}: not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ProtocolError(f"{kind}.{name}: negative ({value})")
    unknown = set(message) - set(spec) - {"type"}
    if unknown:
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")


class LineReader:
    """Whole lines out of a stream socket's chunks, refusing any longer than
    the limit before it has been read in full."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer.extend(chunk)
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_MESSAGE_BYTES:
                    raise ProtocolError(f"a line longer than {MAX_MESSAGE_BYTES} bytes "
                                        "(no newline yet)")
                return lines
            lines.append(bytes(self._buffer[:end]))
            del self._buffer[:end + 1]
