"""``autotune daemon status``: the running daemon's jobs and their shares."""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from typing import Any

from autotune.cli.output import print_json
from autotune.coordinator.protocol import LineReader, encode, parse, socket_path
from autotune.display.tables import table

JSON_VERSION = 1


def ask_status(path: Path, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The daemon's status message, or None when none listens on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        sock.sendall(encode("status"))
        reader = LineReader()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            lines = reader.feed(chunk)
            if lines:
                return parse(lines[0])
    except OSError:
        return None
    finally:
        sock.close()


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.socket) if args.socket else socket_path()
    status = ask_status(path)
    if status is None:
        message = f"no autotune daemon listens on {path}"
        if args.json:
            print_json({"version": JSON_VERSION, "socket": str(path), "running": False,
                        "error": message})
        else:
            print(message)
        return 1
    if args.json:
        print_json({"version": JSON_VERSION, "socket": str(path), "running": True,
                    "cores": status.get("cores"), "jobs": status.get("jobs", []),
                    "events": status.get("events", [])})
        return 0
    jobs = status.get("jobs", [])
    print(f"autotune daemon on {path}: {status.get('cores')} core(s), {len(jobs)} job(s)")
    if jobs:
        rows = [(j["job"], j["pid"], "waiting" if j["waiting"] else j["threads"],
                 j["loader_workers"], ",".join(map(str, j["cpus"])) or "-",
                 "-" if j.get("samples_per_s") is None else f"{j['samples_per_s']:.1f}",
                 j.get("diagnosis") or "-", j["command"][:50]) for j in jobs]
        print()
        print(table(rows, ("JOB", "PID", "THREADS", "WORKERS", "CPUS", "SAMPLES/S",
                           "DIAGNOSIS", "COMMAND")))
    events = status.get("events", [])[-5:]
    if events:
        print("\nlatest changes:")
        for event in events:
            when = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
            what = (f"left: {event['left']}" if "left" in event else
                    f"{event.get('threads')} thread(s), {event.get('loader_workers')} worker(s) "
                    f"({event.get('trigger', '')})")
            print(f"  {when} job {event.get('job')}: {what}")
    return 0
