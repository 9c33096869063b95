"""Shared by the benchmark scripts: what every result file records
(:func:`provenance`), targets (``--target NAME=VALUE``, :func:`report_targets`),
waiting for a quiet machine, and -- for run_cpu.py and run_gpu.py -- one
workload through ``autotune.bench.runner.run_bench`` (:func:`run_one`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

# The library's own (torch-free, so every script's --help stays light);
# re-exported for the scripts, which import them from here.
from autotune.bench.provenance import loadavg, utc_now

#: The committed results. Scripts write here only when asked (--out
#: benchmarks/results); by default they write to DEFAULT_OUT, which git ignores.
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runs" / "benchmarks"
REPO = Path(__file__).resolve().parents[1]

#: The keys :func:`provenance` puts at the top of every result file.
PROVENANCE_KEYS = ("command", "cwd", "executable", "commit", "date", "machine",
                   "loadavg_before", "loadavg_after", "foreign_cpu_share")


def _git_commit() -> dict[str, Any] | None:
    """The checkout's commit and whether tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": head, "modified_files": bool(dirty)}


def provenance(argv: Sequence[str] | None = None, *, date: str | None = None,
               load_before: list[float] | None = None,
               foreign_cpu_share: float | None = None) -> dict[str, Any]:
    """What every result file records, beside its figures, at its top level
    (:data:`PROVENANCE_KEYS`): the command (``argv`` as ``sys.argv`` spells
    it, default ``sys.argv``; the script's path relative to the checkout,
    as the README's commands are run from its root, plus the working
    directory and the interpreter), the checkout's commit, the date the run
    started (UTC, ISO 8601; default now), the machine as ``autotune.detect()``
    reports it (CPU model and ISA flags, GPUs with driver, CUDA build,
    torch: :func:`autotune.bench.runner.machine_facts`), the load averages
    before (``load_before``; default now) and after (now), and the share of
    the CPU other processes used meanwhile where the harness measured it
    (None where it did not).

    Call it when the run is over, with what was read at its start."""
    from autotune.bench.runner import machine_facts

    argv = list(sys.argv if argv is None else argv)
    if argv:
        script = Path(argv[0]).resolve()
        if script.is_relative_to(REPO):
            argv[0] = str(script.relative_to(REPO))
    return {
        "command": shlex.join(["python", *argv]),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "commit": _git_commit(),
        "date": date or utc_now(),
        "machine": machine_facts(),
        "loadavg_before": load_before if load_before is not None else loadavg(),
        "loadavg_after": loadavg(),
        "foreign_cpu_share": foreign_cpu_share,
    }


# -- targets ----------------------------------------------------------------------------------


def add_target_option(parser: argparse.ArgumentParser, targets: Mapping[str, str]) -> None:
    """``--target NAME=VALUE`` (repeatable) to change a script's target;
    ``targets`` names each one and says what it means (shown in --help)."""
    listed = "; ".join(f"{name}: {what}" for name, what in targets.items()).replace("%", "%%")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                        help=f"change a target (repeatable). {listed}")


def parse_targets(parser: argparse.ArgumentParser, items: Sequence[str],
                  names: Sequence[str]) -> dict[str, float]:
    """The ``--target NAME=VALUE`` items as ``{NAME: VALUE}``, NAME one of ``names``."""
    chosen: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            chosen[name] = float(value)
        except ValueError:
            name = ""
        if name not in names:
            parser.error(f"--target {item!r}: use NAME=VALUE, NAME one of {', '.join(names)}")
    return chosen


def check(measured: float | None, target: float, *, at_most: bool = False) -> dict[str, Any]:
    """One target as result files record it: met when ``measured`` is at
    least ``target`` (at most, with ``at_most``); a missing figure misses."""
    met = measured is not None and (measured <= target if at_most else measured >= target)
    return {"target": target, "rule": "<=" if at_most else ">=", "measured": measured,
            "met": bool(met)}


def report_targets(checks: Mapping[str, Mapping[str, Any]], *, summary: bool = True) -> int:
    """Print each target with its figure (and, with ``summary``, a line
    listing the missed ones); the exit code: 1 when one is missed."""
    missed = []
    for name, c in checks.items():
        shown = "-" if c["measured"] is None else f"{c['measured']:.4g}"
        print(f"  target {name} {c.get('rule', '>=')} {c['target']:g}: {shown} "
              f"({'met' if c['met'] else 'NOT met'})", flush=True)
        if not c["met"]:
            missed.append(f"{name} {c.get('rule', '>=')} {c['target']:g} (measured {shown})")
    if missed and summary:
        print("targets missed: " + "; ".join(missed), flush=True)
    return 1 if missed else 0


def busy_share(seconds: float = 5.0) -> float:
    """Share of all cores busy over the next ``seconds`` (this process idle)."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100.0


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 20.0,
                   max_busy: float = 0.1) -> list[float] | None:
    """Wait until the 1-minute load average is below ``max_load`` and the
    cores are (nearly) idle right now -- the load average lags by a minute --
    at most ``max_wait_s``: other jobs on a shared machine skew the numbers."""
    if max_wait_s <= 0:  # measure whatever the load: nothing to wait for
        return loadavg()
    deadline = time.monotonic() + max_wait_s
    while True:
        load = loadavg()
        busy = busy_share()
        if (load is None or load[0] < max_load) and busy < max_busy:
            return load
        if time.monotonic() >= deadline:
            print(f"  machine still busy after {max_wait_s:.0f} s (load {load and load[0]:.2f}, "
                  f"{busy:.0%} busy); measuring anyway, the load is recorded", flush=True)
            return load
        print(f"  waiting for a quiet machine: 1-min load {load and load[0]:.2f}, "
              f"{busy:.0%} of the cores busy", flush=True)
        time.sleep(poll_s)


def _own_cpu_s() -> float:
    """CPU seconds of this process and its children (loader workers,
    compile workers), alive or already reaped."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.Error:  # it exited between listing and reading
            pass
    return total


def _busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Disturbance:
    """How much CPU other processes used while a benchmark ran: the share of
    all cores' time that was busy but not ours. On a shared machine this is
    the difference between a measurement and noise."""

    def __init__(self) -> None:
        import psutil

        self.cores = psutil.cpu_count() or 1
        self.start = time.monotonic()
        self.busy, self.own = _busy_cpu_s(), _own_cpu_s()

    def share(self) -> float:
        wall = max(time.monotonic() - self.start, 1e-9)
        foreign = (_busy_cpu_s() - self.busy) - (_own_cpu_s() - self.own)
        return max(0.0, foreign / (wall * self.cores))


def cold_env(folder: Path) -> dict[str, str]:
    """The environment of a child process that starts as a first call on a
    new machine would: an empty tuning cache and an empty torch compiler
    (inductor) cache, both under ``folder``, and no progress bars."""
    return {**os.environ, "AUTOTUNE_CACHE_DIR": str(folder / "autotune"),
            "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "AUTOTUNE_PROGRESS": "0"}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_one(workload: Any, name: str, prefix: str, *, budget_s: float, grid: bool, rounds: int,
            chunk_s: float, device: str | None, max_load: float, max_wait_s: float,
            targets: dict[str, float], out_dir: Path, attempts: int = 3,
            max_foreign: float = 0.05, argv: Sequence[str] | None = None,
            file_name: str | None = None) -> dict[str, Any]:
    """Run one workload; when other processes used more than ``max_foreign``
    of the CPU meanwhile, run it again (up to ``attempts``), keeping the
    least disturbed run. Writes ``<out_dir>/<file_name>.json`` and ``.png``
    (default file name ``<prefix>_<name>``); ``argv`` is the command line
    recorded (default ``sys.argv``). Each target is a minimum."""
    from autotune.bench.runner import plot_bench, run_bench
    from autotune.tuner import TrialOptions

    print(f"== {name}", flush=True)
    best = None
    for attempt in range(1, attempts + 1):
        load_before = wait_for_quiet(max_load, max_wait_s)
        started = utc_now()
        watch = Disturbance()
        result = run_bench(workload, budget_s=budget_s, grid=grid, rounds=rounds, device=device,
                           trial=TrialOptions(chunk_s=chunk_s), progress=False)
        share = watch.share()
        print(f"  attempt {attempt}: other processes used {share:.1%} of the CPU", flush=True)
        if best is None or share < best[0]:
            best = (share, load_before, started, result)
        if share <= max_foreign:
            break
    assert best is not None
    share, load_before, started, result = best
    data = result.to_dict()
    achieved = {"tuned_vs_defaults": data["tuned_vs_defaults"],
                "tuned_vs_grid_best": data["tuned_vs_grid_best"]}
    checks = {key: check(achieved.get(key), wanted) for key, wanted in targets.items()}
    record = {
        # foreign_cpu_share: of all cores' time, what other processes used
        # during the run (the least disturbed of the attempts is kept).
        **provenance(argv, date=started, load_before=load_before, foreign_cpu_share=share),
        "attempts": attempt,
        "targets": checks,
        "result": data,
    }
    stem = file_name or f"{prefix}_{name}"
    json_path = out_dir / f"{stem}.json"
    write_json(json_path, record)
    plot_bench(result, out_dir / f"{stem}.png")
    print(result.table(), flush=True)
    report_targets(checks, summary=False)
    print(f"  wrote {json_path}", flush=True)
    return record
