"""autotune.cross_validate on real backends: sequential, loky worker
processes and threads; failures, resume and the run directory."""

from __future__ import annotations

import json
import os

import pytest
import torch

import autotune
from autotune.cv import CrossValidationError, accuracy
from autotune.plan.plan import Source
from cv_helpers import (DieOnFold, FailOnFold, LoggingModelFn, omp_env_in_fold, sgd,
                        threads_in_fold, tiny_mlp, toy_dataset)

COMMON = dict(k=4, epochs=1, batch_size=16, seed=0, optimizer_fn=sgd, progress=False)


@pytest.fixture(scope="module")
def sequential_result():
    return autotune.cross_validate(tiny_mlp, toy_dataset(), backend="sequential",
                                   threads_per_fold=1, metrics={"accuracy": accuracy}, **COMMON)


def test_result_is_typed_and_complete(sequential_result):
    result = sequential_result
    assert isinstance(result, autotune.CVResult) and result.ok
    assert [f.fold for f in result.folds] == [0, 1, 2, 3]
    assert sum(f.val_size for f in result.folds) == 96
    for fold in result.folds:
        assert set(fold.metrics) == {"val_loss", "val_accuracy", "train_loss"}
        assert len(fold.history) == 1 and fold.history[0].batches == 5  # 72 samples / 16
        assert 0.0 <= fold.metrics["val_accuracy"] <= 1.0
    losses = [f.metrics["val_loss"] for f in result.folds]
    summary = result.aggregate["val_loss"]
    assert summary.mean == pytest.approx(sum(losses) / 4)
    assert summary.std == pytest.approx(torch.tensor(losses, dtype=torch.float64).std().item())
    assert result.best_fold.metrics["val_loss"] == min(losses)
    assert len({f.weights_sha256 for f in result.folds}) == 4  # four different models
    assert "4/4 folds finished" in result.summary()
    assert json.loads(json.dumps(result.to_dict()))["best_fold"] == result.best_fold.fold


def test_loky_workers_give_the_sequential_result(sequential_result):
    parallel = autotune.cross_validate(tiny_mlp, toy_dataset(), backend="loky", max_concurrent=2,
                                       threads_per_fold=1, metrics={"accuracy": accuracy},
                                       **COMMON)
    assert parallel.ok and parallel.backend == "loky" and parallel.concurrency == 2
    assert all(not f.worker.startswith(f"{os.getpid()}@") for f in parallel.folds)
    for ours, theirs in zip(sequential_result.folds, parallel.folds):
        assert ours.weights_sha256 == theirs.weights_sha256
        assert ours.metrics == theirs.metrics
    # What ran is in the plan: two folds at once, one thread each.
    assert parallel.plan.get("parallel_folds", "max_concurrent") == 2
    assert parallel.plan.setting("parallel_folds", "max_concurrent").source is Source.OVERRIDE
    assert parallel.plan.get("threads", "intra_op") == 1


def test_threads_backend_gives_the_sequential_result(sequential_result):
    threaded = autotune.cross_validate(tiny_mlp, toy_dataset(), backend="threading",
                                       max_concurrent=2, threads_per_fold=1,
                                       metrics={"accuracy": accuracy}, **COMMON)
    assert threaded.backend == "threading"
    # The same training to float rounding. (Equal hashes, asserted for loky,
    # held in most full-suite runs here but not in every one; the folds in
    # threads share the process, and the cause was not pinned down.)
    for ours, theirs in zip(threaded.folds, sequential_result.folds):
        assert ours.metrics["val_loss"] == pytest.approx(theirs.metrics["val_loss"], rel=1e-5)
        assert ours.metrics["train_loss"] == pytest.approx(theirs.metrics["train_loss"], rel=1e-5)
    assert threaded.plan.get("threads", "set_env") is False  # one environment for all threads


def test_each_loky_fold_is_limited_to_its_threads():
    result = autotune.cross_validate(tiny_mlp, toy_dataset(), backend="loky", max_concurrent=2,
                                     threads_per_fold=1,
                                     metrics={"threads": threads_in_fold, "omp": omp_env_in_fold},
                                     **COMMON)
    for fold in result.folds:
        assert fold.metrics["val_threads"] == 1.0
        assert fold.metrics["val_omp"] == 1.0
        assert fold.threads == 1


def test_a_fold_that_raises_loses_nothing_else_and_a_rerun_resumes_it(tmp_path):
    run_dir = tmp_path / "run"
    first = autotune.cross_validate(FailOnFold(2), toy_dataset(), backend="loky",
                                    max_concurrent=2, threads_per_fold=1, run_dir=str(run_dir),
                                    **COMMON)
    assert not first.ok
    assert [f.fold for f in first.folds] == [0, 1, 3]
    (failure,) = first.failed
    assert failure.fold == 2 and failure.error == "ValueError"
    assert "broken on purpose" in failure.message
    assert "Traceback" in failure.traceback and "cv_helpers.py" in failure.traceback
    assert (run_dir / "fold_002.failed.json").exists()
    stored = {i: (run_dir / f"fold_{i:03d}.json") for i in (0, 1, 3)}
    stamps = {i: p.stat().st_mtime_ns for i, p in stored.items()}

    log = LoggingModelFn(str(tmp_path / "built.txt"))
    plan = first.plan  # given, so no sample model is built for planning
    second = autotune.cross_validate(log, toy_dataset(), plan=plan, backend="loky",
                                     max_concurrent=2, threads_per_fold=1, run_dir=str(run_dir),
                                     **COMMON)
    assert second.ok and [f.fold for f in second.folds] == [0, 1, 2, 3]
    assert log.folds_built() == [2]  # only the failed fold was trained again
    assert [f.resumed for f in second.folds] == [True, True, False, True]
    assert {i: p.stat().st_mtime_ns for i, p in stored.items()} == stamps
    assert not (run_dir / "fold_002.failed.json").exists()
    for index in (0, 1, 3):
        assert second.fold(index).weights_sha256 == first.fold(index).weights_sha256

    third = autotune.cross_validate(log, toy_dataset(), plan=plan, backend="sequential",
                                    run_dir=str(run_dir), **COMMON)
    assert third.ok and all(f.resumed for f in third.folds)
    assert log.folds_built() == [2]  # nothing trained at all


def test_resume_false_retrains_every_fold(tmp_path):
    log = LoggingModelFn(str(tmp_path / "built.txt"))
    options = dict(COMMON, backend="sequential", run_dir=str(tmp_path / "run"))
    autotune.cross_validate(log, toy_dataset(), plan=autotune.make_plan().plan, **options)
    autotune.cross_validate(log, toy_dataset(), plan=autotune.make_plan().plan, resume=False,
                            **options)
    assert sorted(log.folds_built()) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("change,message", [
    ({"k": 3}, "k: 4 there, 3 now"),
    ({"seed": 1}, "seed: 0 there, 1 now"),
    ({"dataset": 80}, "dataset_length: 96 there, 80 now"),
    ({"stratify": True}, "stratified: False there, True now"),
])
def test_a_run_dir_of_another_run_is_refused(tmp_path, change, message):
    run_dir = str(tmp_path / "run")
    autotune.cross_validate(tiny_mlp, toy_dataset(), backend="sequential", run_dir=run_dir,
                            max_steps=1, **COMMON)
    options = dict(COMMON, backend="sequential", run_dir=run_dir, max_steps=1)
    dataset = toy_dataset(change.pop("dataset", 96))
    stratify = change.pop("stratify", None)
    options.update(change)
    with pytest.raises(CrossValidationError, match=message):
        autotune.cross_validate(tiny_mlp, dataset, stratify=stratify, **options)


def test_checkpoints_are_written_and_load(tmp_path):
    result = autotune.cross_validate(tiny_mlp, toy_dataset(), backend="sequential",
                                     run_dir=str(tmp_path), checkpoint=True, **COMMON)
    for fold in result.folds:
        state = torch.load(fold.checkpoint, weights_only=True)
        assert autotune.cv.weights_digest(state["model"]) == fold.weights_sha256
        assert state["counters"]["optimizer_steps"] == 5
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["k"] == 4 and manifest["dataset_length"] == 96
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_a_worker_that_dies_is_reported_and_finished_folds_are_kept(tmp_path):
    result = autotune.cross_validate(DieOnFold(1), toy_dataset(), backend="loky",
                                     max_concurrent=2, threads_per_fold=1,
                                     run_dir=str(tmp_path), **COMMON)
    failed = {f.fold: f for f in result.failed}
    assert 1 in failed and failed[1].error == "BackendFailure"
    assert {f.fold for f in result.folds} | set(failed) == {0, 1, 2, 3}
    for fold in result.folds:
        assert (tmp_path / f"fold_{fold.fold:03d}.json").exists()


def test_default_schedule_times_a_fold_before_starting_workers(monkeypatch):
    import autotune.cv.runner as runner
    from autotune.plugins.parallel_folds import MIN_FOLD_SECONDS_FOR_WORKERS, cpu_concurrency

    timed = []

    def estimate(task, *args, **kwargs) -> float:
        # The real timing runs (and sees a real fold), but what the schedule
        # decides from must not depend on how busy this machine is.
        timed.append(real_estimate(task, *args, **kwargs))
        return MIN_FOLD_SECONDS_FOR_WORKERS / 3

    real_estimate = runner.estimate_fold_seconds
    monkeypatch.setattr(runner, "estimate_fold_seconds", estimate)
    result = autotune.cross_validate(tiny_mlp, toy_dataset(), max_steps=1, **COMMON)
    cores = autotune.detect().cpu.worker_budget
    setting = result.plan.setting("parallel_folds", "max_concurrent")
    if cpu_concurrency(cores)[0] > 1:
        # A fold shorter than MIN_FOLD_SECONDS_FOR_WORKERS: not worth worker processes.
        assert len(timed) == 1 and timed[0] > 0
        assert result.backend == "sequential" and result.concurrency == 1
        assert setting.source is Source.MEASURED and "a fold takes about 0.50 s" in setting.reason
    assert result.ok and setting.value == result.concurrency


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 1}, "k must be an integer >= 2"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"backend": "spark"}, "backend='spark' is not one of"),
    ({"checkpoint": True}, "checkpoint=True needs run_dir"),
    ({"max_concurrent": 0}, "max_concurrent must be an integer >= 1"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    options = dict(COMMON, backend="sequential")
    options.update(kwargs)
    with pytest.raises(CrossValidationError, match=message):
        autotune.cross_validate(tiny_mlp, toy_dataset(), **options)


def test_unpicklable_model_fn_is_named_before_any_worker_starts():
    import threading

    lock = threading.Lock()
    with pytest.raises(CrossValidationError, match="model_fn cannot be sent to loky"):
        autotune.cross_validate(lambda: (lock, tiny_mlp())[1], toy_dataset(), backend="loky",
                                max_concurrent=2, **COMMON)


def test_the_example_runs_and_a_second_run_resumes(tmp_path, monkeypatch, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "cross_validate.py"
    spec = importlib.util.spec_from_file_location("example_cross_validate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["cross_validate.py", "--k", "3", "--epochs", "1", "--backend", "sequential",
            "--run-dir", str(tmp_path / "cv")]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    first = capsys.readouterr().out
    assert "3/3 folds finished" in first and "best fold" in first and "resumed" not in first
    module.main()
    assert capsys.readouterr().out.count("(resumed)") == 3
