"""benchmarks/peer.py: the peer (pytorch-autotune 2.0) installed into its own
venv from the committed wheel and run on a workload; on this CPU-only machine
it runs on the CPU, and with device="cuda" its refusal is reported."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import peer  # noqa: E402

sys.path.remove(str(BENCHMARKS))


def wheel_or_skip() -> Path:
    try:
        return peer.find_wheel()
    except peer.PeerUnavailable as exc:
        pytest.skip(f"the peer's wheel is not here: {exc}")


@pytest.fixture(scope="module")
def venv_dir(tmp_path_factory) -> Path:
    wheel_or_skip()
    root = tmp_path_factory.mktemp("peer") / "venv"
    peer.prepare_venv(root)
    return root


def test_the_committed_wheel_is_the_small_mit_peer() -> None:
    wheel = wheel_or_skip()
    assert wheel.stat().st_size < 1_000_000
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read("pytorch_autotune-2.0.0.dist-info/METADATA").decode()
        assert "Version: 2.0.0" in metadata and "License :: OSI Approved :: MIT License" in metadata
        assert "def autotune(" in archive.read("pytorch_autotune/tuner.py").decode()
    assert "MIT License" in (BENCHMARKS / "peer" / "LICENSE").read_text()


def test_the_peer_lives_in_its_venv_only(venv_dir: Path) -> None:
    assert peer.peer_version(peer.venv_python(venv_dir)) == peer.PEER_VERSION
    # Never a dependency of this project: this interpreter does not see it.
    assert importlib.util.find_spec("pytorch_autotune") is None
    # A second call reuses the venv instead of building it again.
    marker = venv_dir / "pyvenv.cfg"
    before = marker.stat().st_mtime_ns
    peer.prepare_venv(venv_dir)
    assert marker.stat().st_mtime_ns == before


@pytest.mark.slow
def test_the_peer_searches_a_workload_on_the_cpu_and_reports_its_pick(venv_dir: Path,
                                                                        tmp_path: Path) -> None:
    cache = tmp_path / "peer_cache.json"
    result = peer.run_peer("resnet18", budget_s=10, device="cpu", smoke=True, venv_dir=venv_dir,
                           cache_path=str(cache), timeout_s=120)
    assert result["status"] == "ok", result
    trials = result["trials"]
    # Its baseline first, then its precision sweep (no bf16 without CUDA, no
    # compile modes on a CPU: the harness passes compile_modes=[]).
    assert trials[0]["config"] == {"precision": "fp32_default", "compile": "off",
                                   "channels_last": False, "fused_opt": False}
    assert trials[0]["status"] == "ok" and trials[0]["ms_per_step"] > 0
    assert {t["config"]["precision"] for t in trials} <= {"fp32_default", "tf32", "amp_fp16"}
    assert all(t["config"]["compile"] == "off" for t in trials)
    picked = [t for t in trials if t["config"] == result["pick"]]
    assert picked and result["ms_per_step"] == picked[0]["ms_per_step"]
    assert result["baseline_ms"] == trials[0]["ms_per_step"]
    # The pick is in the peer's cache, where run_gpu.py rebuilds it from.
    assert cache.exists() and result["pick"]["precision"] in cache.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the peer's refusal without CUDA")
def test_without_cuda_the_peers_refusal_on_cuda_is_reported(venv_dir: Path) -> None:
    result = peer.run_peer("resnet18", budget_s=10, device="cuda", smoke=True, venv_dir=venv_dir,
                           timeout_s=120)
    assert result["status"] == "refused", result
    assert "CUDA" in result["reason"] and result["cuda_available"] is False


def test_a_missing_wheel_is_reported_with_how_to_fetch_it(tmp_path: Path) -> None:
    result = peer.run_peer("resnet18", budget_s=10, device="cpu", smoke=True,
                           venv_dir=tmp_path / "venv", wheel=tmp_path / "absent.whl")
    assert result["status"] == "unavailable"
    assert "absent.whl" in result["reason"] and "pip download --no-deps" in result["reason"]
    assert not (tmp_path / "venv").exists()


def test_the_wheel_matches_the_recorded_hash_in_a_session_env() -> None:
    wheel = wheel_or_skip()
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    env = run_gpu.environment("cpu", ["benchmarks/run_gpu.py", "--smoke"])
    assert env["peer_wheel"] == {"file": wheel.name,
                                 "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    assert env["torch"] == torch.__version__ and env["cpu"] and env["date"]
    assert env["command"].startswith("python benchmarks/run_gpu.py --smoke")
