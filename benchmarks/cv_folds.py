"""Sequential vs parallel cross-validation folds on this machine.

Each measurement runs in a fresh Python process (so loky's worker start-up,
which a real ``cross_validate`` call pays, is counted, and no executor is
reused between measurements) and reports ``CVResult.wall_time_s``: the time
inside ``autotune.cross_validate``, from the split to the last stored fold.

Modes:
  sequential   one fold after another in this process, all usable cores
  loky         ``--workers`` loky worker processes, cores / workers threads each
  threading    ``--workers`` threads, cores / workers intra-op threads each
  plugin       no backend/concurrency arguments: what parallel_folds picks
               (including its timed-steps check for folds too short for workers)

Target, per workload: the plugin's choice takes at most 1.05x the
sequential wall time (5% for run-to-run noise; --target
plugin_time_vs_sequential=X changes it). The exit code is 1 when a
workload misses it.

Writes runs/benchmarks/cv_folds.json unless --out names another file::

    python benchmarks/cv_folds.py --out benchmarks/results/cv_folds.json   # all workloads, 3 rounds
    python benchmarks/cv_folds.py --workloads mlp --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_OUT, add_target_option, check, parse_targets,  # noqa: E402
                    provenance, report_targets, utc_now, wait_for_quiet, write_json)

MODES = ("sequential", "loky", "threading", "plugin")
#: The plugin's choice may take at most this times the sequential wall time.
TARGET_PLUGIN_VS_SEQUENTIAL = 1.05


# -- workloads (module level: loky workers import them from this file) -----------------------


def mlp_model() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 10))


def cnn_model() -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 10))


def dataset(name: str) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(0)
    if name == "mlp":
        inputs = torch.randn(8192, 64, generator=generator)
    else:
        inputs = torch.randn(2048, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (inputs.shape[0],), generator=generator)
    return TensorDataset(inputs, targets)


WORKLOADS = {
    "tiny": {"model": mlp_model, "epochs": 2, "batch_size": 64, "data": "mlp",
             "what": "MLP 64-512-512-10, 8192 samples, 2 epochs, batch 64 (folds of ~1 s)"},
    "mlp": {"model": mlp_model, "epochs": 8, "batch_size": 64,
            "what": "MLP 64-512-512-10, 8192 samples, 8 epochs, batch 64"},
    "cnn": {"model": cnn_model, "epochs": 4, "batch_size": 64,
            "what": "2-conv CNN on 3x32x32, 2048 samples, 4 epochs, batch 64"},
}


def child(mode: str, workload: str, k: int, workers: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import logging

    import autotune

    logging.basicConfig(level=logging.WARNING)
    spec = WORKLOADS[workload]
    cores = autotune.detect().cpu.worker_budget
    kwargs: dict[str, Any] = {}
    if mode == "sequential":
        kwargs = {"backend": "sequential"}
    elif mode in ("loky", "threading"):
        kwargs = {"backend": mode, "max_concurrent": workers,
                  "threads_per_fold": max(1, cores // workers)}
    with tempfile.TemporaryDirectory() as run_dir:
        result = autotune.cross_validate(spec["model"], dataset(spec.get("data", workload)), k=k,
                                         epochs=spec["epochs"], batch_size=spec["batch_size"],
                                         run_dir=run_dir, progress=False, **kwargs)
    reason = result.plan.setting("parallel_folds", "max_concurrent").reason
    return {"wall_time_s": result.wall_time_s, "backend": result.backend, "reason": reason,
            "concurrency": result.concurrency, "threads_per_fold": result.threads_per_fold,
            "ok": result.ok, "val_loss_mean": result.aggregate["val_loss"].mean,
            "fold_seconds": [f.duration_s for f in result.folds]}


def wait_until_idle(max_busy: float, max_wait_s: float, window_s: float = 3.0) -> float:
    """Wait until the CPU is at most ``max_busy`` percent busy over
    ``window_s`` (the 1-minute load average lags too much to tell whether
    another job started or ended a moment ago); returns the last reading."""
    import time

    import psutil

    deadline = time.monotonic() + max_wait_s
    while True:
        busy = psutil.cpu_percent(interval=window_s)
        if busy <= max_busy or time.monotonic() >= deadline:
            return busy
        print(f"  waiting for an idle CPU: {busy:.0f}% busy", flush=True)


def measure(mode: str, workload: str, k: int, workers: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, workload, str(k), str(workers)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}/{workload} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sequential vs parallel CV folds")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="folds at once for loky/threading")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=300.0)
    parser.add_argument("--max-busy", type=float, default=10.0,
                        help="CPU %% busy (all cores) above which a measurement waits")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "cv_folds.json",
                        help="the result file (default %(default)s; the committed one is "
                             "benchmarks/results/cv_folds.json)")
    add_target_option(parser, {
        "plugin_time_vs_sequential": "the plugin's median wall time / sequential's, at most, "
                                     f"on every workload (default {TARGET_PLUGIN_VS_SEQUENTIAL})"})
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, workload, k, workers = args.child
        print(json.dumps(child(mode, workload, int(k), int(workers))))
        return 0
    limit = parse_targets(parser, args.target, ("plugin_time_vs_sequential",)).get(
        "plugin_time_vs_sequential", TARGET_PLUGIN_VS_SEQUENTIAL)

    started = utc_now()
    load_before = wait_for_quiet(args.max_load, args.max_wait)
    results: dict[str, Any] = {}
    for workload in args.workloads:
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for round_ in range(args.rounds):
            # Rotate the order each round so drift in machine load spreads evenly.
            order = MODES[round_ % len(MODES):] + MODES[:round_ % len(MODES)]
            for mode in order:
                # Other jobs on a shared machine skew a measurement: wait for
                # quiet before each one, and keep the load with the numbers.
                busy = wait_until_idle(args.max_busy, args.max_wait)
                run = measure(mode, workload, args.k, args.workers)
                run["cpu_busy_percent_before"] = busy
                runs[mode].append(run)
                print(f"{workload:4s} round {round_ + 1} {mode:10s} {run['wall_time_s']:7.2f} s "
                      f"({run['backend']}, {run['concurrency']} at once, "
                      f"{run['threads_per_fold']} threads)", flush=True)
        medians = {m: statistics.median(r["wall_time_s"] for r in runs[m]) for m in MODES}
        results[workload] = {
            "what": WORKLOADS[workload]["what"], "k": args.k,
            "median_wall_time_s": medians,
            "speedup_vs_sequential": {m: medians["sequential"] / medians[m] for m in MODES},
            "plugin_choice": {k: runs["plugin"][0][k] for k in
                              ("backend", "concurrency", "threads_per_fold", "reason")},
            "runs": runs,
        }
    checks = {f"{workload}: plugin_time_vs_sequential": check(
        data["median_wall_time_s"]["plugin"] / data["median_wall_time_s"]["sequential"], limit,
        at_most=True) for workload, data in results.items()}
    record = {
        **provenance(sys.argv if argv is None else [__file__, *argv], date=started,
                     load_before=load_before),
        "note": ("the plugin_time_vs_sequential target allows 5% for run-to-run noise; "
                 "wall times include loky worker start-up"),
        "targets": checks,
        "results": results,
    }
    write_json(args.out, record)
    for workload, data in results.items():
        medians = data["median_wall_time_s"]
        print(f"{workload}: " + ", ".join(f"{m} {medians[m]:.2f} s "
                                          f"(x{data['speedup_vs_sequential'][m]:.2f})"
                                          for m in MODES)
              + f"; plugin picked {data['plugin_choice']}")
    code = report_targets(checks)
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
