"""CPU benchmarks: PyTorch defaults vs autotune's pick vs the best of the
exhaustive grid, measured in one run, on the built-in workloads.

    python benchmarks/run_cpu.py                      # cnn and transformer
    python benchmarks/run_cpu.py --workload mlp --budget 120

Each workload waits for a quiet machine (1-minute load below --max-load,
up to --max-wait seconds), then tunes (as autotune.apply would), measures
every configuration of the grid, and re-measures defaults / tuned / grid
best back to back (--rounds). Results go to --out (default runs/benchmarks/,
which git ignores; pass --out benchmarks/results to update the committed
ones) as cpu_<name>.json (--prefix, or --name for one workload, renames
them), with the command, the commit, the machine and the load averages
before and after (common.provenance), and a plot beside it. Targets are
checked and printed; the exit code is 1 when one is missed (--target
changes one, for every workload run).

To measure on a busy machine on purpose (the load is recorded):

    python benchmarks/run_cpu.py --workload mlp --no-grid --max-load 99 --max-wait 0 \
        --attempts 1 --max-foreign 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OUT, add_target_option, parse_targets, run_one  # noqa: E402

#: The speed-up goals set for a 2-core CPU with native bf16 (AVX512-BF16 or
#: AMX), where bf16 autocast is what pays; on a CPU without it there is no
#: such gain to find, and only the floor applies. A workload not listed only
#: has the floor (never slower than PyTorch defaults).
BF16_TARGETS = {
    "cnn": {"tuned_vs_defaults": 2.1, "tuned_vs_grid_best": 0.95},
    "transformer": {"tuned_vs_defaults": 1.1},
}
FLOOR = 0.97


def targets_for(name: str, has_bf16: bool, grid: bool) -> dict[str, float]:
    targets = {"tuned_vs_defaults": FLOOR}
    if has_bf16:
        targets.update(BF16_TARGETS.get(name, {}))
    if not grid:
        targets.pop("tuned_vs_grid_best", None)
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=["cnn", "transformer", "mlp"],
                        help="repeatable; default: cnn and transformer")
    parser.add_argument("--budget", type=float, default=300.0, help="tuner budget, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="confirmation rounds")
    parser.add_argument("--chunk-s", type=float, default=1.0, help="seconds per timed chunk")
    parser.add_argument("--no-grid", action="store_true", help="skip the exhaustive grid")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument("--attempts", type=int, default=3,
                        help="runs when other processes disturbed the previous one")
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="CPU share other processes may use during a valid run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where results go (default %(default)s; the committed ones are "
                             "in benchmarks/results)")
    parser.add_argument("--prefix", default="cpu", help="result file names: PREFIX_<workload>")
    parser.add_argument("--name", help="with one --workload: the result file name without "
                                       "extension (instead of PREFIX_<workload>)")
    add_target_option(parser, {
        "tuned_vs_defaults": f"tuned / defaults samples/s, at least (default {FLOOR}; "
                             "2.1 cnn, 1.1 transformer on a CPU with native bf16)",
        "tuned_vs_grid_best": "tuned / grid best, at least (default 0.95 on the cnn with "
                              "native bf16; needs the grid)"})
    args = parser.parse_args(argv)
    names = args.workload or ["cnn", "transformer"]
    if args.name and len(names) != 1:
        parser.error("--name needs exactly one --workload")
    overrides = parse_targets(parser, args.target, ("tuned_vs_defaults", "tuned_vs_grid_best"))
    if args.no_grid and "tuned_vs_grid_best" in overrides:
        parser.error("--target tuned_vs_grid_best needs the grid (drop --no-grid)")
    command = sys.argv if argv is None else [__file__, *argv]

    from autotune.machine.detect import detect

    has_bf16 = detect().cpu.has_bf16
    if not has_bf16:
        print("this CPU has no native bf16: only the floor (tuned >= "
              f"{FLOOR}x defaults) is a target here", flush=True)
    missed = []
    for name in names:
        targets = {**targets_for(name, has_bf16, grid=not args.no_grid), **overrides}
        record = run_one(name, name, args.prefix, budget_s=args.budget, grid=not args.no_grid,
                         rounds=args.rounds, chunk_s=args.chunk_s, device="cpu",
                         max_load=args.max_load, max_wait_s=args.max_wait, targets=targets,
                         out_dir=args.out, attempts=args.attempts,
                         max_foreign=args.max_foreign, argv=command, file_name=args.name)
        missed += [f"{name}: {k} >= {c['target']:g}, measured "
                   + ("-" if c["measured"] is None else f"{c['measured']:.3g}")
                   for k, c in record["targets"].items() if not c["met"]]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
