"""The up-front search two ways against the exhaustive grid: the trial
search (``autotune.apply(..., budget_s=B)``) and the rehearsal
(``tune="rehearse"``: the online search's paired statistics before
training), each with the same budget, then both picks, PyTorch defaults and
the grid's best measured back to back.

    python benchmarks/upfront_vs_grid.py                    # cnn, 150 s
    python benchmarks/upfront_vs_grid.py --workload mlp --budget 60

Each search runs in a fresh process with an empty tuning cache and an empty
torch compiler (inductor) cache, as a first call on a new machine would;
the wall time of ``apply`` is recorded and checked against the budget plus
the stated tolerance. Then one process measures every configuration of the
grid (trials, as ``autotune bench --grid``), takes the fastest, and measures
defaults, the two picks and the grid's best interleaved (--rounds, medians).
Targets: the rehearsal's pick reaches >= 0.97 of the grid's best
(--target rehearse_vs_grid_best=X); every apply returns within its budget +
tolerance. The trial search's figure is recorded beside it. The exit code
is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (DEFAULT_OUT, Disturbance, add_target_option, check, cold_env,  # noqa: E402
                    parse_targets, provenance, report_targets, utc_now, wait_for_quiet,
                    write_json)

TARGET_REHEARSE_VS_GRID = 0.97
MODES = {"search": "trial search", "rehearse": "rehearsal"}


def child_search(workload: str, mode: str, budget: float, out: Path) -> None:
    """One apply() in this (fresh) process; writes what it chose."""
    import torch  # noqa: F401 - imported before timing, as a user's script would

    import autotune
    from autotune.bench.workloads import get_workload

    spec = get_workload(workload)
    model, loader, optimizer = spec.build(0)
    started = time.monotonic()
    tuned = autotune.apply(model, loader, optimizer=optimizer, loss_fn=spec.loss_fn,
                           budget_s=budget, device="cpu",
                           tune="rehearse" if mode == "rehearse" else None)
    wall = time.monotonic() - started
    tuning = tuned.tuning
    report = tuning.report if mode == "rehearse" else tuning
    label = report.winner_label if mode == "rehearse" else (
        report.winner.label if report.winner else None)
    out.write_text(json.dumps({"mode": mode, "budget_s": budget, "apply_wall_s": wall,
                               "winner_settings": report.winner_settings,
                               "winner_label": label, "summary": tuning.summary(),
                               "report": report.to_dict()}, default=str))


def child_grid(workload: str, picks: Path, rounds: int, out: Path) -> None:
    from autotune.bench.runner import grid_and_confirm

    chosen = json.loads(picks.read_text())
    trials, headlines = grid_and_confirm(workload, [(name, values) for name, values in chosen],
                                         rounds=rounds)
    out.write_text(json.dumps({
        "grid": [{"label": t.label, "status": t.status.value, "samples_per_s": t.samples_per_s,
                  "spread": t.spread, "reason": t.reason, "wall_s": t.wall_s} for t in trials],
        "headlines": [h.to_dict() for h in headlines]}))


def run_child(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="cnn", choices=["cnn", "transformer", "mlp"])
    parser.add_argument("--budget", type=float, default=150.0, help="seconds, both searches")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds at the end")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "upfront_vs_grid.json",
                        help="the result file (default %(default)s; the committed one is "
                             "benchmarks/results/upfront_vs_grid_cnn.json)")
    add_target_option(parser, {"rehearse_vs_grid_best": "the rehearsal's pick / the grid's "
                                                        "best samples/s, at least (default "
                                                        f"{TARGET_REHEARSE_VS_GRID})"})
    parser.add_argument("--child-search", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-grid", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_search:
        workload, mode, budget, out = args.child_search
        child_search(workload, mode, float(budget), Path(out))
        return 0
    if args.child_grid:
        workload, picks, rounds, out = args.child_grid
        child_grid(workload, Path(picks), int(rounds), Path(out))
        return 0

    from autotune.tuner.budget import TOLERANCE_S

    wanted = parse_targets(parser, args.target, ("rehearse_vs_grid_best",)).get(
        "rehearse_vs_grid_best", TARGET_REHEARSE_VS_GRID)
    load_before = wait_for_quiet(args.max_load, args.max_wait)
    started = utc_now()
    watch = Disturbance()
    searches = []
    with tempfile.TemporaryDirectory(prefix="upfront-vs-grid-") as scratch:
        for mode, name in MODES.items():
            print(f"== {name}: apply(budget_s={args.budget:g}) on {args.workload}, cold caches",
                  flush=True)
            cold = Path(tempfile.mkdtemp(dir=scratch))
            env = cold_env(cold)
            result = cold / "search.json"
            run_child(["--child-search", args.workload, mode, str(args.budget), str(result)],
                      env)
            search = json.loads(result.read_text())
            print(f"  apply took {search['apply_wall_s']:.1f} s; picked "
                  f"{search['winner_label']}", flush=True)
            searches.append(search)
        picks = Path(scratch) / "picks.json"
        picks.write_text(json.dumps([(f"{s['mode']} pick", s["winner_settings"])
                                     for s in searches]))
        measured = Path(scratch) / "grid.json"
        print(f"== the grid, then defaults, the picks and the grid's best back to back, "
              f"{args.rounds} rounds", flush=True)
        run_child(["--child-grid", args.workload, str(picks), str(args.rounds), str(measured)],
                  {**os.environ, "AUTOTUNE_PROGRESS": "0"})
        found = json.loads(measured.read_text())
    headlines = found["headlines"]
    rate = {h["name"]: h["samples_per_s"] for h in headlines}
    best = rate.get("grid best")

    def versus_best(name: str) -> float | None:
        return rate[name] / best if rate.get(name) and best else None

    checks = {"rehearse_vs_grid_best": check(versus_best("rehearse pick"), wanted)}
    for search in searches:
        checks[f"{search['mode']}_within_{search['budget_s']:g}s"] = check(
            search["apply_wall_s"], search["budget_s"] + TOLERANCE_S, at_most=True)
    record = {**provenance(sys.argv if argv is None else [__file__, *argv], date=started,
                           load_before=load_before, foreign_cpu_share=watch.share()),
              "workload": args.workload, "budget_s": args.budget, "searches": searches,
              "grid": found["grid"], "headlines": headlines,
              "search_vs_grid_best": versus_best("search pick"), "targets": checks}
    write_json(args.out, record)
    for h in headlines:
        if h.get("samples_per_s"):
            vs = f"{h['samples_per_s'] / best:.3f}x" if best else "-"
            print(f"  {h['name']:>14}: {h['samples_per_s']:.1f} samples/s ({vs} the grid's best)"
                  f"  {h['label']}")
    code = report_targets(checks)
    print(f"  wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
