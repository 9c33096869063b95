"""Cross-validation on a real Dask cluster: a LocalCluster with two worker
processes (no mocks), compared with loky on this machine."""

from __future__ import annotations

import os

import pytest

import autotune
from cv_helpers import FailOnFold, sgd, tiny_mlp, toy_dataset

distributed = pytest.importorskip("distributed")

COMMON = dict(k=4, epochs=1, batch_size=16, seed=0, optimizer_fn=sgd, progress=False,
              threads_per_fold=1)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_workers_give_the_loky_result(client):
    on_dask = autotune.cross_validate(tiny_mlp, toy_dataset(), backend=client, **COMMON)
    on_loky = autotune.cross_validate(tiny_mlp, toy_dataset(), backend="loky", max_concurrent=2,
                                      **COMMON)
    assert on_dask.ok and on_dask.backend == "dask" and on_dask.concurrency == 2
    worker_pids = set(client.run(os.getpid).values())
    assert {int(f.worker.split("@")[0]) for f in on_dask.folds} <= worker_pids
    assert os.getpid() not in worker_pids
    assert [f.weights_sha256 for f in on_dask.folds] == [f.weights_sha256 for f in on_loky.folds]
    assert [f.metrics for f in on_dask.folds] == [f.metrics for f in on_loky.folds]
    assert on_dask.plan.get("parallel_folds", "backend") == "dask"


def test_dask_keeps_going_past_a_failing_fold_and_stores_the_others(client, tmp_path):
    result = autotune.cross_validate(FailOnFold(3), toy_dataset(), backend="dask",
                                     run_dir=str(tmp_path), **COMMON)  # the current client
    assert [f.fold for f in result.folds] == [0, 1, 2]
    assert [f.fold for f in result.failed] == [3]
    assert "broken on purpose" in result.failed[0].traceback
    assert sorted(p.name for p in tmp_path.glob("fold_*")) == [
        "fold_000.json", "fold_001.json", "fold_002.json", "fold_003.failed.json"]
