"""Data-parallel training with the shared engine under torchrun.

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --out runs/ddp

Every rank builds its own model and loader; rank 0 makes the plan and all
ranks receive it (``broadcast_object_list``); the model is wrapped in
DistributedDataParallel, the loader gets a DistributedSampler, and the
engine all-reduces gradients once per accumulation window (``no_sync`` on
the other micro-batches). Only rank 0 logs epoch lines and writes the run
files (plan.json, history.json, checkpoint.pt). Each rank also writes
``rank<N>.json`` with a hash of its final weights, so you can check that
the replicas agree (tests/test_ddp.py does).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune import distributed
from autotune.cv import weights_digest

log = logging.getLogger("ddp_train")


def make_data(samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)  # the same data on every rank
    inputs = torch.randn(samples, 16, generator=generator)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    return TensorDataset(inputs, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ddp", help="where rank 0 writes the run files")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    info = distributed.init()
    # Different initial weights on each rank on purpose: DDP starts every
    # replica from rank 0's weights, so the hashes still agree at the end.
    torch.manual_seed(1000 + info.rank)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    loader = DataLoader(make_data(args.samples), batch_size=args.batch_size, shuffle=True)
    planned_here = []

    def make_plan() -> autotune.Plan:
        planned_here.append(True)  # runs on rank 0 only
        workload = autotune.Workload.inspect(model, loader)
        return autotune.make_plan(workload=workload,
                                  overrides={"accumulation": {"steps": args.accumulation}}).plan

    prepared = distributed.prepare(model, loader, plan=make_plan, seed=0)

    # Count gradient all-reduces: with accumulation they happen once per
    # optimizer step, not once per micro-batch.
    calls = {"allreduce": 0}

    def counting_hook(state, bucket):  # noqa: ANN001 - DDP's comm hook signature
        calls["allreduce"] += 1
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        return allreduce_hook(state, bucket)

    prepared.ddp.register_comm_hook(None, counting_hook)
    optimizer = torch.optim.SGD(prepared.model.parameters(), lr=0.05)
    with prepared.engine(optimizer, torch.nn.functional.cross_entropy) as engine:
        engine.fit(prepared.loader, epochs=args.epochs)
        written = distributed.write_run_files(args.out, engine)
        summary = {
            "rank": info.rank,
            "world_size": info.world_size,
            "backend": info.backend,
            "weights_sha256": weights_digest(engine.module.state_dict()),
            "planned_here": bool(planned_here),
            "plan": engine.plan.to_dict(),
            "accumulation_steps": engine.micro_batches_per_step,
            "micro_steps": engine.micro_steps,
            "optimizer_steps": engine.optimizer_steps,
            "allreduce_calls": calls["allreduce"],
            "written": [str(p) for p in written],
            "ddp": engine.describe()["ddp"],
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{info.rank}.json").write_text(json.dumps(summary, indent=2))
    log.info("rank %d: weights %s", info.rank, summary["weights_sha256"][:12])
    distributed.shutdown()


if __name__ == "__main__":
    main()
