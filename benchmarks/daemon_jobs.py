"""Two training jobs at once on one machine: without a daemon, with an
equal static split, and with ``autotune daemon``.

Each job is its own Python process that calls ``autotune.apply`` as a user
would (``tune=False``: the plan's rules, the same in every arm) and trains
for a fixed number of epochs; its time runs from before ``apply`` to the end
of ``fit``. The jobs: the benchmark CNN (CIFAR-style ResNet-18, width 32,
batch 32) and the small transformer LM (batch 8). Arms, each run
``--rounds`` times, interleaved:

  alone    no daemon: each job plans as if it had the machine to itself
  static   an equal split by hand: ``overrides={'threads': {'intra_op': T}}``
           and the process pinned to its own cores (T = cores / 2)
  daemon   ``autotune daemon`` runs; the jobs register and take its shares

Targets: the daemon finishes both jobs at least 3x faster than "alone"
(speedup_vs_alone), and takes at most 1.05x the static split's time
(daemon_vs_static); --target NAME=VALUE changes one. The exit code is 1
when one is missed.

Writes ``<out>/<name>.json`` and ``.png`` (default runs/benchmarks/daemon_jobs);
the committed ones::

    python benchmarks/daemon_jobs.py --rounds 2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_OUT, add_target_option, check, parse_targets,  # noqa: E402
                    provenance, report_targets, utc_now, wait_for_quiet, write_json)

ARMS = ("alone", "static", "daemon")
#: The daemon at least this much faster than "alone", at most this times the static split.
TARGETS = {"speedup_vs_alone": 3.0, "daemon_vs_static": 1.05}
JOBS = {
    # name: (epochs, batches per epoch)
    "cnn": (6, 5),
    "transformer": (5, 4),
}


# -- one job (run as its own process) ---------------------------------------------------


def run_job(name: str, arm: str, slot: int, cores: int, epochs: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Subset

    import autotune
    from autotune.bench.workloads import WORKLOADS, resnet18_cifar

    batches = JOBS[name][1]
    workload = WORKLOADS[name]
    torch.manual_seed(0)
    batch = 32 if name == "cnn" else 8
    model = resnet18_cifar(width=32) if name == "cnn" else workload.make_model()
    data = Subset(workload.make_dataset(), range(batch * batches))
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    optimizer = workload.make_optimizer(model)
    overrides = None
    if arm == "static":
        share = max(1, cores // 2)
        cpus = sorted(os.sched_getaffinity(0))[slot * share:(slot + 1) * share]
        os.sched_setaffinity(0, cpus)
        overrides = {"threads": {"intra_op": share}}
    started = time.perf_counter()
    tuned = autotune.apply(model, loader, optimizer=optimizer, loss_fn=workload.loss_fn,
                           tune=False, overrides=overrides)
    engine = tuned.engine(optimizer, workload.loss_fn, progress=False)
    with engine:
        engine.fit(tuned.loader, epochs=epochs)
        threads = [h.threads for h in engine.history]
    return {"job": name, "arm": arm, "time_s": time.perf_counter() - started,
            "threads_per_epoch": threads,
            "plan_threads": tuned.plan.get("threads", "intra_op"),
            "plan_threads_source": tuned.plan.setting("threads", "intra_op").source.value}


# -- the arms ------------------------------------------------------------------------------------


def run_arm(arm: str, cores: int, workdir: Path, epochs: dict[str, int]) -> dict[str, Any]:
    socket_path = workdir / f"{arm}.sock"
    env = dict(os.environ, AUTOTUNE_SOCKET=str(socket_path))
    daemon = None
    if arm == "daemon":
        daemon = subprocess.Popen([sys.executable, "-m", "autotune", "daemon", "--out",
                                   str(workdir / "daemon.jsonl"), "--interval", "1"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            if socket_path.exists():
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the daemon did not start")
    try:
        started = time.perf_counter()
        processes = [subprocess.Popen([sys.executable, __file__, "--job", name, "--arm", arm,
                                       "--slot", str(slot), "--cores", str(cores),
                                       "--job-epochs", str(epochs[name])],
                                      env=env, stdout=subprocess.PIPE, text=True)
                     for slot, name in enumerate(JOBS)]
        results = []
        for process in processes:
            out, _ = process.communicate()
            if process.returncode != 0:
                raise SystemExit(f"a {arm} job failed with exit code {process.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        total = time.perf_counter() - started
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait()
    return {"arm": arm, "total_s": total, "jobs": results}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = ["cnn", "transformer", "both (wall)"]
    width = 0.26
    for i, arm in enumerate(ARMS):
        summary = result["summary"][arm]
        values = [summary["cnn_s"], summary["transformer_s"], summary["total_s"]]
        bars = ax.bar([x + (i - 1) * width for x in range(3)], values, width, label=arm)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(3), labels)
    ax.set_ylabel("seconds (median of rounds)")
    ax.set_title(f"Two jobs at once on {result['cores']} cores: "
                 f"daemon {result['speedup_vs_alone']:.1f}x faster than alone")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of the three arms, interleaved (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where daemon_jobs.json/.png go (default {DEFAULT_OUT}; "
                             "benchmarks/results for the committed result)")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="wait for a 1-minute load average below this (default 0.5)")
    parser.add_argument("--max-wait", type=float, default=300,
                        help="seconds to wait for a quiet machine (default 300)")
    # Internal: one job, run by the arms as its own process.
    parser.add_argument("--job", choices=tuple(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--job-epochs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", action="append", default=[], metavar="JOB=N",
                        help="epochs of a job (default cnn=6, transformer=5); unequal "
                             "lengths show a share moving to the job that is left")
    parser.add_argument("--name", default="daemon_jobs",
                        help="result file name without extension (default daemon_jobs)")
    add_target_option(parser, {
        "speedup_vs_alone": "alone's wall time / the daemon's, at least (default "
                            f"{TARGETS['speedup_vs_alone']:g})",
        "daemon_vs_static": "the daemon's wall time / the static split's, at most (default "
                            f"{TARGETS['daemon_vs_static']:g})"})
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(args.job, args.arm, args.slot, args.cores,
                                 args.job_epochs or JOBS[args.job][0])), flush=True)
        return 0
    epochs = {name: e for name, (e, _) in JOBS.items()}
    for item in args.epochs:
        name, _, count = item.partition("=")
        if name not in JOBS or not count.isdigit() or int(count) < 1:
            parser.error(f"--epochs {item!r}: use JOB=N with JOB one of {', '.join(JOBS)}")
        epochs[name] = int(count)
    wanted = {**TARGETS, **parse_targets(parser, args.target, tuple(TARGETS))}

    from autotune.telemetry.daemon import usable_cpus

    cores = len(usable_cpus())
    load_before = wait_for_quiet(args.max_load, args.max_wait)
    started = utc_now()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="at-", dir="/tmp") as workdir:
        for round_number in range(1, args.rounds + 1):
            for arm in ARMS:
                run = run_arm(arm, cores, Path(workdir), epochs)
                run["round"] = round_number
                runs.append(run)
                jobs = ", ".join(f"{j['job']} {j['time_s']:.1f} s ({j['plan_threads']} "
                                 f"thread(s), {j['plan_threads_source']})" for j in run["jobs"])
                print(f"round {round_number} {arm:<7} both done in {run['total_s']:6.1f} s: "
                      f"{jobs}", flush=True)
    summary = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {"total_s": statistics.median(r["total_s"] for r in mine),
                        **{f"{name}_s": statistics.median(j["time_s"] for r in mine
                                                          for j in r["jobs"] if j["job"] == name)
                           for name in JOBS}}
    alone, static, daemon = (summary[a]["total_s"] for a in ARMS)
    checks = {"speedup_vs_alone": check(alone / daemon, wanted["speedup_vs_alone"]),
              "daemon_vs_static": check(daemon / static, wanted["daemon_vs_static"],
                                        at_most=True)}
    result = {
        **provenance(sys.argv if argv is None else [__file__, *argv], date=started,
                     load_before=load_before),
        "benchmark": "daemon_jobs",
        "cores": cores,
        "jobs": {name: {"epochs": epochs[name], "batches_per_epoch": b}
                 for name, (_, b) in JOBS.items()},
        "runs": runs, "summary": summary,
        "speedup_vs_alone": alone / daemon,
        "daemon_vs_static": daemon / static,
        "targets": checks,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    plot(result, args.out / f"{args.name}.png")
    print(f"\nmedians: alone {alone:.1f} s, static {static:.1f} s, daemon {daemon:.1f} s -> "
          f"daemon {alone / daemon:.2f}x faster than alone, {daemon / static:.2f}x the static "
          "split's time")
    code = report_targets(checks)
    print(f"wrote {args.out / (args.name + '.json')} and {args.out / (args.name + '.png')}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
