"""Detect the machine: CPU, memory, NVIDIA GPUs, software versions.

Every source is optional. When one is missing or fails, detection still
returns a correct :class:`~autotune.machine.hardware.Hardware` and records why in
``Hardware.notes``; it never raises for a missing driver or library.

NVML lists every GPU in the machine and ignores ``CUDA_VISIBLE_DEVICES``, so
its list is filtered by that variable and re-indexed the way torch numbers
the devices.

Detection is cached per process (``functools.lru_cache``): py-cpuinfo's
portable path spawns a subprocess and can take over a second, so on Linux we
read ``/proc/cpuinfo`` directly and use py-cpuinfo only as a fallback.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path
from types import EllipsisType

import psutil

from autotune.machine.cgroups import cgroup_cpu_quota, cgroup_memory_limit
from autotune.machine.hardware import CPU, GPU, RELEVANT_CPU_FLAGS, Hardware, Memory

log = logging.getLogger("autotune.machine.detect")

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


def cpu_id(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The CPU's ``family``, ``model`` and ``stepping`` numbers from
    /proc/cpuinfo (``{}`` where there is none): a VM may name its CPU only
    "AMD EPYC", and they still tell one generation from another."""
    info = _read_proc_cpuinfo(path)
    return {key: info[name] for key, name in (("family", "cpu family"), ("model", "model"),
                                                ("stepping", "stepping")) if name in info}


__all__ = ["cgroup_cpu_quota", "cpu_id", "detect", "usable_cpu_count"]


def usable_cpu_count(logical: int, notes: list[str], *, affinity: set[int] | None = None,
                     quota: float | None | EllipsisType = ...) -> float:
    """min(affinity mask, cgroup quota): what this process may really use.

    ``affinity`` and ``quota`` default to this process's own (tests pass
    their own; ``quota=None`` means no quota); a limit below ``logical`` is
    recorded in ``notes``.
    """
    usable: float = float(logical)
    if affinity is None and hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
    if affinity:
        usable = float(len(affinity))
        if usable < logical:
            notes.append(f"CPU affinity allows {len(affinity)} of {logical} logical CPUs")
    if quota is ...:
        quota = cgroup_cpu_quota()
    if quota is not None and quota < usable:
        notes.append(f"cgroup limits this process to {quota:g} CPUs of {logical}")
        usable = quota
    return usable


def _detect_memory(notes: list[str]) -> Memory:
    """Machine memory, clamped to the cgroup limit when one is tighter."""
    try:
        vm = psutil.virtual_memory()
        total, available = int(vm.total), int(vm.available)
    except Exception as exc:  # noqa: BLE001 - e.g. /proc not mounted
        notes.append(f"memory unknown: psutil failed ({exc})")
        return Memory(total_bytes=0, available_bytes=0)
    limit = cgroup_memory_limit()
    if limit is not None and limit[0] < total:
        cap, used = limit
        notes.append(f"cgroup limits this process to {cap / 1024**3:.1f} GiB "
                     f"of {total / 1024**3:.1f} GiB memory")
        total, available = cap, max(0, min(available, cap - used))
    return Memory(total_bytes=total, available_bytes=available)


def _detect_cpu(notes: list[str]) -> CPU:
    arch = platform.machine() or "unknown"
    try:
        logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        physical = psutil.cpu_count(logical=False) or logical
    except Exception as exc:  # noqa: BLE001 - e.g. /proc or /sys not mounted
        notes.append(f"core counts from os.cpu_count(): psutil failed ({exc})")
        logical = physical = os.cpu_count() or 1
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
    if _cpu_only_torch_version() is not None:
        notes.append("no GPU: this torch is a CPU-only build")
        return ()
    try:
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
            gpus.append(GPU(index=index, name=props.name,
                            memory_total_bytes=int(props.total_memory),
                            compute_capability=(props.major, props.minor), source="torch"))
        return tuple(gpus)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install is a note, not a crash
        notes.append(f"no GPU: torch.cuda failed ({type(exc).__name__}: {exc})")
        return ()


def visible_gpus(gpus: tuple[GPU, ...], visible: str | None,
                 notes: list[str]) -> tuple[GPU, ...]:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` leaves to this process, in its order
    and re-indexed as torch numbers them. NVML itself ignores that variable.

    Entries are indices or UUID prefixes; like CUDA, the list ends at the
    first entry that names no device.
    """
    if visible is None:
        return gpus
    chosen: list[GPU] = []
    for entry in (e.strip() for e in visible.split(",")):
        match = next((g for g in gpus if entry and (entry == str(g.index)
                      or (g.uuid and g.uuid.startswith(entry)))), None)
        if match is None or match in chosen:
            break
        chosen.append(match)
    if len(chosen) < len(gpus):
        notes.append(f"CUDA_VISIBLE_DEVICES={visible!r} leaves {len(chosen)} of {len(gpus)} GPUs"
                     + (" (no GPU visible)" if not chosen else ""))
    return tuple(replace(g, index=i) for i, g in enumerate(chosen))


def _detect_gpus(notes: list[str]) -> tuple[GPU, ...]:
    gpus = _gpus_from_nvml(notes)
    if gpus is None:
        return _gpus_from_torch(notes)
    if not gpus:
        notes.append("no GPU: NVML reports 0 devices")
        return gpus
    return visible_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), notes)


def _cpu_only_torch_version() -> str | None:
    """The installed torch's version when it is a CPU-only build (no CUDA,
    no ROCm), read from ``torch/version.py`` without importing torch, which
    takes seconds; None when torch is already imported, is a GPU build, or
    that file is missing or not plain assignments (then ask torch itself).
    ``autotune detect``/``profiles`` on a CPU machine need only this."""
    if "torch" in sys.modules:
        return None
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text()).body:
            target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                      else node.target if isinstance(node, ast.AnnAssign) else None)
            if isinstance(target, ast.Name) and node.value is not None:
                values[target.id] = ast.literal_eval(node.value)
    except Exception:  # noqa: BLE001 - any doubt: import torch and ask it
        return None
    version = values.get("__version__")
    if not isinstance(version, str) or values.get("cuda", "") is not None \
            or values.get("hip", None) is not None:
        return None
    return version


def _torch_versions(notes: list[str]) -> tuple[str, str, bool]:
    """(torch version, CUDA build version, torch can use a GPU)."""
    cpu_only = _cpu_only_torch_version()
    if cpu_only is not None:
        return cpu_only, "", False
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install must not break detect
        notes.append(f"torch unavailable: {type(exc).__name__}: {exc}")
        return "", "", False
    try:
        usable = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        usable = False
    return torch.__version__, torch.version.cuda or "", usable


@functools.lru_cache(maxsize=1)
def _detect_cached() -> Hardware:
    notes: list[str] = []
    cpu = _detect_cpu(notes)
    memory = _detect_memory(notes)
    torch_version, cuda_version, torch_cuda = _torch_versions(notes)
    gpus = _detect_gpus(notes) if torch_version else (_gpus_from_nvml(notes) or ())
    cuda_available = bool(gpus) and torch_cuda
    if gpus and not cuda_available:
        notes.append("GPUs found by NVML, but this torch cannot use them "
                     f"(torch {torch_version or 'missing'}, CUDA build: {cuda_version or 'none'})")
    return Hardware(
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        os=f"{platform.system()} {platform.release()}",
        python_version=platform.python_version(),
        torch_version=torch_version,
        cuda_version=cuda_version,
        cuda_available=cuda_available,
        notes=tuple(notes),
    )


def detect(*, refresh: bool = False) -> Hardware:
    """Describe this machine. Cached per process; ``refresh=True`` re-reads it.

    Plugins may add facts through the ``autotune_detect`` hook; that happens in
    :meth:`autotune.plugin.manager.PluginManager.detect`, not here, so this function
    stays free of plugin loading.
    """
    if refresh:
        _detect_cached.cache_clear()
    hardware = _detect_cached()
    log.debug("detected %s on %s", hardware.cpu.brand, sys.platform)
    return hardware
