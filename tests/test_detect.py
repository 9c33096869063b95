"""Hardware detection: cgroup limits, affinity, GPU visibility, caching,
JSON round trip and the fingerprint."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from autotune import detect
from autotune.machine.cgroups import cgroup_cpu_quota, cgroup_memory_limit
from autotune.machine.detect import _gpus_from_torch, _read_proc_cpuinfo, usable_cpu_count, visible_gpus
from autotune.machine.hardware import GIB, Hardware, Memory
from autotune.testing import cpu_laptop, fake_cpu, fake_gpu, fake_hardware, h100_box, rtx5080_7950x

NO_PROC = Path("/nonexistent/proc/self/cgroup")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- cgroup CPU quota -------------------------------------------------------------


def test_cgroup_v2_quota_is_quota_over_period(tmp_path):
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(root=tmp_path, proc_self_cgroup=NO_PROC) == 1.5


def test_cgroup_v2_max_means_no_quota(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root=tmp_path, proc_self_cgroup=NO_PROC) is None


def test_cgroup_v2_tightest_limit_on_the_path_wins(tmp_path):
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/batch/job7\n")
    root = tmp_path / "fs"
    write(root / "cpu.max", "max 100000\n")
    write(root / "batch" / "cpu.max", "100000 100000\n")        # parent: 1 CPU
    write(root / "batch" / "job7" / "cpu.max", "400000 100000")  # child asks for 4
    assert cgroup_cpu_quota(root=root, proc_self_cgroup=proc) == 1.0


def test_cgroup_path_hidden_by_namespace_falls_back_to_the_mount(tmp_path):
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/docker/abc123\n")  # not visible under the mount
    write(tmp_path / "fs" / "cpu.max", "250000 100000")
    assert cgroup_cpu_quota(root=tmp_path / "fs", proc_self_cgroup=proc) == 2.5


def test_cgroup_v1_cfs_quota(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "300000\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root=tmp_path, proc_self_cgroup=NO_PROC) == 3.0


def test_cgroup_v1_minus_one_means_no_quota(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root=tmp_path, proc_self_cgroup=NO_PROC) is None


def test_cgroup_garbage_or_missing_files_give_none(tmp_path):
    assert cgroup_cpu_quota(root=tmp_path / "missing", proc_self_cgroup=NO_PROC) is None
    write(tmp_path / "cpu.max", "lots of cpus")
    assert cgroup_cpu_quota(root=tmp_path, proc_self_cgroup=NO_PROC) is None


def test_cgroup_memory_limit_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    write(v2 / "memory.max", str(4 * GIB))
    write(v2 / "memory.current", str(GIB))
    assert cgroup_memory_limit(root=v2, proc_self_cgroup=NO_PROC) == (4 * GIB, GIB)
    v1 = tmp_path / "v1"
    write(v1 / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # "unlimited"
    assert cgroup_memory_limit(root=v1, proc_self_cgroup=NO_PROC) is None


# -- usable cores ------------------------------------------------------------------


def test_usable_cores_honour_affinity():
    notes: list[str] = []
    assert usable_cpu_count(8, notes, affinity={0, 1, 2}, quota=None) == 3.0
    assert notes == ["CPU affinity allows 3 of 8 logical CPUs"]


def test_usable_cores_honour_a_tighter_quota():
    notes: list[str] = []
    assert usable_cpu_count(8, notes, affinity=set(range(8)), quota=1.5) == 1.5
    assert any("cgroup limits this process to 1.5 CPUs" in n for n in notes)


def test_no_limits_means_every_logical_cpu():
    notes: list[str] = []
    assert usable_cpu_count(4, notes, affinity=set(range(4)), quota=None) == 4.0
    assert notes == []


def test_this_process_usable_cores_match_its_affinity():
    hw = detect()
    if hasattr(os, "sched_getaffinity"):
        assert hw.cpu.usable_cores <= len(os.sched_getaffinity(0))
    assert 1 <= hw.cpu.worker_budget <= hw.cpu.logical_cores


def test_worker_budget_rounds_a_fractional_quota_down():
    assert fake_cpu(usable_cores=1.5).worker_budget == 1
    assert fake_cpu(usable_cores=0.5).worker_budget == 1


# -- CPU and GPU sources -------------------------------------------------------------


def test_arm_cpuinfo_features_are_read(tmp_path):
    write(tmp_path / "cpuinfo", "processor\t: 0\nBogoMIPS\t: 50.00\n"
          "Features\t: fp asimd evtstrm sve bf16\nCPU implementer\t: 0x41\n\nprocessor\t: 1\n")
    info = _read_proc_cpuinfo(tmp_path / "cpuinfo")
    assert "bf16" in info["Features"].split() and "processor" in info


def test_cuda_visible_devices_selects_and_reindexes():
    gpus = (fake_gpu("GPU A", index=0, uuid="GPU-aaaa"), fake_gpu("GPU B", index=1, uuid="GPU-bbbb"))
    notes: list[str] = []
    chosen = visible_gpus(gpus, "1", notes)
    assert [(g.index, g.name) for g in chosen] == [(0, "GPU B")]
    assert "leaves 1 of 2 GPUs" in notes[0]
    assert [g.name for g in visible_gpus(gpus, "GPU-bb,0", [])] == ["GPU B", "GPU A"]
    assert visible_gpus(gpus, "0,7,1", []) == (gpus[0],)  # CUDA stops at the first bad entry
    notes = []
    assert visible_gpus(gpus, "", notes) == () and "no GPU visible" in notes[0]
    assert visible_gpus(gpus, None, []) == gpus


def test_missing_nvml_bindings_are_a_note_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    try:
        hw = detect(refresh=True)
        assert any("NVML bindings not installed" in n for n in hw.notes)
        assert hw.cpu.logical_cores >= 1
    finally:
        monkeypatch.undo()
        detect(refresh=True)


def test_failing_torch_cuda_is_a_note(monkeypatch):
    import torch

    def broken() -> bool:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    notes: list[str] = []
    assert _gpus_from_torch(notes) == ()
    assert "CUDA driver initialization failed" in notes[0]


def test_no_gpu_says_why():
    hw = detect()
    if hw.gpus:
        pytest.skip("this machine has a GPU")
    assert not hw.has_cuda
    assert any("GPU" in n or "NVML" in n for n in hw.notes)


# -- caching, JSON, fingerprint --------------------------------------------------------


def test_detect_is_cached_and_refresh_rereads():
    first = detect()
    assert detect() is first
    fresh = detect(refresh=True)
    assert fresh is not first
    assert fresh.fingerprint == first.fingerprint
    assert detect() is fresh


@pytest.mark.parametrize("make", [detect, rtx5080_7950x, h100_box, cpu_laptop])
def test_hardware_json_round_trip(make):
    hw = make()
    data = json.loads(json.dumps(hw.to_dict()))
    assert Hardware.from_dict(data) == hw
    assert data["fingerprint"] == hw.fingerprint


def test_json_round_trip_keeps_plugin_facts():
    hw = cpu_laptop().with_extra("seed", {"ready": True, "value": None})
    assert Hardware.from_dict(json.loads(json.dumps(hw.to_dict()))).extra == {
        "seed": {"ready": True, "value": None}}


def test_fingerprint_is_stable_and_ignores_free_memory():
    hw = rtx5080_7950x()
    assert hw.fingerprint == rtx5080_7950x().fingerprint
    less_free = replace(hw, memory=Memory(hw.memory.total_bytes, hw.memory.available_bytes // 2))
    assert less_free.fingerprint == hw.fingerprint
    assert detect().fingerprint == detect(refresh=True).fingerprint


def test_fingerprint_changes_with_the_gpu_or_torch():
    hw = rtx5080_7950x()
    other_gpu = replace(hw, gpus=(fake_gpu("NVIDIA GeForce RTX 4090", 24, (8, 9)),))
    assert other_gpu.fingerprint != hw.fingerprint
    assert replace(hw, torch_version="2.14.0").fingerprint != hw.fingerprint
    assert fake_hardware().fingerprint != fake_hardware(gpus=[{}]).fingerprint
