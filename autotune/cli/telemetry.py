"""``autotune monitor``, ``daemon`` and ``report``: hardware telemetry.

``monitor -- CMD`` runs a command while sampling it and forwards its exit
code; ``daemon`` samples the machine to a rotating JSONL file until
SIGTERM; ``report`` summarises and diagnoses a timeline file. The library
side is :mod:`autotune.telemetry` (see docs/monitor.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from autotune.cli.daemon_status import cmd_status
from autotune.cli.output import key_values, print_json
from autotune.errors import AutotuneError
from autotune.machine.hardware import GIB
from autotune.telemetry import (Skipped, Summary, Timeline, diagnose, findings, plot,
                                read_timeline)
from autotune.telemetry.command import run_monitored
from autotune.telemetry.daemon import DaemonOptions, run_daemon

JSON_VERSION = 1


def summary_rows(summary: Summary) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("Duration", f"{summary.duration_s:.1f} s, {summary.sample_count} samples"),
        ("CPU", f"{summary.mean_cpu_percent:.0f}% mean, {summary.peak_cpu_percent:.0f}% peak "
                f"({summary.cores:g} usable cores)"),
        ("RAM", f"{summary.peak_memory_fraction:.0%} peak of "
                f"{summary.memory_total_bytes / GIB:.1f} GiB"),
    ]
    if summary.peak_process_rss_bytes is not None:
        rows.append(("Watched", f"{summary.peak_process_rss_bytes / GIB:.2f} GiB peak RSS, "
                                f"{(summary.mean_process_cpu_percent or 0) / 100:.2f} cores "
                                "mean CPU"))
    if summary.mean_runnable_threads is not None:
        rows.append(("Runnable", f"{summary.mean_runnable_threads:.1f} threads mean"))
    for gpu in summary.gpus:
        util = ("-" if gpu.mean_utilization_percent is None
                else f"{gpu.mean_utilization_percent:.0f}%")
        mem = "-" if gpu.peak_memory_fraction is None else f"{gpu.peak_memory_fraction:.0%}"
        rows.append((f"GPU {gpu.index}", f"{util} mean utilisation, {mem} peak memory"
                     + (f", {gpu.peak_temperature_c:.0f} C peak"
                        if gpu.peak_temperature_c is not None else "")))
    steps = summary.steps
    if steps.count:
        rows.append(("Steps", f"{steps.count}, data wait {steps.data_wait_s:.2f} s "
                              f"({steps.data_wait_fraction:.0%}), step {steps.step_s:.2f} s"))
    return rows


def print_report(timeline: Timeline, out: TextIO) -> None:
    summary = timeline.summary()
    print(key_values(summary_rows(summary)), file=out)
    for note in timeline.notes:
        print(f"Note      {note}", file=out)
    if timeline.skipped:
        print(f"Skipped   {timeline.skipped.describe()}", file=out)
        print("Partial   yes: the summary and diagnosis leave out what was skipped", file=out)
    diagnosis = diagnose(summary)
    print(f"\nDiagnosis: {diagnosis.sentence}", file=out)
    print(f"  evidence:  {diagnosis.evidence}", file=out)
    print(f"  change:    {diagnosis.suggestion}", file=out)
    for other in findings(summary)[1:]:
        print(f"  also:      {other.sentence}", file=out)


def report_json(loaded: Timeline, **extra: Any) -> dict[str, Any]:
    summary = loaded.summary()
    return {"version": JSON_VERSION, **extra, "summary": summary.to_dict(),
            "diagnosis": diagnose(summary).to_dict(),
            "findings": [d.to_dict() for d in findings(summary)],
            "notes": list(loaded.notes), "skipped": loaded.skipped.to_dict(),
            "partial": bool(loaded.skipped)}


def warn_skipped(path: str, skipped: Skipped, err: TextIO) -> None:
    """What reading ``path`` skipped, on stderr whatever the output format:
    a line per problem kept (``FILE:LINE: why``), then one saying the report
    is partial, with the counts (which cover the problems not listed)."""
    if not skipped:
        return
    for example in skipped.examples:
        print(f"autotune: warning: {example}", file=err)
    shown = len(skipped.examples)
    total = skipped.lines + skipped.records + skipped.fields
    more = f"; {total - shown} more not listed" if total > shown else ""
    counts = skipped.describe().split("; first: ", 1)[0]
    print(f"autotune: warning: {path}: the report is partial ({counts}{more})", file=err)


def _command(raw: Sequence[str]) -> list[str]:
    items = list(raw)
    return items[1:] if items[:1] == ["--"] else items


def cmd_monitor(args: argparse.Namespace) -> int:
    # With --json our stdout is the JSON report alone: the command's stdout
    # goes to our stderr (beside its own stderr), not into the JSON stream.
    result = run_monitored(_command(args.cmd), interval_s=args.interval, out_dir=args.out,
                           plot=not args.no_plot, stdout=_stderr_fd() if args.json else None)
    if args.json:
        print_json(report_json(result.timeline, exit_code=result.exit_code,
                               timeline=str(result.timeline_path),
                               plot=None if result.plot_path is None else str(result.plot_path)))
        return result.exit_code
    # stderr, like time(1): the command's own stdout stays clean for pipes.
    err = sys.stderr
    print(f"\nautotune monitor: command exited with {result.exit_code}", file=err)
    print_report(result.timeline, err)
    print(f"\ntimeline: {result.timeline_path}"
          + (f"\nplot:     {result.plot_path}" if result.plot_path else ""), file=err)
    return result.exit_code


def _stderr_fd() -> int:
    sys.stdout.flush()  # anything we printed stays before the command's output
    sys.stderr.flush()
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without one
        return 2


def cmd_daemon(args: argparse.Namespace) -> int:
    if args.action == "status":
        return cmd_status(args)
    if args.json:
        raise AutotuneError("--json is for 'autotune daemon status'; the daemon itself "
                            "writes its samples to --out as JSON lines")
    options = DaemonOptions(out=Path(args.out), interval_s=args.interval,
                            max_bytes=args.max_bytes, backups=args.backups, pid=args.pid,
                            coordinate=not args.no_coordinate,
                            socket=Path(args.socket) if args.socket else None, cores=args.cores)
    return run_daemon(options, announce=lambda line: print(line, file=sys.stderr, flush=True))


def cmd_report(args: argparse.Namespace) -> int:
    timeline = read_timeline(args.timeline)
    warn_skipped(args.timeline, timeline.skipped, sys.stderr)
    png = None
    if args.plot:
        try:
            # plot.plot_timeline, not an imported name: a test replaces it there.
            png = str(plot.plot_timeline(timeline, args.plot,
                                         title=f"autotune report {args.timeline}"))
        except OSError as exc:
            raise AutotuneError(f"--plot {args.plot}: cannot write it "
                                f"({exc.strerror or exc})") from None
    if args.json:
        print_json(report_json(timeline, timeline=args.timeline, plot=png))
        return 0
    print_report(timeline, sys.stdout)
    if png:
        print(f"\nplot: {png}")
    return 0
