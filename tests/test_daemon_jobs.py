"""``autotune daemon`` with real training jobs: real processes, a real Unix
socket, SIGKILL and restarts (issue: the daemon tunes the machine)."""

import json
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from autotune.coordinator.protocol import HEARTBEAT_TIMEOUT_S, MAX_MESSAGE_BYTES

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")

JOB = Path(__file__).with_name("daemon_job.py")
#: Starting Python and importing torch on a loaded 2-core machine.
START_S = 90


def wait_for(predicate, timeout_s, what, show=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} {show()}")


class Daemon:
    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.socket = directory / "daemon.sock"
        self.timeline = directory / "timeline.jsonl"
        self.env = dict(os.environ, AUTOTUNE_SOCKET=str(self.socket))
        self.extra = extra
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autotune", "daemon", "--out", str(self.timeline),
             "--interval", "1", *self.extra], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: self.status() is not None, START_S, "the daemon to listen")
        return self

    def status(self):
        from autotune.cli.daemon_status import ask_status

        return ask_status(self.socket, timeout_s=2) if self.socket.exists() else None

    def jobs(self):
        status = self.status()
        return [] if status is None else status["jobs"]

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Job:
    def __init__(self, daemon: Daemon, name: str) -> None:
        self.stop_file = daemon.directory / f"stop-{name}"
        self.process = subprocess.Popen([sys.executable, str(JOB), str(self.stop_file)],
                                        env=daemon.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.lines: "queue.Queue[dict]" = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def records(self):
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def epochs(self):
        return [r for r in self.records() if "epoch" in r]

    def finish(self):
        self.stop_file.touch()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def short_dir():
    # A Unix socket path must be short (108 bytes): not under pytest's tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon(short_dir):
    running = Daemon(short_dir).start()
    yield running
    running.stop()


def test_the_socket_is_user_only_and_a_bad_message_is_refused_not_fatal(daemon):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700
    for bad in (b"this is not json\n", b'{"type": "register", "pid": "x", "command": 1}\n',
                b'{"type": "launch_missiles"}\n', b"x" * (MAX_MESSAGE_BYTES + 10)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(10)
            raw.connect(str(daemon.socket))
            raw.sendall(bad)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = raw.recv(4096)
                if not chunk:
                    break
                answer += chunk
            message = json.loads(answer)
            assert message["type"] == "error", message
            assert raw.recv(4096) == b""  # and the daemon closed that connection
    # ... and it goes on serving.
    assert daemon.status() == {"type": "status", "cores": daemon.status()["cores"], "jobs": [],
                               "events": []}
    assert daemon.process.poll() is None
    daemon.stop()
    assert "refused a message" in daemon.process.stderr.read()


def test_two_jobs_share_the_cores_and_a_killed_one_gives_its_share_back(daemon):
    cores = daemon.status()["cores"]
    first, second = Job(daemon, "a"), Job(daemon, "b")
    try:
        wait_for(lambda: len(daemon.jobs()) == 2, START_S, "both jobs to register")
        if cores >= 2:
            # Each has a share of its own: threads and workers together fit the cores.
            wait_for(lambda: all(j["threads"] >= 1 for j in daemon.jobs()), 30, "two shares")
            jobs = daemon.jobs()
            assert sum(j["threads"] + j["loader_workers"] for j in jobs) <= cores
            assert not set(jobs[0]["cpus"]) & set(jobs[1]["cpus"])
        # The share reached the plan, with source "daemon", in the job that came second
        # (the first had the whole machine until then).
        later_pid = daemon.jobs()[1]["pid"]
        if later_pid == first.process.pid:
            first, second = second, first
        plan_line = wait_for(lambda: [r for r in second.records() if "plan_threads" in r],
                             START_S, "the second job's plan")[0]
        assert plan_line["plan_source"] == "daemon"
        assert plan_line["plan_threads"] <= max(1, cores - 1)
        wait_for(lambda: len(first.epochs()) >= 2, START_S, "the first job to train")
        killed_pid = first.process.pid
        first.process.kill()  # SIGKILL: no leave message, no atexit
        first.process.wait()
        killed_at = time.monotonic()
        wait_for(lambda: [j["pid"] for j in daemon.jobs()] == [second.process.pid],
                 HEARTBEAT_TIMEOUT_S + 2, "the killed job's share to be released")
        assert time.monotonic() - killed_at <= HEARTBEAT_TIMEOUT_S + 2
        # The whole machine goes to the survivor (threads, or a loader worker where
        # it measured waiting for data), which takes it at an epoch boundary.
        wait_for(lambda: len(daemon.jobs()[0]["cpus"]) == cores, 10, "the survivor's new share",
                 show=daemon.status)
        survivor = daemon.jobs()[0]
        assert survivor["threads"] + survivor["loader_workers"] == cores
        wait_for(lambda: any(e["affinity"] == cores and e["grant_cpus"] == cores
                             for e in second.epochs()[-3:]), 60,
                 "the survivor to train on the freed cores", show=second.epochs)
        events = [json.loads(line) for line in daemon.timeline.read_text().splitlines()
                  if '"share"' in line]
        assert any(e.get("pid") == killed_pid and "left" in e for e in events)
    finally:
        for job in (first, second):
            job.finish()


def test_more_jobs_than_cores_wait_rather_than_oversubscribe(short_dir):
    daemon = Daemon(short_dir, "--cores", "1").start()
    jobs = []
    try:
        jobs = [Job(daemon, "a"), Job(daemon, "b")]
        wait_for(lambda: len(daemon.jobs()) == 2, START_S, "both jobs to register")
        listed = daemon.jobs()
        assert [j["waiting"] for j in listed] == [False, True]
        assert sum(j["threads"] + j["loader_workers"] for j in listed) <= 1
        waiting = next(job for job in jobs if job.process.pid == listed[1]["pid"])
        assert waiting.epochs() == []  # apply() has not returned: it waits for a core
        running = next(job for job in jobs if job is not waiting)
        running.finish()
        wait_for(lambda: len(waiting.epochs()) >= 1, START_S, "the waiting job to start")
        assert [(j["threads"], j["waiting"]) for j in daemon.jobs()] == [(1, False)]
    finally:
        for job in jobs:
            job.finish()
        daemon.stop()


def test_a_job_outlives_its_daemon_and_a_restarted_daemon_relearns_it(short_dir):
    daemon = Daemon(short_dir).start()
    job = Job(daemon, "a")
    try:
        wait_for(lambda: len(job.epochs()) >= 1, START_S, "the job to train")
        name = daemon.jobs()[0]["job"]
        daemon.stop()
        before = len(job.epochs())
        wait_for(lambda: len(job.epochs()) >= before + 3, 60, "training without a daemon")
        assert job.epochs()[-1]["connected"] is False
        assert job.epochs()[-1]["grant_threads"] is not None  # the last share is kept
        restarted = Daemon(short_dir).start()
        try:
            wait_for(lambda: [j["job"] for j in restarted.jobs()] == [name], 30,
                     "the job to register again under its name")
            wait_for(lambda: job.epochs()[-1]["connected"], 30, "the job to see it")
        finally:
            job.finish()
            restarted.stop()
    finally:
        job.finish()
        daemon.stop()


def test_without_a_daemon_the_plan_is_the_same_as_without_the_plugin(tmp_path):
    import autotune
    from torch.utils.data import DataLoader, TensorDataset

    assert not Path(os.environ["AUTOTUNE_SOCKET"]).exists()
    model = torch.nn.Linear(8, 2)
    loader = DataLoader(TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,))),
                        batch_size=8)
    with_plugin = autotune.apply(model, loader)
    without = autotune.apply(model, loader, disable=["daemon"])
    assert "daemon" not in with_plugin.plan
    plans = [t.plan.to_dict() for t in (with_plugin, without)]
    plans[1]["disabled"].pop("daemon")
    assert plans[0] == plans[1]
