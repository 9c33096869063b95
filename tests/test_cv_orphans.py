"""Worker processes never outlive a parent killed with SIGKILL for long:
cross-validation's loky workers (busy and idle) and DataLoader workers.

Each test runs the parent as a real subprocess, waits until its workers are
up, SIGKILLs it (no handler, no cleanup) and polls with psutil until every
process it had started is gone, with a generous deadline rather than a
fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and reparenting are POSIX")


def wait_until(condition, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def gone(proc: psutil.Process) -> bool:
    """Exited (a zombie waiting for init to reap it counts: it runs nothing)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_and_expect_no_orphans(parent: subprocess.Popen, workers: set[int],
                               limit_s: float) -> None:
    descendants = psutil.Process(parent.pid).children(recursive=True)
    assert workers <= {p.pid for p in descendants}
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)
    try:
        wait_until(lambda: all(gone(p) for p in descendants),
                   f"the dead parent's {len(descendants)} processes to exit", limit_s)
    finally:
        for proc in descendants:  # never leave them behind for the next test
            if not gone(proc):
                proc.kill()


def start(tmp_path: Path, script: str) -> subprocess.Popen:
    path = tmp_path / "parent.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen([sys.executable, str(path), str(tmp_path)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def started_workers(tmp_path: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")}


@pytest.mark.slow
def test_loky_fold_workers_die_with_a_sigkilled_parent(tmp_path) -> None:
    # Fold 0 trains "forever" (a busy worker); fold 1 finishes at once and its
    # worker then waits for work that never comes (an idle worker).
    parent = start(tmp_path, f"""
        import os, sys, time
        sys.path.insert(0, {str(TESTS)!r})
        import autotune
        from cv_helpers import fold_of_current_seed, tiny_mlp, toy_dataset

        OUT, PARENT = sys.argv[1], os.getpid()

        def model_fn():
            if os.getpid() == PARENT:  # the parent sizes the schedule with one model
                return tiny_mlp()
            fold = fold_of_current_seed(0, 2)
            open(os.path.join(OUT, f"worker-{{os.getpid()}}-fold-{{fold}}"), "w").close()
            if fold == 0:
                time.sleep(600)
            return tiny_mlp()

        autotune.cross_validate(model_fn, toy_dataset(), k=2, epochs=1, backend="loky",
                                max_concurrent=2, threads_per_fold=1, progress=False,
                                run_dir=os.path.join(OUT, "run"))
        """)
    try:
        finished = tmp_path / "run" / "fold_001.json"
        wait_until(lambda: parent.poll() is not None or (
            len(started_workers(tmp_path)) == 2 and finished.exists()),
            "fold 0 to be running and fold 1 to be stored", 120)
        assert parent.poll() is None, "the cross-validation ended before it was killed"
        kill_and_expect_no_orphans(parent, started_workers(tmp_path), limit_s=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.slow
def test_dataloader_workers_die_with_a_sigkilled_parent(tmp_path) -> None:
    parent = start(tmp_path, """
        import os, sys, time
        import torch
        from torch.utils.data import DataLoader, Dataset

        OUT = sys.argv[1]

        class Slow(Dataset):
            def __len__(self):
                return 10_000

            def __getitem__(self, index):
                marker = os.path.join(OUT, f"worker-{os.getpid()}")
                if not os.path.exists(marker):
                    open(marker, "w").close()
                time.sleep(0.05)
                return torch.zeros(4)

        for batch in DataLoader(Slow(), batch_size=2, num_workers=2):
            pass
        """)
    try:
        wait_until(lambda: parent.poll() is not None or len(started_workers(tmp_path)) == 2,
                   "two DataLoader workers", 120)
        assert parent.poll() is None
        # torch's workers check their parent every 5 s between items.
        kill_and_expect_no_orphans(parent, started_workers(tmp_path), limit_s=30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
