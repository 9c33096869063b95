"""``autotune bench``: PyTorch defaults vs tuned on a built-in workload."""

from __future__ import annotations

import argparse

from autotune.cli.arguments import at_least, output_file, seconds
from autotune.cli.output import print_json, warnings_as_lines

#: The names of :data:`autotune.bench.workloads.WORKLOADS`, written out so that
#: building this parser (``autotune --help``) does not import torch; a test
#: keeps the two lists equal.
WORKLOAD_NAMES = ("cnn", "mlp", "transformer")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="defaults vs tuned (vs the best of the grid) on a reference workload",
        description="Tune a built-in synthetic workload on this machine and print PyTorch "
                    "defaults vs the tuner's pick (with --grid: vs the best of the "
                    "exhaustive grid), re-measured back to back.")
    parser.add_argument("--workload", choices=WORKLOAD_NAMES, default="cnn",
                        help="cnn: CIFAR ResNet-18; transformer: 4-layer encoder LM; mlp")
    parser.add_argument("--budget", type=seconds, default=300.0, metavar="S",
                        help="seconds the tuner's search may take (default 300)")
    parser.add_argument("--grid", action="store_true",
                        help="also measure every combination of the candidates (slow)")
    parser.add_argument("--rounds", type=at_least(0), default=2, metavar="N",
                        help="confirmation rounds of defaults/tuned/grid best (default 2)")
    parser.add_argument("--chunk-s", type=seconds, default=1.0, metavar="S",
                        help="target seconds per timed chunk of a trial (default 1.0)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if any)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--plot", type=output_file, metavar="PNG",
                        help="write a bar chart of the trials")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autotune.bench.runner import plot_bench, run_bench
    from autotune.tuner.trial import TrialOptions
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
