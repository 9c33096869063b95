"""Detect the machine: CPU, memory, NVIDIA GPUs, software versions.

Every source is optional. When one is missing or fails, detection still
returns a correct :class:`~autotune.hardware.Hardware` and records why in
``Hardware.notes``; it never raises for a missing driver or library.

Detection is cached per process (``functools.lru_cache``): py-cpuinfo's
portable path spawns a subprocess and can take over a second, so on Linux we
read ``/proc/cpuinfo`` directly and use py-cpuinfo only as a fallback.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from pathlib import Path

import psutil

from autotune.hardware import CPU, GPU, RELEVANT_CPU_FLAGS, Hardware, Memory

log = logging.getLogger("autotune.detect")

_VENDORS = {
    "GenuineIntel": "Intel",
    "AuthenticAMD": "AMD",
    "ARM": "ARM",
}


def _read_proc_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict (Linux only)."""
    info: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 CFS quota), or None."""
    try:
        max_file = root / "cpu.max"
        if max_file.exists():
            quota, _, period = max_file.read_text().strip().partition(" ")
            if quota != "max":
                return int(quota) / int(period or 100000)
            return None
        quota_file = root / "cpu" / "cpu.cfs_quota_us"
        period_file = root / "cpu" / "cpu.cfs_period_us"
        if quota_file.exists() and period_file.exists():
            quota_us = int(quota_file.read_text().strip())
            if quota_us > 0:
                return quota_us / int(period_file.read_text().strip())
    except (OSError, ValueError) as exc:
        log.debug("cgroup CPU quota unreadable: %s", exc)
    return None


def usable_cpu_count(logical: int, notes: list[str]) -> float:
    """min(affinity mask, cgroup quota): what this process may really use."""
    usable: float = float(logical)
    if hasattr(os, "sched_getaffinity"):
        usable = float(len(os.sched_getaffinity(0)))
    quota = cgroup_cpu_quota()
    if quota is not None and quota < usable:
        notes.append(f"cgroup limits this process to {quota:g} CPUs of {logical}")
        usable = quota
    return usable


def _detect_cpu(notes: list[str]) -> CPU:
    arch = platform.machine() or "unknown"
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    info = _read_proc_cpuinfo()
    brand = info.get("model name", "")
    vendor_id = info.get("vendor_id", "")
    raw_flags = set(info.get("flags", info.get("Features", "")).split())
    if not brand:
        try:
            import cpuinfo  # py-cpuinfo: slow but portable

            data = cpuinfo.get_cpu_info()
            brand = data.get("brand_raw", "")
            vendor_id = vendor_id or data.get("vendor_id_raw", "")
            raw_flags |= set(data.get("flags", []))
        except Exception as exc:  # noqa: BLE001 - any failure is a note, not a crash
            notes.append(f"CPU brand unknown: py-cpuinfo failed ({exc})")
    if not brand:
        brand = platform.processor() or "unknown CPU"
    flags = tuple(f for f in RELEVANT_CPU_FLAGS if f in raw_flags)
    return CPU(
        brand=brand,
        vendor=_VENDORS.get(vendor_id, vendor_id or "unknown"),
        arch=arch,
        physical_cores=int(physical),
        logical_cores=int(logical),
        usable_cores=usable_cpu_count(int(logical), notes),
        flags=flags,
    )


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpus_from_nvml(notes: list[str]) -> tuple[GPU, ...] | None:
    """GPUs via NVML; None when NVML itself is unavailable (reason in notes)."""
    try:
        import pynvml
    except ImportError:
        notes.append("NVML bindings not installed (pip install nvidia-ml-py)")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, driver missing...
        notes.append(f"NVML unavailable: {exc} (no NVIDIA driver on this machine?)")
        return None
    try:
        driver = _decode(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GPU(
                    index=index,
                    name=_decode(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    compute_capability=(int(major), int(minor)),
                    driver_version=driver,
                    uuid=_decode(pynvml.nvmlDeviceGetUUID(handle)),
                    source="nvml",
                )
            )
        return tuple(gpus)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"NVML query failed: {exc}")
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _gpus_from_torch(notes: list[str]) -> tuple[GPU, ...]:
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            notes.append("no GPU: this torch is a CPU-only build")
        else:
            notes.append("no GPU: torch.cuda.is_available() is False")
        return ()
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            GPU(
                index=index,
                name=props.name,
                memory_total_bytes=int(props.total_memory),
                compute_capability=(props.major, props.minor),
                source="torch",
            )
        )
    return tuple(gpus)


def _detect_gpus(notes: list[str]) -> tuple[GPU, ...]:
    gpus = _gpus_from_nvml(notes)
    if gpus is None:
        return _gpus_from_torch(notes)
    if not gpus:
        notes.append("no GPU: NVML reports 0 devices")
    return gpus


@functools.lru_cache(maxsize=1)
def _detect_cached() -> Hardware:
    import torch

    notes: list[str] = []
    cpu = _detect_cpu(notes)
    vm = psutil.virtual_memory()
    gpus = _detect_gpus(notes)
    cuda_available = bool(gpus) and torch.cuda.is_available()
    if gpus and not cuda_available:
        notes.append("GPUs found by NVML, but this torch cannot use them "
                     f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    return Hardware(
        cpu=cpu,
        memory=Memory(total_bytes=int(vm.total), available_bytes=int(vm.available)),
        gpus=gpus,
        os=f"{platform.system()} {platform.release()}",
        python_version=platform.python_version(),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda or "",
        cuda_available=cuda_available,
        notes=tuple(notes),
    )


def detect(*, refresh: bool = False) -> Hardware:
    """Describe this machine. Cached per process; ``refresh=True`` re-reads it.

    Plugins may add facts through the ``autotune_detect`` hook; that happens in
    :meth:`autotune.manager.PluginManager.detect`, not here, so this function
    stays free of plugin loading.
    """
    if refresh:
        _detect_cached.cache_clear()
    hardware = _detect_cached()
    log.debug("detected %s on %s", hardware.cpu.brand, sys.platform)
    return hardware
