"""Telemetry under faults tried on purpose, with real files and processes: a
daemon restarted on a torn file, timelines with wrong-typed fields, the
JSON stream of ``monitor --json``, and processes left behind by a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autotune.telemetry import read_timeline
from autotune.telemetry.jsonl import open_append

AUTOTUNE = [sys.executable, "-m", "autotune"]
PNG = b"\x89PNG\r\n\x1a\n"
TORN = b'{"type":"sample","time":1700000000.5,"cpu_perc'


def wait_until(condition, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def gone(proc: psutil.Process) -> bool:
    """Exited (a zombie waiting for init to reap it counts: it runs nothing)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start_daemon(out: Path) -> subprocess.Popen:
    return subprocess.Popen([*AUTOTUNE, "daemon", "--interval", "0.1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- 1. the daemon restarted on a torn file; and SIGKILL leaves nothing behind -----------


@pytest.mark.slow
def test_daemon_killed_then_restarted_on_a_torn_file_starts_on_a_new_line(tmp_path) -> None:
    out = tmp_path / "telemetry.jsonl"
    first = start_daemon(out)
    try:
        wait_until(lambda: first.poll() is not None or line_count(out) >= 3, "3 daemon lines")
        assert first.poll() is None, first.communicate()
        descendants = psutil.Process(first.pid).children(recursive=True)
    finally:
        first.kill()  # SIGKILL: no handler runs, no cleanup
        first.communicate(timeout=60)
    wait_until(lambda: all(gone(p) for p in descendants), "the daemon's processes to exit", 15)

    # A crash mid-write (or a full disk) leaves a line without its newline.
    with open(out, "ab") as handle:
        handle.write(TORN)
    before = out.read_bytes()

    second = start_daemon(out)  # the kernel dropped the SIGKILLed daemon's lock
    try:
        wait_until(lambda: second.poll() is not None or line_count(out) >= before.count(b"\n") + 3,
                   "3 more daemon lines")
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "torn line" in err and "Traceback" not in err

    raw = out.read_bytes()
    assert raw.startswith(before)  # nothing the first daemon wrote was touched
    lines = raw.split(b"\n")
    torn_at = lines.index(TORN)  # the torn line stays as it was, on a line of its own
    assert lines[-1] == b""  # and every line after it is whole
    for line in lines[:torn_at] + lines[torn_at + 1:-1]:
        assert isinstance(json.loads(line), dict)
    assert json.loads(lines[torn_at + 1])["type"] == "sample"  # the first new record

    timeline = read_timeline(out)
    assert timeline.skipped.lines == 1 and timeline.skipped.records == 0
    assert timeline.meta["pid"] == first.pid
    assert len(timeline.samples) == sum(b'"type":"sample"' in line for line in lines) - 1

    report = subprocess.run([*AUTOTUNE, "report", str(out), "--json"], capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    skipped = json.loads(report.stdout)["skipped"]
    assert skipped["lines"] == 1 and f"{out}:{torn_at + 1}: not a JSON line" in \
        skipped["examples"][0]


def test_appending_to_a_torn_file_ends_the_torn_line_first(tmp_path, caplog) -> None:
    torn, whole, empty = tmp_path / "torn.jsonl", tmp_path / "whole.jsonl", tmp_path / "e.jsonl"
    torn.write_bytes(b'{"type":"meta"}\n' + TORN)
    whole.write_bytes(b'{"type":"meta"}\n')
    empty.write_bytes(b"")
    for path in (torn, whole, empty):
        os.close(open_append(path))
    assert torn.read_bytes() == b'{"type":"meta"}\n' + TORN + b"\n"
    assert whole.read_bytes() == b'{"type":"meta"}\n'  # nothing added to a whole file
    assert empty.read_bytes() == b""
    assert [r.getMessage() for r in caplog.records if "torn line" in r.getMessage()] == [
        f"telemetry: {torn} ended in a torn line (a writer stopped mid-line); it is kept as it "
        "was, and new records start on the next line"]


# -- 2. report on a timeline with wrong-typed fields -----------------------------------------


def good_sample(t: float, **changes) -> dict:
    record = {"type": "sample", "time": t, "cpu_percent": 40.0, "cpu_per_core": [40.0, 40.0],
              "memory_used_bytes": 4 * 1024**3, "memory_total_bytes": 16 * 1024**3,
              "runnable_threads": 1, "cores": 2.0, "process_rss_bytes": 1024**3,
              "process_cpu_percent": 50.0, "process_threads": 4, "process_count": 1,
              "load_1m": 0.5, "gpus": [{"index": 0, "utilization_percent": 30.0,
                                        "memory_used_bytes": 1024**3,
                                        "memory_total_bytes": 8 * 1024**3, "temperature_c": 50.0,
                                        "power_w": None, "sm_clock_mhz": 1000,
                                        "memory_clock_mhz": 5000}]}
    record.update(changes)
    return record


def good_step(i: int, **changes) -> dict:
    record = {"type": "step", "time": 100.0 + i, "step": i, "data_wait_s": 0.06, "step_s": 0.04,
              "samples": 8}
    record.update(changes)
    return record


def write_bad_timeline(path: Path) -> None:
    gpu = good_sample(0)["gpus"][0]
    lines = [json.dumps({"type": "meta", "source": "test", "notes": ["a note", 7]})]
    lines += [json.dumps(good_sample(100.0 + i)) for i in range(4)]
    lines += [json.dumps(good_step(i)) for i in range(6)]
    # Bad optional fields: read as missing, the sample is kept (4 samples, 8 fields).
    lines += [json.dumps(good_sample(110.0, process_rss_bytes="Infinity", load_1m="NaN")),
              json.dumps(good_sample(111.0, runnable_threads=[1, 2], cpu_per_core="abc")),
              json.dumps(good_sample(112.0, gpus=5)),
              json.dumps(good_sample(113.0, gpus=[7, {"index": "x"},
                                                  dict(gpu, utilization_percent={"deep": [1]})]))]
    # Bad required fields: the record is skipped (7 records).
    lines += [json.dumps(good_sample(120.0, cpu_percent="50")),
              json.dumps(good_sample(121.0, memory_total_bytes=None)),
              json.dumps(good_sample(122.0, cores={"a": 1})),
              '{"type": "sample", "time": NaN, "cpu_percent": 1}',  # bare NaN: json accepts it
              json.dumps(good_sample(1e999)),  # written as Infinity
              json.dumps(good_step(9, data_wait_s="0.5")),
              json.dumps(good_step(10, samples=None))]
    # Lines that are not JSON objects (5 lines), the last one not even UTF-8.
    lines += ["42", '"a string"', "[" * 100_000, "{not json"]
    lines += [json.dumps({"type": "meta", "notes": "a later meta is not read"})]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xc3\x28 garbage\n")


def test_report_skips_wrong_typed_fields_and_records_and_counts_them(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    write_bad_timeline(path)
    timeline = read_timeline(path)
    assert (len(timeline.samples), len(timeline.steps)) == (8, 6)
    assert (timeline.skipped.lines, timeline.skipped.records, timeline.skipped.fields) == (5, 7, 9)
    assert timeline.notes == ("a note",)  # the 9th field: a note that is not a string
    kept = {s.time: s for s in timeline.samples}
    assert kept[110.0].process_rss_bytes is None and kept[110.0].load_1m is None
    assert kept[111.0].runnable_threads is None and kept[111.0].cpu_per_core == ()
    assert kept[112.0].gpus == ()
    assert [g.utilization_percent for g in kept[113.0].gpus] == [None]  # 2 entries dropped
    assert kept[100.0].gpus[0].power_w is None  # null where unsupported is not a problem

    plot = tmp_path / "bad.png"
    result = subprocess.run([*AUTOTUNE, "report", str(path), "--json", "--plot", str(plot)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)  # valid JSON: no NaN or Infinity token
    assert {k: data["skipped"][k] for k in ("lines", "records", "fields")} == \
        {"lines": 5, "records": 7, "fields": 9}
    assert data["summary"]["sample_count"] == 8 and data["summary"]["steps"]["count"] == 6
    assert data["diagnosis"]["kind"] == "input-bound"  # from the six good steps
    assert plot.read_bytes()[:8] == PNG

    text = subprocess.run([*AUTOTUNE, "report", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert text.returncode == 0, text.stderr
    assert ("Skipped   5 unreadable lines, 7 bad records skipped, 9 bad fields read as missing; "
            f'first: {path}:1: meta: notes=["a note", 7] is not a list of strings; read as '
            "missing\n") in text.stdout
    assert "Diagnosis: data wait 60% of step time: input-bound" in text.stdout


def test_report_on_a_file_with_nothing_usable_is_one_line_exit_2(tmp_path) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_text('{"type": "sample", "time": "soon"}\n[1, 2]\nnull\n')
    result = subprocess.run([*AUTOTUNE, "report", str(path), "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"autotune: error: {path}: no usable samples or steps in "
                                    "this timeline (2 unreadable lines, 1 bad record skipped")


# -- 3. monitor --json: only the report on stdout ------------------------------------------


def test_monitor_json_keeps_the_commands_stdout_out_of_the_json_stream(tmp_path) -> None:
    # autotune monitor --json -- python -c "print('hello')" 2>err | python -m json.tool
    with open(tmp_path / "err", "wb") as err_file:
        monitor = subprocess.Popen(
            [*AUTOTUNE, "monitor", "--json", "--no-plot", "--interval", "0.2", "--out",
             str(tmp_path / "m"), "--", sys.executable, "-c",
             "print('hello'); raise SystemExit(4)"],
            stdout=subprocess.PIPE, stderr=err_file)
    tool = subprocess.Popen([sys.executable, "-m", "json.tool"], stdin=monitor.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    monitor.stdout.close()  # json.tool holds the read end now
    parsed, tool_err = tool.communicate(timeout=120)
    monitor.wait(timeout=120)
    err = (tmp_path / "err").read_text()
    assert tool.returncode == 0, (tool_err, err)
    assert monitor.returncode == 4  # the command's exit code still comes through
    assert "hello" in err  # the command's stdout went to stderr
    data = json.loads(parsed)
    assert data["exit_code"] == 4 and data["summary"]["sample_count"] >= 2


# -- 4. a SIGKILLed monitor takes its command with it -----------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_monitor_killed_with_sigkill_leaves_no_command_behind(tmp_path) -> None:
    marker = tmp_path / "child.pid"
    monitor = subprocess.Popen(
        [*AUTOTUNE, "monitor", "--no-plot", "--interval", "0.2", "--out", str(tmp_path / "m"),
         "--", sys.executable, "-c",
         f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(600)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: monitor.poll() is not None or (marker.exists() and marker.read_text()),
                   "the command to start")
        assert monitor.poll() is None
        command = psutil.Process(int(marker.read_text()))
        assert command.ppid() == monitor.pid
    finally:
        monitor.kill()
        monitor.wait(timeout=60)
    try:
        wait_until(lambda: gone(command), "the command to die with its monitor", 15)
    finally:
        if not gone(command):
            command.kill()
