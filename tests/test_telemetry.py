"""The sampler, the timeline file format, the diagnosis rules and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autotune.telemetry import (Diagnosis, Sample, Sampler, StepRecord, TelemetryError, Timeline,
                                diagnose, findings, read_timeline)
from autotune.telemetry.plot import plot_timeline
from autotune.telemetry.sampler import GPUSample
from autotune.telemetry.jsonl import open_append, sample_record, step_record, write_line

GIB = 1024**3


def nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:  # noqa: BLE001
        return False


def test_sampler_watches_a_process_tree_and_keeps_a_bounded_ring() -> None:
    # A real parent with a real child: the tree's process count and RSS cover both.
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(30)']); time.sleep(30)"])
    try:
        sampler = Sampler(0.05, pid=parent.pid, capacity=3)
        for _ in range(60):  # until the child has started
            sample = sampler.sample_once()
            if (sample.process_count or 0) >= 2:
                break
        assert sample.process_count == 2
        assert sample.process_rss_bytes > 2 * 1024 * 1024
        assert sample.process_threads >= 2
        assert len(sample.cpu_per_core) == os.cpu_count()
        assert 0 < sample.memory_used_bytes < sample.memory_total_bytes
        for _ in range(5):
            sampler.sample_once()
        assert len(sampler.samples()) == 3  # the ring dropped the oldest
    finally:
        parent.kill()
        parent.wait()
    sampler.close()


def test_sampler_thread_takes_samples_and_stops() -> None:
    import time

    sampler = Sampler(0.05).start()
    deadline = time.monotonic() + 30  # a guard against a hang, not a speed check
    while len(sampler.samples()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the thread's own sample, however busy the machine
    sampler.close()
    count = len(sampler.samples())
    assert count >= 3  # one at start, at least one on the thread, one at stop
    assert sampler._thread is None
    times = [s.time for s in sampler.samples()]
    assert times == sorted(times)


@pytest.mark.skipif(nvml_available(), reason="NVML works here; this checks the no-NVML path")
def test_no_nvml_means_a_note_and_no_gpu_fields() -> None:
    sampler = Sampler(1.0)
    sample = sampler.sample_once()
    assert sample.gpus == ()
    assert any("NVML" in note for note in sampler.notes)
    sampler.close()


@pytest.mark.skipif(not nvml_available(), reason="needs an NVIDIA driver (NVML)")
def test_nvml_gpu_fields() -> None:
    sample = Sampler(1.0).sample_once()
    assert sample.gpus and sample.gpus[0].memory_total_bytes > 0


def test_bad_interval_is_a_clear_error() -> None:
    with pytest.raises(TelemetryError, match="interval must be > 0"):
        Sampler(0)


def test_timeline_round_trip_skips_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    sample = Sampler(1.0, pid=0).sample_once()
    fd = open_append(path)
    write_line(fd, {"type": "meta", "interval_s": 1.0, "notes": ["a note"]})
    write_line(fd, sample_record(sample))
    write_line(fd, step_record(StepRecord(time=1.0, step=1, data_wait_s=0.5, step_s=0.25,
                                          samples=8)))
    os.write(fd, b'{"type": "sample", "time": 1')  # a writer killed mid-line
    os.close(fd)
    assert os.stat(path).st_mode & 0o777 == 0o600
    timeline = read_timeline(path)
    assert timeline.samples == (sample,)
    assert timeline.steps[0].data_wait_s == 0.5
    assert timeline.notes == ("a note",)
    assert timeline.totals.data_wait_fraction == pytest.approx(0.5 / 0.75)
    assert (timeline.skipped.lines, timeline.skipped.records) == (1, 0)  # the torn line


def test_a_malformed_middle_line_is_skipped_and_counted_a_missing_file_is_an_error(
        tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    sample = sample_record(Sampler(1.0, pid=0).sample_once())
    path.write_text(f'{{"type": "meta"}}\nnot json\n{json.dumps(sample)}\n')
    timeline = read_timeline(path)
    assert len(timeline.samples) == 1
    assert timeline.skipped.lines == 1
    assert timeline.skipped.examples == (f"{path}:2: not a JSON line b'not json'",)
    path.write_text('{"type": "meta"}\nnot json\n')
    with pytest.raises(TelemetryError, match=r"no usable samples or steps .*1 unreadable line"):
        read_timeline(path)
    with pytest.raises(TelemetryError, match="cannot read timeline"):
        read_timeline(tmp_path / "missing.jsonl")


# -- diagnosis rules, on timelines built from Sample records -----------------------------


def samples(n: int = 5, *, memory: float = 0.3, runnable: int = 1, cores: float = 4.0,
            process_cpu: float = 50.0, gpu_util: float | None = None,
            gpu_memory: float = 0.2) -> tuple[Sample, ...]:
    gpus = () if gpu_util is None else (GPUSample(0, gpu_util, int(gpu_memory * 16 * GIB),
                                                  16 * GIB),)
    return tuple(Sample(time=100.0 + i, cpu_percent=40.0, cpu_per_core=(40.0,) * int(cores),
                        memory_used_bytes=int(memory * 32 * GIB), memory_total_bytes=32 * GIB,
                        runnable_threads=runnable, cores=cores, process_rss_bytes=GIB,
                        process_cpu_percent=process_cpu, gpus=gpus) for i in range(n))


def steps(wait: float, step: float, n: int = 10) -> tuple[StepRecord, ...]:
    return tuple(StepRecord(time=100.0 + i, step=i, data_wait_s=wait, step_s=step, samples=4)
                 for i in range(n))


def test_input_bound_from_step_timings() -> None:
    found = diagnose(Timeline(samples=samples(), steps=steps(wait=0.062, step=0.038)))
    assert isinstance(found, Diagnosis)
    assert found.kind == "input-bound"
    assert found.sentence.startswith("data wait 62% of step time: input-bound")
    assert "dataloader.num_workers" in found.suggestion


def test_compute_bound_when_the_step_dominates() -> None:
    found = diagnose(Timeline(samples=samples(gpu_util=97.0), steps=steps(wait=0.001, step=0.1)))
    assert found.kind == "compute-bound"
    assert "GPU 0 busy 97%" in found.evidence


def test_memory_bound_ram_and_gpu_memory() -> None:
    assert diagnose(Timeline(samples=samples(memory=0.95))).kind == "memory-bound"
    found = diagnose(Timeline(samples=samples(gpu_util=99.0, gpu_memory=0.97)))
    assert found.kind == "memory-bound" and "GPU 0 memory 97%" in found.sentence


def test_cpu_oversubscribed_suggests_intra_op_threads() -> None:
    found = diagnose(Timeline(samples=samples(runnable=9, cores=4.0)))
    assert found.kind == "cpu-oversubscribed"
    assert "threads.intra_op" in found.sentence


def test_idle_gpu_without_steps_is_likely_input_bound_and_all_findings_are_listed() -> None:
    timeline = Timeline(samples=samples(gpu_util=20.0, runnable=12, cores=4.0))
    kinds = [d.kind for d in findings(timeline)]
    assert kinds == ["input-bound", "cpu-oversubscribed"]


def test_quiet_run_has_no_bottleneck() -> None:
    found = diagnose(Timeline(samples=samples(process_cpu=10.0)))
    assert found.kind == "none"
    assert "TrainingMonitor" in found.suggestion


# -- plots -------------------------------------------------------------------------------


def test_plotting_many_times_leaves_no_figure_open(tmp_path) -> None:
    import matplotlib.pyplot as plt

    timeline = Timeline(samples=samples(gpu_util=60.0), steps=steps(wait=0.01, step=0.02))
    for i in range(6):
        path = plot_timeline(timeline, tmp_path / f"p{i}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_summary_json_is_plain_data() -> None:
    summary = Timeline(samples=samples(), steps=steps(0.01, 0.02)).summary()
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["steps"]["count"] == 10
    assert data["steps"]["data_wait_fraction"] == pytest.approx(1 / 3, abs=1e-3)
