"""What a budget buys: autotune.apply with a short and a long budget on the
same workload, then both picks measured back to back against PyTorch
defaults, interleaved, in one run.

    python benchmarks/budget_buys.py                        # cnn, budgets 60 and 150
    python benchmarks/budget_buys.py --workload mlp --budget 20 --budget 60

Each search runs in a fresh process with an empty tuning cache and an empty
torch compiler (inductor) cache, as a first call on a new machine would, so
neither search profits from the other's compilation. The searches are
``autotune.apply(model, loader, optimizer=..., loss_fn=..., budget_s=B)`` as a
user calls it; the wall time of that call is recorded and checked against
the budget plus the stated tolerance. Then one process measures defaults and
each budget's pick (--rounds, interleaved, medians). Targets: the shortest
budget's pick reaches >= 0.97 of the longest budget's pick (--target
short_vs_long=X changes it), and every apply returns within budget +
tolerance. The exit code is 1 when one is missed.
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

TARGET_SHORT_VS_LONG = 0.97


def child_search(workload: str, budget: float, out: Path) -> None:
    """One apply() in this (fresh) process; writes what it chose."""
    import torch  # noqa: F401 - imported before timing, as a user's script would

    import autotune
    from autotune.bench.workloads import get_workload

    spec = get_workload(workload)
    model, loader, optimizer = spec.build(0)
    started = time.monotonic()
    tuned = autotune.apply(model, loader, optimizer=optimizer, loss_fn=spec.loss_fn,
                           budget_s=budget, device="cpu")
    wall = time.monotonic() - started
    report = tuned.tuning
    out.write_text(json.dumps({"budget_s": budget, "apply_wall_s": wall,
                               "winner_settings": report.winner_settings,
                               "winner_label": report.winner.label if report.winner else None,
                               "report": report.to_dict()}, default=str))


def child_confirm(workload: str, picks: Path, rounds: int, out: Path) -> None:
    from autotune.bench.runner import confirm_configs

    chosen = json.loads(picks.read_text())
    headlines = confirm_configs(workload, [(name, values) for name, values in chosen],
                                rounds=rounds)
    out.write_text(json.dumps([h.to_dict() for h in headlines]))


def run_child(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="cnn", choices=["cnn", "transformer", "mlp"])
    parser.add_argument("--budget", type=float, action="append",
                        help="seconds; repeatable (default: 60 and 150)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved confirmation rounds")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "budget_buys.json",
                        help="the result file (default %(default)s; the committed one is "
                             "benchmarks/results/budget_buys_cnn.json)")
    add_target_option(parser, {"short_vs_long": "the shortest budget's pick / the longest's "
                                                "samples/s, at least (default "
                                                f"{TARGET_SHORT_VS_LONG})"})
    parser.add_argument("--child-search", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-confirm", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_search:
        child_search(args.child_search[0], float(args.child_search[1]), Path(args.child_search[2]))
        return 0
    if args.child_confirm:
        workload, picks, rounds, out = args.child_confirm
        child_confirm(workload, Path(picks), int(rounds), Path(out))
        return 0

    from autotune.tuner.budget import TOLERANCE_S

    wanted = parse_targets(parser, args.target, ("short_vs_long",)).get(
        "short_vs_long", TARGET_SHORT_VS_LONG)
    budgets = sorted(args.budget or [60.0, 150.0])
    load_before = wait_for_quiet(args.max_load, args.max_wait)
    started = utc_now()
    watch = Disturbance()
    searches = []
    with tempfile.TemporaryDirectory(prefix="budget-buys-") as scratch:
        for budget in budgets:
            print(f"== apply(budget_s={budget:g}) on {args.workload}, cold caches", flush=True)
            cold = Path(tempfile.mkdtemp(dir=scratch))
            env = cold_env(cold)
            result = cold / "search.json"
            run_child(["--child-search", args.workload, str(budget), str(result)], env)
            search = json.loads(result.read_text())
            print(f"  apply took {search['apply_wall_s']:.1f} s; picked "
                  f"{search['winner_label']}", flush=True)
            searches.append(search)
        picks = Path(scratch) / "picks.json"
        picks.write_text(json.dumps([(f"{s['budget_s']:g} s pick", s["winner_settings"])
                                     for s in searches]))
        confirmed = Path(scratch) / "confirmed.json"
        print(f"== defaults and the picks back to back, {args.rounds} rounds", flush=True)
        run_child(["--child-confirm", args.workload, str(picks), str(args.rounds),
                   str(confirmed)], {**os.environ, "AUTOTUNE_PROGRESS": "0"})
        headlines = json.loads(confirmed.read_text())
    rate = {h["name"]: h["samples_per_s"] for h in headlines}
    short, long = f"{budgets[0]:g} s pick", f"{budgets[-1]:g} s pick"
    ratio = (rate[short] / rate[long]) if rate.get(short) and rate.get(long) else None
    checks = {"short_vs_long": check(ratio, wanted)}
    for search in searches:
        checks[f"apply_within_{search['budget_s']:g}s"] = check(
            search["apply_wall_s"], search["budget_s"] + TOLERANCE_S, at_most=True)
    record = {**provenance(sys.argv if argv is None else [__file__, *argv], date=started,
                           load_before=load_before, foreign_cpu_share=watch.share()),
              "workload": args.workload, "searches": searches, "headlines": headlines,
              "targets": checks}
    write_json(args.out, record)
    for h in headlines:
        if h.get("samples_per_s"):
            vs = (f"{h['samples_per_s'] / rate['defaults']:.2f}x" if rate.get("defaults")
                  else "-")
            print(f"  {h['name']:>12}: {h['samples_per_s']:.1f} samples/s ({vs} defaults)  "
                  f"{h['label']}")
    code = report_targets(checks)
    print(f"  wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
