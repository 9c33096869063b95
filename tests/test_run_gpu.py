"""benchmarks/run_gpu.py: the GPU session script. --smoke runs its code
paths on the CPU (tiny models, tiny budgets), so the script is known to work
before a GPU machine runs it; the pieces it times with are checked here too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import run_gpu  # noqa: E402

sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow
def test_smoke_session_runs_every_phase_and_writes_its_results(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(BENCHMARKS / "run_gpu.py"), "--smoke", "--out",
                          str(tmp_path), "--rounds", "2", "--peer-venv", str(tmp_path / "venv"),
                          # The smoke budgets are fixed; the limits only cap each phase. Far
                          # above its ~45 s alone, so a loaded machine cannot cut a round off.
                          "--total-s", "200", "--tests-s", "60"],
                         capture_output=True, text=True, timeout=260, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    (folder,) = tmp_path.glob("smoke_*_cpu")
    env = json.loads((folder / "env.json").read_text())
    for key in ("date", "command", "commit", "machine", "torch", "cuda", "cpu", "device_name",
                "driver", "peer_wheel"):
        assert key in env, key
    assert env["device_name"] == "cpu" and env["torch"] == torch.__version__
    tests = json.loads((folder / "tests.json").read_text())
    assert tests["status"] == "ok" and tests["counts"].get("skipped", 0) >= 1  # no CUDA here
    summary = json.loads((folder / "summary.json").read_text())
    peer_ok = (BENCHMARKS / "peer" / "pytorch_autotune-2.0.0-py3-none-any.whl").exists()
    for name in run_gpu.SMOKE_NAMES:
        record = json.loads((folder / f"{name}.json").read_text())
        assert record["complete"], record["stages"]
        expected = {"defaults", "autotune"} | ({"peer"} if peer_ok else set())
        assert set(record["contenders"]) == expected
        for who, entry in record["contenders"].items():
            assert len(entry["rounds_ms"]) == 2 and entry["ms_per_step"] > 0, who
        assert record["contenders"]["defaults"]["vs_defaults"] == 1.0
        # Each contender timed in every round, the order rotated between rounds.
        assert [list(r) for r in record["rounds"]] != [list(record["rounds"][0])] * 2
        assert record["autotune"]["trials"], "autotune.apply measured nothing"
        if peer_ok:
            assert json.loads((folder / f"peer_{name}.json").read_text())["status"] == "ok"
            assert record["peer"]["label"] == summary["phases"][name]["peer_search"]["pick_label"]
        assert summary["phases"][name]["run"]["status"] == "ok"
    text = (folder / "summary.txt").read_text()
    assert all(name in text for name in run_gpu.SMOKE_NAMES) and "ms/step" in text
    assert not (folder / "caches").exists()  # the tuners' caches stay out of the results


def test_a_phase_past_its_limit_is_killed_and_what_it_wrote_stays(tmp_path: Path) -> None:
    partial = tmp_path / "partial.json"
    child = [sys.executable, "-c", f"open({str(partial)!r}, 'w').write('{{}}'); "
             "import time; time.sleep(120)"]
    result = run_gpu.run_child(child, 3.0, tmp_path / "child.log")
    assert result["status"] == "killed at its 3 s limit" and result["returncode"] is None
    assert partial.read_text() == "{}"


def test_a_failing_phase_is_recorded_with_its_exit_code(tmp_path: Path) -> None:
    result = run_gpu.run_child([sys.executable, "-c", "print('no'); raise SystemExit(3)"], 60,
                               tmp_path / "child.log")
    assert result["status"] == "exit 3" and (tmp_path / "child.log").read_text() == "no\n"


def test_the_stream_starts_a_new_epoch_through_one_iterator() -> None:
    stream = run_gpu.Stream([1, 2, 3])
    assert [next(stream) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    assert iter(stream) is stream and stream.persistent_workers


def test_global_flags_are_put_back_for_each_contender() -> None:
    before = run_gpu.GlobalFlags()
    try:
        torch.backends.cudnn.benchmark = not before.values[3]
        torch.backends.cuda.matmul.allow_tf32 = not before.values[1]
        changed = run_gpu.GlobalFlags()
        before.restore()
        assert run_gpu.GlobalFlags().values == before.values
        changed.restore()
        assert run_gpu.GlobalFlags().values == changed.values != before.values
    finally:
        before.restore()


def test_smoke_workloads_have_the_shapes_of_the_real_ones() -> None:
    real, smoke = run_gpu.workloads(), run_gpu.workloads(smoke=True)
    assert set(real) == set(smoke) == set(run_gpu.NAMES)
    for name in run_gpu.NAMES:
        assert real[name].kind == smoke[name].kind
        assert real[name].peer_optimizer == smoke[name].peer_optimizer
        model, loader, _ = smoke[name].build(0)
        inputs, targets = next(iter(loader))
        assert smoke[name].loss_fn(model(inputs), targets).isfinite()
    assert {n for n in run_gpu.NAMES if real[n].kind == "e2e"} == {"resnet18_e2e"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without CUDA")
def test_without_cuda_and_without_smoke_it_says_why_and_exits_0() -> None:
    run = subprocess.run([sys.executable, str(BENCHMARKS / "run_gpu.py")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0 and "skipped: no CUDA device" in run.stdout
