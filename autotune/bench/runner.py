"""``autotune bench``: PyTorch defaults vs tuned (vs the best of the grid)
on a built-in workload, measured in one run on this machine.

1. the tuner searches, as ``autotune.apply`` would (no cache);
2. with ``grid=True``, every combination of the candidates is measured;
3. a **confirmation** round re-measures defaults, the tuner's winner and the
   grid's best back to back, ``rounds`` times, interleaved, so the three
   headline numbers share the machine's conditions (on a shared machine the
   load drifts between the search's trials).

Built on the same trial code as the tuner; nothing here is specific to
the CLI, so benchmarks/run_cpu.py and run_gpu.py call :func:`run_bench`.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from autotune.applying import resolve_device
from autotune.bench.grid import grid_configs, measure_grid
from autotune.bench.provenance import loadavg, utc_now
from autotune.bench.workloads import ReferenceWorkload, get_workload
from autotune.display import tables
from autotune.machine.detect import cpu_id, detect
from autotune.planner import make_plan
from autotune.plugin.context import Workload
from autotune.tuner.candidates import Config, baseline_config, searched_plugins
from autotune.tuner.options import SearchOptions, TrialOptions
from autotune.tuner.records import Trial
from autotune.tuner.report import TuningReport
from autotune.tuner.runner import TrialRunner, Workbench
from autotune.tuner.search import Search, search_groups
from autotune.tuner.state import Snapshot
from autotune.tuner.tuning import tune

log = logging.getLogger("autotune.tuner")


@dataclass(frozen=True)
class Headline:
    name: str
    label: str
    samples_per_s: float | None
    step_ms: float | None
    rates: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "samples_per_s": self.samples_per_s,
                "step_ms": self.step_ms, "rounds": list(self.rates)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Headline":
        return cls(data["name"], data["label"], data.get("samples_per_s"), data.get("step_ms"),
                   tuple(data.get("rounds", ())))


@dataclass(frozen=True)
class BenchResult:
    workload: str
    description: str
    device: str
    tuning: TuningReport
    grid: tuple[Trial, ...] = ()
    headlines: tuple[Headline, ...] = ()
    machine: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    #: When the run started (UTC, ISO 8601) and the 1-minute load average
    #: before and after it: a figure without them cannot be judged.
    date: str = ""
    loadavg_before: list[float] | None = None
    loadavg_after: list[float] | None = None

    def headline(self, name: str) -> Headline | None:
        return next((h for h in self.headlines if h.name == name), None)

    def ratio(self, name: str, over: str = "defaults") -> float | None:
        a, b = self.headline(name), self.headline(over)
        if not a or not b or not a.samples_per_s or not b.samples_per_s:
            return None
        return a.samples_per_s / b.samples_per_s

    def table(self) -> str:
        rows = []
        for h in self.headlines:
            rows.append([h.name, f"{h.samples_per_s:.1f}" if h.samples_per_s else "-",
                         f"{h.step_ms:.1f}" if h.step_ms else "-",
                         f"{self.ratio(h.name):.2f}x" if self.ratio(h.name) else "-", h.label])
        text = tables.table(rows, ["", "samples/s", "ms/step", "vs defaults", "settings"])
        tuned_vs_grid = self.ratio("tuned", "grid best")
        if tuned_vs_grid is not None:
            text += f"\ntuned reaches {tuned_vs_grid:.0%} of the grid's best"
        return text

    def header(self, command: str | None = None) -> str:
        """``# key: value`` lines for the top of a saved text result: the
        command (when the caller knows it), the date, the machine and the
        load, so a table in a file says where and how it was measured."""
        m = self.machine
        gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver') or '?'})"
                         for g in m.get("gpus", [])) or "none"
        lines = [f"command: {command}"] if command else []
        lines += [
            f"date: {self.date or '?'}",
            f"cpu: {m.get('cpu', '?')}{_cpu_numbers(m.get('cpu_id'))}, "
            f"{m.get('usable_cores', '?')} usable cores, flags "
            f"{' '.join(m.get('cpu_flags', [])) or 'none'}",
            f"gpu: {gpus}; CUDA {m.get('cuda') or 'none'}; device used {self.device}",
            f"torch {m.get('torch', '?')}, python {m.get('python', '?')}, {m.get('os', '?')}",
            f"1-min load average before {_load(self.loadavg_before)}, "
            f"after {_load(self.loadavg_after)}; run took {self.wall_s:.1f} s",
        ]
        return "\n".join(f"# {line}" for line in lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload, "description": self.description, "device": self.device,
            "headlines": [h.to_dict() for h in self.headlines],
            "tuned_vs_defaults": self.ratio("tuned"),
            "grid_best_vs_defaults": self.ratio("grid best"),
            "tuned_vs_grid_best": self.ratio("tuned", "grid best"),
            "tuning": self.tuning.to_dict(),
            "grid": [t.to_dict() for t in self.grid],
            "machine": self.machine, "wall_s": self.wall_s, "date": self.date,
            "loadavg_before": self.loadavg_before, "loadavg_after": self.loadavg_after,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchResult":
        """Read back :meth:`to_dict` (e.g. to plot a committed result again)."""
        return cls(data["workload"], data.get("description", ""), data.get("device", ""),
                   TuningReport.from_dict(data["tuning"]),
                   tuple(Trial.from_dict(t) for t in data.get("grid", ())),
                   tuple(Headline.from_dict(h) for h in data.get("headlines", ())),
                   dict(data.get("machine", {})), float(data.get("wall_s", 0.0)),
                   data.get("date", ""), data.get("loadavg_before"), data.get("loadavg_after"))


def _load(value: list[float] | None) -> str:
    return "-" if not value else f"{value[0]:.2f}"


def _cpu_numbers(numbers: Mapping[str, str] | None) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in numbers.items())})" if numbers else ""


def machine_facts() -> dict[str, Any]:
    """The machine a figure was measured on, as :func:`autotune.detect`
    reports it: CPU model and ISA flags (avx2, avx512*, amx*), cores,
    memory, each GPU's name and driver, the CUDA build, torch and Python.
    The one description every benchmark result records. ``cpu_id`` adds
    /proc/cpuinfo's family, model and stepping numbers: a VM may name its
    CPU only "AMD EPYC", and they still tell one generation from another."""
    hardware = detect()
    cuda_ran = hardware.cuda_available
    return {"cpu": hardware.cpu.brand, "cpu_id": cpu_id() or None, "vendor": hardware.cpu.vendor,
            "arch": hardware.cpu.arch, "cpu_flags": list(hardware.cpu.flags),
            "has_bf16": hardware.cpu.has_bf16,
            "physical_cores": hardware.cpu.physical_cores,
            "logical_cores": hardware.cpu.logical_cores,
            "usable_cores": hardware.cpu.usable_cores,
            "memory_gb": round(hardware.memory.total_gb, 1),
            "gpus": [{"name": g.name, "driver": g.driver_version,
                      "memory_gb": round(g.memory_gb, 1),
                      "compute_capability": ".".join(map(str, g.compute_capability))}
                     for g in hardware.gpus],
            "cuda": hardware.cuda_version or None, "cuda_available": cuda_ran,
            "cudnn": torch.backends.cudnn.version() if cuda_ran else None,
            "torch": hardware.torch_version or torch.__version__,
            "python": platform.python_version(), "os": hardware.os,
            "fingerprint": hardware.fingerprint, "notes": list(hardware.notes)}


def _confirm(runner: TrialRunner, contenders: list[tuple[str, Config]], rounds: int) -> list[Headline]:
    rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    steps: dict[str, list[float]] = {name: [] for name, _ in contenders}
    # One measurement per distinct configuration and round: when the tuner
    # picked the grid's best (or the defaults), they share their numbers.
    first: dict[str, str] = {}
    for name, config in contenders:
        first.setdefault(config.key(), name)
    for _ in range(rounds):
        for name, config in contenders:
            if first[config.key()] != name:
                continue
            trial = runner.measure(config, f"confirm {name}", force=True)
            if trial.ok and trial.samples_per_s and trial.step_ms:
                rates[name].append(trial.samples_per_s)
                steps[name].append(trial.step_ms)
    baseline = runner.baseline
    out = []
    for name, config in contenders:
        source = first[config.key()]
        out.append(Headline(name, config.describe(baseline),
                            statistics.median(rates[source]) if rates[source] else None,
                            statistics.median(steps[source]) if steps[source] else None,
                            tuple(rates[source])))
    return out


def run_bench(workload: str | ReferenceWorkload, *, budget_s: float | None = 300.0, grid: bool = False,
              rounds: int = 2, device: str | None = None, seed: int = 0,
              trial: TrialOptions | None = None, progress: bool = True) -> BenchResult:
    """Tune ``workload`` (a name from :data:`autotune.bench.workloads.WORKLOADS`
    or a :class:`~autotune.bench.workloads.ReferenceWorkload`) and measure
    defaults vs tuned (vs the grid's best)."""
    started = time.perf_counter()
    date, load_before = utc_now(), loadavg()
    machine = machine_facts()
    spec = get_workload(workload) if isinstance(workload, str) else workload
    model, loader, optimizer = spec.build(seed)
    target = resolve_device(device)
    model.to(target)
    # Every plugin on: what changes training is off unless asked for, so the
    # baseline is plain PyTorch.
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer))
    options = SearchOptions(trial=trial or TrialOptions(chunk_s=1.0))
    result = tune(model, loader, optimizer, spec.loss_fn, planned.plan, context=planned.context,
                  manager=planned.manager, device=target, budget_s=budget_s, cache=False,
                  options=options, progress=progress)
    if result.report.interrupted:
        raise KeyboardInterrupt  # Ctrl-C during the search: the bench stops, no headline
    baseline = result.baseline
    context = replace(planned.context, workload=replace(planned.context.workload, loader=loader))
    bench = Workbench(model, loader, optimizer, spec.loss_fn, planned.plan, context,
                      planned.manager, target, planned.manager.knobs(context, planned.plan))
    snapshot = Snapshot.capture(model, optimizer, loader)
    runner = TrialRunner(bench, snapshot, baseline, options=options.trial, progress=progress)
    grid_trials: list[Trial] = []
    try:
        contenders = [("defaults", baseline),
                      ("tuned", result.winner if result.winner is not None else baseline)]
        if grid:
            configs = grid_configs(Search(runner, options))
            grid_trials = measure_grid(runner, configs)
            measured = [(c, t) for c, t in zip(configs, grid_trials) if t.ok]
            if measured:
                best_config, _ = max(measured, key=lambda ct: ct[1].samples_per_s or 0.0)
                contenders.append(("grid best", best_config))
        headlines = _confirm(runner, contenders, rounds) if rounds > 0 else []
    finally:
        snapshot.restore()
        runner.close()
    return BenchResult(spec.name, spec.description, str(target), result.report,
                       tuple(grid_trials), tuple(headlines), machine,
                       time.perf_counter() - started, date, load_before, loadavg())


def confirm_configs(workload: str | ReferenceWorkload,
                    contenders: list[tuple[str, Mapping[str, Mapping[str, Any]]]], *,
                    rounds: int = 3, device: str | None = None, seed: int = 0,
                    trial: TrialOptions | None = None, progress: bool = False,
                    grid: bool = False) -> list[Headline]:
    """Measure configurations (``{plugin: {key: value}}``, e.g. the winners
    of two searches with different budgets) back to back on a fresh build of
    ``workload``, interleaved, ``rounds`` times: medians that share the
    machine's conditions. "defaults" is always measured first. With
    ``grid=True`` every configuration of the exhaustive grid is measured
    first, and the fastest of it competes last as "grid best" (use
    :func:`grid_and_confirm` to also get the grid's trials)."""
    return grid_and_confirm(workload, contenders, rounds=rounds, device=device, seed=seed,
                            trial=trial, progress=progress, grid=grid)[1]


def grid_and_confirm(workload: str | ReferenceWorkload,
                     contenders: list[tuple[str, Mapping[str, Mapping[str, Any]]]], *,
                     rounds: int = 3, device: str | None = None, seed: int = 0,
                     trial: TrialOptions | None = None, progress: bool = False,
                     grid: bool = True) -> tuple[list[Trial], list[Headline]]:
    """:func:`confirm_configs`, with the grid's trials (empty without ``grid``)."""
    spec = get_workload(workload) if isinstance(workload, str) else workload
    model, loader, optimizer = spec.build(seed)
    target = resolve_device(device)
    model.to(target)
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer))
    context = replace(planned.context, workload=replace(planned.context.workload, loader=loader))
    knobs = planned.manager.knobs(context, planned.plan)
    groups = search_groups(planned.plan, context, target.type, knobs,
                           manager=planned.manager)
    baseline = baseline_config(planned.plan, knobs, searched_plugins(knobs, groups))
    bench = Workbench(model, loader, optimizer, spec.loss_fn, planned.plan, context,
                      planned.manager, target, knobs)
    snapshot = Snapshot.capture(model, optimizer, loader)
    options = trial or TrialOptions(chunk_s=1.0)
    runner = TrialRunner(bench, snapshot, baseline, options=options, progress=progress)
    grid_trials: list[Trial] = []
    try:
        configs = [("defaults", baseline)] + [(name, Config(values)) for name, values in contenders]
        if grid:
            everything = grid_configs(Search(runner, SearchOptions(trial=options)))
            grid_trials = measure_grid(runner, everything)
            measured = [(c, t) for c, t in zip(everything, grid_trials) if t.ok]
            if measured:
                configs.append(("grid best", max(measured, key=lambda ct: ct[1].samples_per_s
                                                 or 0.0)[0]))
        return grid_trials, _confirm(runner, configs, rounds)
    finally:
        snapshot.restore()
        runner.close()


def short_label(changes: Mapping[str, Mapping[str, Any]], width: int = 64) -> str:
    """A bar label that keeps what tells trials apart: plugin prefixes
    dropped (for example ``dtype=bf16``, but ``compile=default``), switches
    by name (for example ``channels_last``), wrapped onto two lines rather
    than cut, since trials often differ only at the end."""
    parts = []
    for plugin, values in changes.items():
        for key, value in values.items():
            if key == "enabled":
                parts.append(plugin if value else f"no {plugin}")
            elif key == "mode":  # "mode=default" alone would not say of what
                parts.append(f"{plugin}={value}")
            elif value is True:
                parts.append(key)
            elif value is False:
                parts.append(f"no {key}")
            else:
                parts.append(f"{key}={value}")
    text = ", ".join(parts) or "PyTorch defaults"
    lines = textwrap.wrap(text, width)
    return "\n".join(lines[:2]) + (" ..." if len(lines) > 2 else "")


def plot_bench(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Bars of samples/s: every search trial, the grid, and the headlines.
    Object API on the Agg canvas (never pyplot): headless, nothing left open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [("search trials", [t for t in result.tuning.trials if t.ok])]
    if result.grid:
        panels.append(("grid", [t for t in result.grid if t.ok]))
    # Each panel tall enough for its bars' labels to stay readable.
    heights = [1.0 + 0.3 * max(len(result.headlines), 1)] + [
        1.0 + 0.32 * max(len(trials), 1) for _, trials in panels]
    fig = Figure(figsize=(12, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels) + 1, 1, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    names = [h.name for h in result.headlines]
    values = [h.samples_per_s or 0.0 for h in result.headlines]
    axes[0].barh(names, values, color=["tab:gray", "tab:green", "tab:blue"][: len(names)])
    for y, (v, h) in enumerate(zip(values, result.headlines)):
        ratio = result.ratio(h.name)
        axes[0].text(v, y, f" {v:.1f}" + (f" ({ratio:.2f}x)" if ratio else ""), va="center")
    axes[0].set(title=f"{result.workload} on {result.device}: confirmation round",
                xlabel="samples/s")
    axes[0].invert_yaxis()
    for ax, (title, trials) in zip(axes[1:], panels):
        labels = [f"#{t.index} {short_label(t.changes)}" for t in trials]
        ax.barh(labels, [t.samples_per_s or 0.0 for t in trials], color="tab:orange")
        ax.set(title=title, xlabel="samples/s")
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    fig.savefig(path, dpi=100)
    return path
