"""A PNG of a timeline: CPU, memory, runnable threads, GPUs and step times
on one shared time axis.

Like ``History.plot``, this uses matplotlib's object API on the Agg canvas,
never pyplot: no GUI backend is touched (works headless), a caller's pyplot
backend is left alone, and no figure enters pyplot's global list, so none
can be left open however often a long run re-plots.
"""

from __future__ import annotations

import os
from pathlib import Path

from autotune.machine.hardware import GIB
from autotune.telemetry.timeline import Timeline


def plot_timeline(timeline: Timeline, path: str | os.PathLike[str],
                  title: str | None = None) -> Path:
    """Write the plot to ``path`` (parents created); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples, steps = timeline.samples, timeline.steps
    origin = min([s.time for s in samples] + [s.time for s in steps], default=0.0)
    gpus = sorted({g.index for s in samples for g in s.gpus})
    rows = 3 + (1 if gpus else 0) + (1 if steps else 0)
    fig = Figure(figsize=(9, 2.1 * rows))
    FigureCanvasAgg(fig)
    try:
        axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
        t = [s.time - origin for s in samples]
        ax = axes[0]
        ax.plot(t, [s.cpu_percent for s in samples], label="machine CPU %")
        if any(s.process_cpu_percent is not None for s in samples):
            cores = samples[-1].cores if samples else 1
            ax.plot(t, [None if s.process_cpu_percent is None else s.process_cpu_percent / cores
                        for s in samples], label="watched processes, % of usable cores")
        ax.set_ylabel("CPU %")
        ax.set_ylim(0, 105)
        ax.legend(loc="upper right", fontsize=8)

        ax = axes[1]
        total = samples[-1].memory_total_bytes / GIB if samples else 0.0
        ax.plot(t, [s.memory_used_bytes / GIB for s in samples],
                label=f"machine RAM used (of {total:.1f} GiB)")
        if any(s.process_rss_bytes is not None for s in samples):
            ax.plot(t, [None if s.process_rss_bytes is None else s.process_rss_bytes / GIB
                        for s in samples], label="watched processes RSS")
        ax.set_ylabel("GiB")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper right", fontsize=8)

        ax = axes[2]
        ax.plot(t, [s.runnable_threads for s in samples], label="runnable threads")
        ax.plot(t, [s.cores for s in samples], color="grey", linestyle=":", label="usable cores")
        ax.set_ylabel("threads")
        ax.legend(loc="upper right", fontsize=8)

        row = 3
        if gpus:
            ax = axes[row]
            row += 1
            for index in gpus:
                pairs = [(s.time - origin, g) for s in samples for g in s.gpus if g.index == index]
                ax.plot([p[0] for p in pairs], [g.utilization_percent for _, g in pairs],
                        label=f"GPU {index} util %")
                ax.plot([p[0] for p in pairs],
                        [None if g.memory_fraction is None else 100 * g.memory_fraction
                         for _, g in pairs], linestyle="--", label=f"GPU {index} memory %")
            ax.set_ylabel("GPU %")
            ax.set_ylim(0, 105)
            ax.legend(loc="upper right", fontsize=8)
        if steps:
            ax = axes[row]
            st = [s.time - origin for s in steps]
            ax.plot(st, [1000 * s.step_s for s in steps], ".", markersize=3, label="step ms")
            ax.plot(st, [1000 * s.data_wait_s for s in steps], ".", markersize=3,
                    label="data wait ms")
            ax.set_ylabel("ms per step")
            ax.legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("seconds since start")
        fig.suptitle(title or "autotune monitor", fontsize=11)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
        return out
    finally:
        fig.clear()  # drop the artists now; a long-running daemon plots again
