"""Name the bottleneck of a run from its timeline, in one sentence, with the
evidence and the plugin setting to change.

Checks run in order of how directly they are measured; :func:`findings`
returns every one that fires, :func:`diagnose` the first (or a
"no bottleneck found" diagnosis). The thresholds are module constants so
the docs and tests can name them.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.machine.hardware import GIB
from autotune.telemetry.timeline import Summary, Timeline

#: RAM or GPU memory above this share of the total is memory-bound.
MEMORY_BOUND_FRACTION = 0.90
#: The loop waiting for data this share of (wait + step) time is input-bound.
INPUT_BOUND_WAIT_FRACTION = 0.30
#: Below this share of data wait, the step itself is the cost.
COMPUTE_BOUND_WAIT_FRACTION = 0.10
#: A GPU busier than this on average is saturated; below IDLE it is starved.
GPU_BUSY_PERCENT = 80.0
GPU_IDLE_PERCENT = 50.0
#: More runnable threads than cores times this, on average, is oversubscribed.
OVERSUBSCRIBED_RATIO = 1.25
#: A watched process using this share of the usable cores is CPU-bound.
CPU_BUSY_FRACTION = 0.80

KINDS = ("memory-bound", "input-bound", "cpu-oversubscribed", "compute-bound", "none")


@dataclass(frozen=True)
class Diagnosis:
    #: One of :data:`KINDS`.
    kind: str
    #: The one-sentence verdict people read.
    sentence: str
    #: The numbers behind it.
    evidence: str
    #: The plugin setting (or action) to change.
    suggestion: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "sentence": self.sentence, "evidence": self.evidence,
                "suggestion": self.suggestion}

    def __str__(self) -> str:
        return self.sentence


def _memory(summary: Summary) -> list[Diagnosis]:
    out = []
    if summary.peak_memory_fraction > MEMORY_BOUND_FRACTION:
        total = summary.memory_total_bytes / GIB
        rss = summary.peak_process_rss_bytes
        evidence = (f"RAM peaked at {summary.peak_memory_fraction:.0%} of {total:.1f} GiB"
                    + (f"; the watched processes peaked at {rss / GIB:.1f} GiB RSS" if rss else ""))
        suggestion = ("lower the batch size and raise accumulation.steps to keep the effective "
                      "batch, or lower dataloader.num_workers / prefetch_factor")
        out.append(Diagnosis("memory-bound", f"RAM {summary.peak_memory_fraction:.0%} used at "
                             f"peak: memory-bound; {suggestion.split(',')[0]}", evidence,
                             suggestion))
    for gpu in summary.gpus:
        if gpu.peak_memory_fraction is not None and gpu.peak_memory_fraction > MEMORY_BOUND_FRACTION:
            suggestion = ("set mixed_precision.dtype=bf16 (or fp16), or lower the batch size "
                          "and raise accumulation.steps")
            out.append(Diagnosis(
                "memory-bound", f"GPU {gpu.index} memory {gpu.peak_memory_fraction:.0%} used "
                f"at peak: memory-bound; {suggestion.split(',')[0]}",
                f"GPU {gpu.index} memory peaked at {gpu.peak_memory_fraction:.0%} of its total",
                suggestion))
    return out


def _input(summary: Summary) -> list[Diagnosis]:
    steps = summary.steps
    suggestion = ("raise dataloader.num_workers (and dataloader.prefetch_factor), or make the "
                  "dataset's __getitem__ cheaper")
    if steps.count:
        wait = steps.data_wait_fraction
        if wait >= INPUT_BOUND_WAIT_FRACTION:
            return [Diagnosis(
                "input-bound",
                f"data wait {wait:.0%} of step time: input-bound; raise dataloader.num_workers",
                f"the loop waited {steps.data_wait_s:.2f} s for data and computed "
                f"{steps.step_s:.2f} s over {steps.count} steps",
                suggestion)]
        return []
    idle = [g for g in summary.gpus if g.mean_utilization_percent is not None
            and g.mean_utilization_percent < GPU_IDLE_PERCENT]
    if idle:  # no step timings (a plain command): a starved GPU is the evidence
        gpu = idle[0]
        return [Diagnosis(
            "input-bound",
            f"GPU {gpu.index} busy only {gpu.mean_utilization_percent:.0f}% on average: likely "
            "input-bound; raise dataloader.num_workers",
            f"GPU {gpu.index} mean utilisation {gpu.mean_utilization_percent:.0f}% over "
            f"{summary.duration_s:.0f} s (no step timings: pass monitor=TrainingMonitor() to "
            "Engine.fit to measure data wait)", suggestion)]
    return []


def _oversubscribed(summary: Summary) -> list[Diagnosis]:
    runnable = summary.mean_runnable_threads
    if runnable is None or summary.cores <= 0 or runnable <= summary.cores * OVERSUBSCRIBED_RATIO:
        return []
    return [Diagnosis(
        "cpu-oversubscribed",
        f"{runnable:.1f} runnable threads on {summary.cores:g} cores on average: CPU "
        "oversubscribed; lower threads.intra_op",
        f"mean {runnable:.1f} threads ready to run (machine-wide, /proc/loadavg) for "
        f"{summary.cores:g} usable cores; CPU {summary.mean_cpu_percent:.0f}% busy",
        "lower threads.intra_op (and dataloader.num_workers) so threads x processes fit the "
        "cores, or stop other jobs on this machine")]


def _compute(summary: Summary) -> list[Diagnosis]:
    steps = summary.steps
    suggestion = ("set mixed_precision.dtype=bf16 where supported, or compile.mode=default; "
                  "more data workers will not help")
    busy_gpus = [g for g in summary.gpus if g.mean_utilization_percent is not None
                 and g.mean_utilization_percent >= GPU_BUSY_PERCENT]
    process_cores = (summary.mean_process_cpu_percent or 0.0) / 100.0
    cpu_busy = summary.cores > 0 and process_cores >= CPU_BUSY_FRACTION * summary.cores
    hardware = (f"GPU {busy_gpus[0].index} busy {busy_gpus[0].mean_utilization_percent:.0f}%"
                if busy_gpus else
                f"the watched processes used {process_cores:.1f} of {summary.cores:g} cores")
    if steps.count and steps.data_wait_fraction < COMPUTE_BOUND_WAIT_FRACTION:
        share = 1.0 - steps.data_wait_fraction
        return [Diagnosis(
            "compute-bound",
            f"the step takes {share:.0%} of loop time: compute-bound; try "
            "mixed_precision.dtype=bf16 or compile.mode=default",
            f"data wait {steps.data_wait_fraction:.0%} over {steps.count} steps; {hardware}",
            suggestion)]
    if not steps.count and (busy_gpus or (cpu_busy and not summary.gpus)):
        return [Diagnosis(
            "compute-bound",
            f"{hardware}: compute-bound; try mixed_precision.dtype=bf16 or compile.mode=default",
            f"{hardware} on average over {summary.duration_s:.0f} s (no step timings)",
            suggestion)]
    return []


def findings(timeline: Timeline | Summary) -> list[Diagnosis]:
    """Every bottleneck the timeline shows, most direct evidence first."""
    summary = timeline.summary() if isinstance(timeline, Timeline) else timeline
    return _memory(summary) + _input(summary) + _oversubscribed(summary) + _compute(summary)


def diagnose(timeline: Timeline | Summary) -> Diagnosis:
    """The bottleneck, or kind ``"none"`` with what was seen."""
    summary = timeline.summary() if isinstance(timeline, Timeline) else timeline
    found = findings(summary)
    if found:
        return found[0]
    steps = summary.steps
    seen = (f"CPU {summary.mean_cpu_percent:.0f}% busy on average, RAM peak "
            f"{summary.peak_memory_fraction:.0%}"
            + (f", data wait {steps.data_wait_fraction:.0%} of {steps.count} steps"
               if steps.count else ", no step timings"))
    hint = ("" if steps.count else "; for data-wait timings train with "
            "Engine.fit(monitor=TrainingMonitor())")
    return Diagnosis("none", f"no clear bottleneck: {seen}", seen,
                     "nothing to change from this evidence" + hint)
