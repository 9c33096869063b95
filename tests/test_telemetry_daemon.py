"""The real daemon as a subprocess: whole JSON lines, exit 0 on SIGTERM, the
lock (refusal with exit 2, released afterwards), rotation, 0600 files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.telemetry import read_timeline


def start_daemon(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune", "daemon", "--interval", "0.1",
                             "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited early with {proc.returncode}: {proc.stderr.read()}")
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"{path} did not reach {count} lines")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_daemon_writes_json_lines_refuses_a_second_and_stops_cleanly(tmp_path) -> None:
    out = tmp_path / "x.jsonl"
    first = start_daemon(out)
    try:
        wait_for_lines(out, 4, first)
        second = subprocess.run([sys.executable, "-m", "autotune", "daemon", "--out", str(out)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "already writing" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        code, err = stop(first)
    assert code == 0, err
    assert "stopped by signal" in err
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert records[0]["type"] == "meta" and records[0]["pid"] == first.pid
    assert sum(r["type"] == "sample" for r in records) >= 3
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert os.stat(str(out) + ".lock").st_mode & 0o777 == 0o600
    assert read_timeline(out).summary().sample_count >= 3

    # The lock went with the first daemon: a new one starts; SIGINT stops it too.
    again = start_daemon(out)
    try:
        wait_for_lines(out, len(lines) + 2, again)
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)
    assert again.returncode == 0


def test_daemon_rotates_by_size_and_keeps_k_backups(tmp_path) -> None:
    out = tmp_path / "r.jsonl"
    proc = start_daemon(out, "--max-bytes", "2048", "--backups", "2", "--pid", str(os.getpid()))
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{out}.2").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    files = [out, Path(f"{out}.1"), Path(f"{out}.2")]
    assert not Path(f"{out}.3").exists()
    for path in files:
        assert path.stat().st_size <= 2048
        assert path.stat().st_mode & 0o777 == 0o600
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert records[0]["type"] == "meta"  # each rotated file reads on its own
    sample = read_timeline(Path(f"{out}.1")).samples[0]
    assert sample.process_rss_bytes > 0  # --pid watched this test process


def test_daemon_bad_arguments_exit_2_with_one_line(tmp_path, capsys) -> None:
    from autotune.cli import main

    assert main(["daemon", "--out", str(tmp_path / "missing" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["daemon", "--out", str(tmp_path / "x.jsonl"), "--max-bytes", "10"]) == 2
    assert "--max-bytes must be at least 1024" in capsys.readouterr().err
