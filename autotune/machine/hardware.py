"""Typed, frozen descriptions of the machine: CPU, memory, GPUs, software.

These are plain data. :func:`autotune.detect` fills them in; tests build them
directly (see :func:`autotune.testing.fake_hardware`). Everything round-trips
through JSON via :meth:`Hardware.to_dict` / :meth:`Hardware.from_dict`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

GIB = 1024**3

# The ISA flags that matter for training speed; everything else in
# /proc/cpuinfo is noise for our purposes and would only bloat the output.
RELEVANT_CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "neon",
    "asimd",
    "sve",
    "bf16",
)


@dataclass(frozen=True)
class CPU:
    brand: str
    vendor: str
    arch: str
    physical_cores: int
    logical_cores: int
    #: Cores this process may actually use: min(affinity, cgroup quota).
    #: A float because a cgroup quota can be fractional (e.g. 1.5 CPUs).
    usable_cores: float
    flags: tuple[str, ...] = ()

    @property
    def has_bf16(self) -> bool:
        """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
        return any(f in self.flags for f in ("avx512_bf16", "amx_bf16", "bf16"))

    @property
    def worker_budget(self) -> int:
        """Whole cores available to this process, at least 1."""
        return max(1, int(self.usable_cores))


@dataclass(frozen=True)
class Memory:
    total_bytes: int
    available_bytes: int

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GIB


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total_bytes: int
    compute_capability: tuple[int, int]
    driver_version: str = ""
    uuid: str = ""
    #: Where the facts came from: "nvml" or "torch".
    source: str = "nvml"

    @property
    def memory_gb(self) -> float:
        return self.memory_total_bytes / GIB

    @property
    def bf16(self) -> bool:
        """Ampere (sm_80) and newer run bf16 tensor-core math."""
        return self.compute_capability >= (8, 0)

    @property
    def tf32(self) -> bool:
        return self.compute_capability >= (8, 0)


@dataclass(frozen=True)
class Hardware:
    cpu: CPU
    memory: Memory
    gpus: tuple[GPU, ...] = ()
    os: str = ""
    python_version: str = ""
    torch_version: str = ""
    #: CUDA version torch was built with ("" for a CPU build).
    cuda_version: str = ""
    #: True when torch can actually use a GPU (a CUDA build and a driver).
    cuda_available: bool = False
    #: What could not be detected, and why; one sentence each.
    notes: tuple[str, ...] = ()
    #: Facts contributed by plugins through ``autotune_detect``, by plugin.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_cuda(self) -> bool:
        return bool(self.gpus) and self.cuda_available

    @property
    def fingerprint(self) -> str:
        """A stable key for caches: changes when the hardware or torch changes,
        not when free memory or the driver's minor state changes."""
        stable = {
            "cpu": [self.cpu.brand, self.cpu.arch, self.cpu.physical_cores,
                    self.cpu.logical_cores, self.cpu.usable_cores, list(self.cpu.flags)],
            "memory_gb": round(self.memory.total_bytes / GIB),
            "gpus": [[g.name, g.memory_total_bytes // (1024**2), list(g.compute_capability)]
                     for g in self.gpus],
            "torch": self.torch_version,
            "cuda": self.cuda_version,
            "cuda_available": self.cuda_available,
        }
        blob = json.dumps(stable, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_extra(self, plugin: str, facts: Mapping[str, Any]) -> "Hardware":
        merged = dict(self.extra)
        merged[plugin] = dict(facts)
        return replace(self, extra=merged)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["extra"] = dict(self.extra)
        data["fingerprint"] = self.fingerprint
        data["cpu"]["has_bf16"] = self.cpu.has_bf16
        for gpu_dict, gpu in zip(data["gpus"], self.gpus):
            gpu_dict["memory_gb"] = round(gpu.memory_gb, 2)
            gpu_dict["bf16"] = gpu.bf16
            gpu_dict["tf32"] = gpu.tf32
        data["memory"]["total_gb"] = round(self.memory.total_gb, 2)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Hardware":
        cpu = dict(data["cpu"])
        cpu.pop("has_bf16", None)
        cpu["flags"] = tuple(cpu.get("flags", ()))
        mem = dict(data["memory"])
        mem.pop("total_gb", None)
        gpus = []
        for g in data.get("gpus", ()):
            g = {k: v for k, v in g.items() if k not in ("memory_gb", "bf16", "tf32")}
            g["compute_capability"] = tuple(g["compute_capability"])
            gpus.append(GPU(**g))
        return cls(
            cpu=CPU(**cpu),
            memory=Memory(**mem),
            gpus=tuple(gpus),
            os=data.get("os", ""),
            python_version=data.get("python_version", ""),
            torch_version=data.get("torch_version", ""),
            cuda_version=data.get("cuda_version", ""),
            cuda_available=bool(data.get("cuda_available", False)),
            notes=tuple(data.get("notes", ())),
            extra=dict(data.get("extra", {})),
        )
