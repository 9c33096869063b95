"""The benchmark scripts: ``--help`` answers without measuring anything, no
script writes over a committed result unless told to (``--out``), and a
missed target is a non-zero exit code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_help_answers_and_the_default_output_is_not_a_committed_result(script: Path) -> None:
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--out" in run.stdout
    default = re.search(r"\(default ([^;)]+)", " ".join(run.stdout.split()))
    assert default, run.stdout
    assert "benchmarks/results" not in default.group(1).replace("\\", "/")


def test_a_missed_target_exits_non_zero(monkeypatch, tmp_path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_cpu
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def fake_run_one(workload, name, prefix, **kwargs):  # a result, as run_one writes it
        assert kwargs["out_dir"] == tmp_path
        met = name != "mlp"
        return {"targets": {"tuned_vs_defaults": {"target": 0.97, "measured": 0.5, "met": met}}}

    monkeypatch.setattr(run_cpu, "run_one", fake_run_one)
    assert run_cpu.main(["--workload", "transformer", "--no-grid", "--out", str(tmp_path)]) == 0
    assert run_cpu.main(["--workload", "mlp", "--no-grid", "--out", str(tmp_path)]) == 1
