"""Shared by run_cpu.py and run_gpu.py: wait for a quiet machine, run one
workload through ``autotune.tuner.bench.run_bench``, and write the result
(JSON with the command, the machine and its load, plus a plot)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The committed results. Scripts write here only when asked (--out
#: benchmarks/results); by default they write to DEFAULT_OUT, which git ignores.
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runs" / "benchmarks"


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def busy_share(seconds: float = 5.0) -> float:
    """Share of all cores busy over the next ``seconds`` (this process idle)."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100.0


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 20.0,
                   max_busy: float = 0.1) -> list[float] | None:
    """Wait until the 1-minute load average is below ``max_load`` and the
    cores are (nearly) idle right now -- the load average lags by a minute --
    at most ``max_wait_s``: other jobs on a shared machine skew the numbers."""
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


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_one(workload: Any, name: str, prefix: str, *, budget_s: float, grid: bool, rounds: int,
            chunk_s: float, device: str | None, max_load: float, max_wait_s: float,
            targets: dict[str, float], out_dir: Path, attempts: int = 3,
            max_foreign: float = 0.05) -> dict[str, Any]:
    """Run one workload; when other processes used more than ``max_foreign``
    of the CPU meanwhile, run it again (up to ``attempts``), keeping the
    least disturbed run."""
    from autotune.tuner.bench import plot_bench, run_bench
    from autotune.tuner.trial import TrialOptions

    print(f"== {name}", flush=True)
    best = None
    for attempt in range(1, attempts + 1):
        load_before = wait_for_quiet(max_load, max_wait_s)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
    checks = {}
    for key, wanted in targets.items():
        value = achieved.get(key)
        checks[key] = {"target": wanted, "measured": value,
                       "met": value is not None and value >= wanted}
    record = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "started": started,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        # Share of all cores' time used by other processes during the run
        # (the least disturbed of the attempts is kept).
        "foreign_cpu_share": share,
        "targets": checks,
        "result": data,
    }
    json_path = out_dir / f"{prefix}_{name}.json"
    write_json(json_path, record)
    plot_bench(result, out_dir / f"{prefix}_{name}.png")
    print(result.table(), flush=True)
    for key, check in checks.items():
        measured = "-" if check["measured"] is None else f"{check['measured']:.2f}"
        print(f"  target {key} >= {check['target']}: {measured} "
              f"({'met' if check['met'] else 'NOT met'})", flush=True)
    print(f"  wrote {json_path}", flush=True)
    return record
