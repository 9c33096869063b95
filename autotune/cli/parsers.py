"""Every subcommand's arguments: argparse only, no library import, so that
``autotune --help`` (and any command's ``--help``) answers without loading
the plugin manager, the profiles or torch. What runs a command is in the
module :data:`autotune.cli.COMMANDS` names, imported only when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from autotune.cli.arguments import at_least, output_file, seconds

#: The names of :data:`autotune.bench.workloads.WORKLOADS`, written out so that
#: building this parser (``autotune --help``) does not import torch; a test
#: keeps the two lists equal.
WORKLOAD_NAMES = ("cnn", "mlp", "transformer")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Every subcommand, in the order ``--help`` lists them."""
    add_plan_commands(subparsers)
    add_bench_command(subparsers)
    add_telemetry_commands(subparsers)
    add_cv_command(subparsers)


# -- detect, profiles, plugins, plan -----------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, plugins: bool = True,
                profile: bool = False, nested: bool = False) -> argparse._MutuallyExclusiveGroup:
    """The options every command here takes; returns the group of output
    formats (``--json``), where a command adds its others (``plan --yaml``)
    so that asking for two is refused."""
    # A nested subparser copies its defaults over the parent's values, so
    # there the options get no default ("profiles --json show X" keeps --json).
    nodefault: dict[str, Any] = {"default": argparse.SUPPRESS} if nested else {}
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="machine-readable output (see README)",
                         **nodefault)
    parser.add_argument("--profile-dir", action="append", metavar="DIR",
                        **(nodefault or {"default": []}),
                        help="extra profile directory; its profiles override built-ins "
                             "of the same name (repeatable; also $AUTOTUNE_PROFILE_PATH)")
    if profile:
        parser.add_argument("--profile", metavar="NAME",
                            help="use this profile instead of the best match")
    if plugins:
        parser.add_argument("--disable", action="append", default=[], metavar="NAME",
                            help="turn a plugin off (repeatable or comma-separated; "
                                 "also $AUTOTUNE_DISABLE)")
        parser.add_argument("--strict", action="store_true",
                            help="a failing plugin is an error instead of a warning")
    return formats


def add_plan_commands(subparsers: argparse._SubParsersAction) -> None:
    """``detect``, ``profiles [show NAME]``, ``plugins`` and ``plan``: what
    this machine is, which profile matches, what the plugins propose."""
    p = subparsers.add_parser("detect", help="describe this machine and the profile it matches",
                              description="Detect CPU, memory, GPUs and software, and say which "
                                          "profile matches and why the others do not.")
    _add_common(p)

    p = subparsers.add_parser("profiles", help="list profiles, or show one",
                              description="List built-in and user profiles, or show one "
                                          "with 'extends' merged.")
    _add_common(p, plugins=False)
    sub = p.add_subparsers(dest="profiles_command", metavar="show NAME")
    show = sub.add_parser("show", help="show one profile, 'extends' merged")
    show.add_argument("name", metavar="NAME")
    _add_common(show, plugins=False, nested=True)

    p = subparsers.add_parser("plugins", help="every plugin, where it comes from, on or off",
                              description="List built-in and third-party plugins with their "
                                          "status for this machine's plan.")
    _add_common(p, profile=True)

    p = subparsers.add_parser("plan", help="the settings the plugins propose, with reasons",
                              description="Make the plan: every setting with its value, source "
                                          "(default < profile < measured < override) and reason.")
    formats = _add_common(p, profile=True)
    p.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="override one setting (value read as YAML, everything after the "
                        "first '='; repeatable)")
    formats.add_argument("--yaml", action="store_true", help="the plan as YAML")


# -- bench -------------------------------------------------------------------------


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    """``bench``: PyTorch defaults vs tuned on a built-in workload."""
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


# -- monitor, daemon, report --------------------------------------------------------


def add_telemetry_commands(subparsers: argparse._SubParsersAction) -> None:
    """``monitor -- CMD``, ``daemon [status]`` and ``report TIMELINE``."""
    p = subparsers.add_parser(
        "monitor", help="run a command while sampling the hardware; diagnose the bottleneck",
        description="Run CMD, sample CPU, memory, its processes and GPUs while it runs, then "
                    "print a summary and a one-sentence diagnosis (on stderr) and write "
                    "timeline.jsonl and timeline.png into --out. Exits with CMD's exit code.")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                   help="seconds between samples (default 1)")
    p.add_argument("--out", default="autotune-monitor", metavar="DIR",
                   help="where timeline.jsonl and timeline.png go (default ./autotune-monitor)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...",
                   help="the command to run")

    p = subparsers.add_parser(
        "daemon", help="share the machine among training jobs; sample it to a JSONL file",
        description="Foreground daemon for systemd: training jobs that call autotune.apply "
                    "register on a user-only Unix socket and get a share of the cores (threads, "
                    "loader workers, affinity) by what each measured; the machine is sampled "
                    "to a JSONL file (one line per sample and per share change, size-based "
                    "rotation). Exit 0 on SIGTERM/SIGINT; refuses to run twice on one output "
                    "or socket (exit 2); no network port. 'autotune daemon status' lists the "
                    "jobs.")
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                   help="run the daemon (default), or list the jobs of the running one")
    p.add_argument("--socket", metavar="PATH",
                   help="the socket (default $AUTOTUNE_SOCKET, else "
                        "$XDG_RUNTIME_DIR/autotune/daemon.sock)")
    p.add_argument("--no-coordinate", action="store_true",
                   help="only sample; do not listen for jobs")
    p.add_argument("--cores", type=int, metavar="N",
                   help="share only the first N usable cores (default: all)")
    p.add_argument("--json", action="store_true", help="status: machine-readable output")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                   help="seconds between samples (default 1)")
    p.add_argument("--out", default="autotune-telemetry.jsonl", metavar="FILE",
                   help="JSONL output (default ./autotune-telemetry.jsonl); FILE.lock "
                        "holds the lock")
    p.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024, metavar="N",
                   help="rotate before FILE grows past N bytes (default 10 MiB)")
    p.add_argument("--backups", type=int, default=3, metavar="K",
                   help="rotated files to keep, FILE.1 newest (default 3)")
    p.add_argument("--pid", type=at_least(1), metavar="PID",
                   help="also record this process's (and its children's) RSS and CPU")

    p = subparsers.add_parser(
        "report", help="summarise and diagnose a timeline.jsonl",
        description="Read a timeline written by monitor, daemon or TrainingMonitor; print "
                    "the summary and the diagnosis; optionally plot it.")
    p.add_argument("timeline", metavar="TIMELINE.jsonl")
    p.add_argument("--plot", type=output_file, metavar="PNG", help="also write a plot here")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# -- cv ----------------------------------------------------------------------------


def add_cv_command(subparsers: argparse._SubParsersAction) -> None:
    """``cv RUN_DIR``: what a cross-validation run directory holds."""
    p = subparsers.add_parser(
        "cv", help="show a cross-validation run directory: folds, metrics, failures",
        description="Summarise what autotune.cross_validate stored in RUN_DIR: the split, "
                    "each fold's metrics (or its error), the folds still to run, and each "
                    "metric's mean and standard deviation over the finished folds.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run_dir given to cross_validate")
    p.add_argument("--json", action="store_true", help="everything as JSON on stdout")
