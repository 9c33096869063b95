"""``autotune cv RUN_DIR``: what a cross-validation run directory holds.

Reads the manifest and the fold files that ``autotune.cross_validate``
writes as each fold finishes (see docs/cross_validation.md): which folds
finished, with their metrics, which failed and why, which are still to
run, and the mean and spread of each metric so far. Works on a run that
is still going or was interrupted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from autotune.cli.output import key_values, print_json, table
from autotune.cv.result import aggregate
from autotune.cv.store import RunStore
from autotune.errors import AutotuneError

JSON_VERSION = 1


def load(run_dir: str) -> dict[str, Any]:
    store = RunStore(run_dir)
    manifest = store.read_manifest()
    if manifest is None:
        raise AutotuneError(f"{run_dir}: not a cross-validation run directory (no manifest.json); "
                            "HINT: pass the run_dir given to autotune.cross_validate")
    finished = store.finished(manifest.k)
    failures = {i: f for i, f in store.failures(manifest.k).items() if i not in finished}
    missing = [i for i in range(manifest.k) if i not in finished and i not in failures]
    done = tuple(finished[i] for i in sorted(finished))
    return {"version": JSON_VERSION, "run_dir": run_dir, "manifest": asdict(manifest),
            "finished": [r.to_dict() for r in done],
            "failed": [failures[i].to_dict() for i in sorted(failures)],
            "missing": missing,
            "aggregate": {name: asdict(s) for name, s in aggregate(done).items()}}


def cmd_cv(args: argparse.Namespace) -> int:
    data = load(args.run_dir)
    if args.json:
        print_json(data)
        return 0
    manifest = data["manifest"]
    out = sys.stdout
    print(key_values([
        ("Run", data["run_dir"]),
        ("Split", f"{manifest['k']} folds of {manifest['dataset_length']} samples, seed "
                  f"{manifest['seed']}{', stratified' if manifest['stratified'] else ''} "
                  f"(split {manifest['split_digest']})"),
        ("Training", f"{manifest['epochs']} epoch(s), batch {manifest['batch_size']}"),
        ("Status", f"{len(data['finished'])} finished, {len(data['failed'])} failed, "
                   f"{len(data['missing'])} not run"),
    ]), file=out)
    names = sorted({m for r in data["finished"] for m in r["metrics"]})
    rows: list[list[Any]] = []
    for r in data["finished"]:
        rows.append([r["fold"], "ok", *(f"{r['metrics'][m]:.4f}" if m in r["metrics"] else None
                                       for m in names),
                     f"{r['duration_s']:.1f}", r["device"], r["worker"]])
    for f in data["failed"]:
        rows.append([f["fold"], "FAILED", *([None] * len(names)), f"{f['duration_s']:.1f}", None,
                     f"{f['error']}: {f['message']}"])
    for i in data["missing"]:
        rows.append([i, "not run", *([None] * len(names)), None, None, None])
    rows.sort(key=lambda row: row[0])
    if rows:
        print("", file=out)
        print(table(rows, ["fold", "status", *names, "seconds", "device", "worker / error"]),
              file=out)
    if data["aggregate"]:
        print("", file=out)
        print(table([[name, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['min']:.4f}",
                      f"{s['max']:.4f}", s["count"]] for name, s in data["aggregate"].items()],
                    ["metric", "mean", "std", "min", "max", "folds"]), file=out)
    if data["failed"] or data["missing"]:
        print("\nRerun cross_validate with the same run_dir to train the remaining folds.",
              file=out)
    return 0
