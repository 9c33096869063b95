"""k-fold cross-validation with autotune: folds in parallel where the
machine allows, each stored as it finishes, a rerun resumes.

    python examples/cross_validate.py                        # the plan decides
    python examples/cross_validate.py --backend loky --max-concurrent 2
    python examples/cross_validate.py --dask 2               # a local Dask cluster, 2 workers
    python examples/cross_validate.py --scheduler tcp://host:8786   # an existing cluster
    autotune cv runs/cv                                      # what the run directory holds

Run it twice with the same --run-dir: the second run trains nothing.
Model and dataset are module-level so worker processes can import them.
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch.utils.data import TensorDataset

import autotune
from autotune.cv import accuracy


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(64, 3))


def make_dataset(samples: int = 1500) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, 20, generator=generator)
    scores = inputs[:, :3] @ torch.tensor([1.5, -1.0, 0.5]) + 0.3 * torch.randn(samples,
                                                                                generator=generator)
    labels = torch.bucketize(scores, torch.tensor([-0.8, 0.8]))  # 3 unequal classes
    return TensorDataset(inputs, labels)


def adamw(params) -> torch.optim.Optimizer:  # noqa: ANN001
    return torch.optim.AdamW(params, lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--run-dir", default="runs/cv")
    parser.add_argument("--backend", choices=["sequential", "loky", "threading", "dask"])
    parser.add_argument("--max-concurrent", type=int)
    parser.add_argument("--dask", type=int, metavar="N", help="start a local Dask cluster of N "
                        "worker processes and run the folds there")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("autotune.plan.report").setLevel(logging.WARNING)

    dataset = make_dataset()
    options = dict(k=args.k, epochs=args.epochs, batch_size=64, stratify=dataset.tensors[1],
                   run_dir=args.run_dir, optimizer_fn=adamw, metrics={"accuracy": accuracy},
                   best_by="val_accuracy", higher_is_better=True,
                   max_concurrent=args.max_concurrent)
    if args.dask or args.scheduler:
        from dask.distributed import Client, LocalCluster

        cluster = None if args.scheduler else LocalCluster(
            n_workers=args.dask, threads_per_worker=1, processes=True, dashboard_address=None)
        with Client(args.scheduler or cluster) as client:
            result = autotune.cross_validate(make_model, dataset, backend=client, **options)
        if cluster is not None:
            cluster.close()
    else:
        result = autotune.cross_validate(make_model, dataset, backend=args.backend, **options)
    print(result.summary())
    for fold in result.folds:
        print(f"  fold {fold.fold}: val_accuracy {fold.metrics['val_accuracy']:.3f} "
              f"({'resumed' if fold.resumed else f'{fold.duration_s:.1f} s on {fold.device}'})")


if __name__ == "__main__":
    main()
