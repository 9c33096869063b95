"""``autotune bench``: PyTorch defaults vs tuned on a built-in workload."""

from __future__ import annotations

import argparse

from autotune.bench.runner import plot_bench, run_bench
from autotune.cli.output import print_json, warnings_as_lines
from autotune.tuner.trial import TrialOptions

def cmd_bench(args: argparse.Namespace) -> int:
    with warnings_as_lines():
        result = run_bench(args.workload, budget_s=args.budget, grid=args.grid,
                           rounds=args.rounds, device=args.device,
                           trial=TrialOptions(chunk_s=args.chunk_s),
                           progress=not args.no_progress)
    if args.plot:
        plot_bench(result, args.plot)
    if args.json:
        print_json(result.to_dict())
        return 0
    # The text is what gets saved (`> results.txt`): it says where, when and
    # how it was measured before what was measured.
    print(result.header(args.command_line))
    print()
    print(f"{result.workload}: {result.description} on {result.device}")
    print()
    print(result.tuning.table())
    if result.grid:
        best = max((t for t in result.grid if t.ok), key=lambda t: t.samples_per_s or 0.0,
                   default=None)
        print(f"\ngrid: {len(result.grid)} configurations"
              + (f"; best #{best.index} {best.label} ({best.samples_per_s:.1f} samples/s)"
                 if best else ""))
    print("\nconfirmation (medians of the interleaved rounds):")
    print(result.table())
    if args.plot:
        print(f"\nplot written to {args.plot}")
    return 0
