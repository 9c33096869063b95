"""``autotune cv RUN_DIR``: a stored cross-validation run, for people and as JSON."""

from __future__ import annotations

import json

import autotune
from autotune.cli import main
from cv_helpers import FailOnFold, sgd, toy_dataset


def _run(tmp_path):
    run_dir = tmp_path / "run"
    autotune.cross_validate(FailOnFold(1), toy_dataset(), k=4, epochs=1, batch_size=16,
                            backend="sequential", optimizer_fn=sgd, run_dir=str(run_dir),
                            progress=False)
    return run_dir


def test_cv_command_shows_folds_failures_and_aggregate(tmp_path, capsys):
    run_dir = _run(tmp_path)
    assert main(["cv", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "4 folds of 96 samples, seed 0" in out
    assert "3 finished, 1 failed, 0 not run" in out
    assert "FAILED" in out and "ValueError: model for fold 1 is broken on purpose" in out
    assert "VAL_LOSS" in out and "Rerun cross_validate" in out


def test_cv_command_json(tmp_path, capsys):
    run_dir = _run(tmp_path)
    (run_dir / "fold_003.json").unlink()  # as if the run had been interrupted
    assert main(["cv", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["fold"] for f in data["finished"]] == [0, 2]
    assert [f["fold"] for f in data["failed"]] == [1] and data["missing"] == [3]
    assert data["aggregate"]["val_loss"]["count"] == 2
    assert data["manifest"]["k"] == 4


def test_cv_command_on_a_directory_that_is_no_run(tmp_path, capsys):
    assert main(["cv", str(tmp_path)]) == 2
    assert "not a cross-validation run directory" in capsys.readouterr().err
