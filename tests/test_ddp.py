"""The engine under a real ``torchrun --nproc_per_node=2`` job on CPU (gloo),
with gradient accumulation, and the DDP helpers on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from autotune import distributed
from autotune.plan.plan import Plan

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ddp_train.py"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    logs = tmp_path_factory.mktemp("ddp-logs")
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "--log-dir", str(logs), "--redirects", "3",
               str(EXAMPLE), "--out", str(out), "--epochs", "2", "--accumulation", "2",
               "--samples", "200", "--batch-size", "16"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    stderr = {r: "".join(p.read_text() for p in logs.rglob(f"{r}/stderr.log")) for r in (0, 1)}
    return out, ranks, stderr


def test_both_ranks_end_with_identical_weights(ddp_run):
    _, ranks, _ = ddp_run
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["ddp"] for r in ranks)
    # The ranks started from different random weights (seeded by rank) and
    # trained on different halves of the data; DDP keeps them equal.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]


def test_accumulation_syncs_gradients_once_per_optimizer_step(ddp_run):
    _, ranks, _ = ddp_run
    for r in ranks:
        assert r["accumulation_steps"] == 2
        # 200 samples / 2 ranks / 16 per batch = 7 micro-batches per epoch:
        # windows of 2, 2, 2 and a short last one of 1 -> 4 steps per epoch.
        assert r["micro_steps"] == 14 and r["optimizer_steps"] == 8
        # One bucket (a tiny model): one all-reduce per optimizer step, none
        # on the micro-batches inside a window (no_sync).
        assert r["allreduce_calls"] == r["optimizer_steps"]


def test_the_plan_is_made_on_rank_zero_and_the_same_everywhere(ddp_run):
    _, ranks, _ = ddp_run
    assert [r["planned_here"] for r in ranks] == [True, False]
    assert ranks[0]["plan"] == ranks[1]["plan"]
    plan = Plan.from_dict(ranks[0]["plan"])
    assert plan.get("accumulation", "steps") == 2
    cores = max(1, int(__import__("autotune").detect().cpu.worker_budget))
    assert plan.get("threads", "intra_op") == max(1, cores // 2)  # two ranks share the cores


def test_only_rank_zero_writes_files_and_logs(ddp_run):
    out, ranks, stderr = ddp_run
    assert ranks[1]["written"] == []
    assert sorted(Path(p).name for p in ranks[0]["written"]) == \
        ["checkpoint.pt", "history.json", "plan.json"]
    assert sorted(p.name for p in out.iterdir()) == \
        ["checkpoint.pt", "history.json", "plan.json", "rank0.json", "rank1.json"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 2
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["counters"]["optimizer_steps"] == 8
    assert "autotune.engine.engine: epoch 2/2" in stderr[0]
    assert "autotune.engine.engine" not in stderr[1] and "autotune.planner" not in stderr[1]


# -- the helpers without torchrun ---------------------------------------------------------


def test_outside_torchrun_everything_is_rank_zero_of_one(monkeypatch):
    for variable in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.decide_on_rank_zero(lambda: 42) == 42
    with pytest.raises(distributed.DistributedError, match="not launched by torchrun"):
        distributed.init()
    with pytest.raises(distributed.DistributedError, match="call autotune.distributed.init"):
        distributed.prepare(torch.nn.Linear(2, 2))


def test_epoch_loader_reshuffles_every_epoch():
    data = TensorDataset(torch.arange(32.0).unsqueeze(1), torch.zeros(32))
    loader = distributed.distributed_loader(DataLoader(data, batch_size=8, shuffle=True))
    assert type(loader.sampler).__name__ == "DistributedSampler" and loader.batch_size == 8
    epochs = distributed.EpochLoader(loader)
    orders = [[int(x) for batch, _ in epochs for x in batch.flatten()] for _ in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(32))
    assert orders[0] != orders[1] and len(epochs) == 4


def test_share_cores_divides_threads_among_local_ranks(monkeypatch):
    from autotune.testing import fake_cpu, fake_hardware
    from autotune.planner import make_plan

    hardware = fake_hardware(cpu=fake_cpu(physical_cores=8, logical_cores=8))
    plan = make_plan(hardware=hardware).plan
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    shared = distributed.share_cores(plan, hardware)
    assert shared.get("threads", "intra_op") == 2
    assert "4 ranks on this node" in shared.setting("threads", "intra_op").reason
    kept = distributed.share_cores(plan.with_overrides({"threads": {"intra_op": 8}}), hardware)
    assert kept.get("threads", "intra_op") == 8  # the user's word stands


def test_share_cores_asks_every_plugin_in_the_plan_for_its_share(monkeypatch):
    import autotune
    from autotune.planner import make_plan
    from autotune.plan.plan import default
    from autotune.plan.resources import Share
    from autotune.testing import fake_cpu, fake_hardware, plugin_manager

    class Pool:
        """A third-party plugin with a worker pool of its own."""

        NAME = "pool"
        shares: list = []

        @autotune.hookimpl
        def autotune_configure(self):
            return {"size": default(8, "one per core")}

        @autotune.hookimpl
        def autotune_resource_share(self, plan, share):
            self.shares.append(share)
            return {"size": default(share.threads, share.reason)}

    manager = plugin_manager(plugins=[Pool()])
    hardware = fake_hardware(cpu=fake_cpu(physical_cores=8, logical_cores=8))
    planned = make_plan(hardware=hardware, manager=manager)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    shared = distributed.share_cores(planned.plan, hardware, context=planned.context,
                                     manager=manager)
    assert Pool.shares == [Share(threads=4, reason="2 ranks on this node share 8 cores")]
    assert shared.get("pool", "size") == 4 and shared.get("threads", "intra_op") == 4


def test_compile_wraps_the_ddp_module_once(monkeypatch):
    """One rank of one, in this process: compile sits out the model hooks and
    goes over DistributedDataParallel through autotune_wrap_distributed."""
    import socket

    from autotune.workload.batches import find_ddp, is_compiled

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for variable, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.zeros(16, dtype=torch.long)),
                        batch_size=4)
    distributed.init("gloo", timeout_s=60)
    try:
        prepared = distributed.prepare(model, loader, overrides={"compile": {"mode": "default"}},
                                       device="cpu")
        assert prepared.manager.implementers("autotune_wrap_distributed",
                                             prepared.plan.plugins()) == ["compile"]
        assert is_compiled(prepared.model)
        ddp = find_ddp(prepared.model)
        assert ddp is not None and prepared.model._orig_mod is ddp
        assert not is_compiled(ddp.module)  # compiled once, over DDP only
        events = [str(e) for e in prepared.report.events if e.plugin == "compile"]
        assert any("over DistributedDataParallel" in e for e in events), events
        assert prepared.plan.get("compile", "mode") == "default"
    finally:
        distributed.shutdown()
