"""Hardware samples: what the machine and one process tree are doing now.

:func:`Sampler.sample_once` reads CPU (total and per core), memory, the
watched process tree's RSS, CPU and thread count, runnable threads against
usable cores, and per GPU (through NVML) utilisation, memory, temperature,
power and clocks. :class:`Sampler` does that on a background thread at a
fixed interval into a bounded ring buffer, optionally handing each sample to
a sink (a file writer) as well.

Everything is read from ``/proc`` through psutil, once per sample, with
deltas computed here rather than with ``psutil.cpu_percent()``: that keeps
global state in psutil, so two samplers in one process would steal each
other's intervals. NVML missing means no GPU fields and a note, never an
error.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import psutil

from autotune.machine.detect import detect
from autotune.telemetry.errors import TelemetryError

log = logging.getLogger("autotune.telemetry")

#: Samples kept in memory by default: a day at 10 s, ~3 hours at 1 Hz (~1 KB each).
DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True)
class GPUSample:
    index: int
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None = None
    power_w: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None

    @property
    def memory_fraction(self) -> float | None:
        if not self.memory_used_bytes or not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class Sample:
    #: Unix time of the reading.
    time: float
    #: Busy share of all CPUs since the previous sample, 0-100.
    cpu_percent: float
    cpu_per_core: tuple[float, ...]
    memory_used_bytes: int
    memory_total_bytes: int
    #: Threads ready to run right now, machine-wide, without the sampler
    #: itself (``/proc/loadavg``'s running count); None where unknown.
    runnable_threads: int | None
    #: Cores this process may use (affinity and cgroup quota).
    cores: float
    #: The watched process and its descendants (None when nothing is watched
    #: or it has exited): summed RSS (shared pages count once per process),
    #: CPU as percent of one core, threads, and how many processes.
    process_rss_bytes: int | None = None
    process_cpu_percent: float | None = None
    process_threads: int | None = None
    process_count: int | None = None
    load_1m: float | None = None
    gpus: tuple[GPUSample, ...] = ()

    @property
    def memory_fraction(self) -> float:
        return self.memory_used_bytes / self.memory_total_bytes if self.memory_total_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_per_core"] = list(self.cpu_per_core)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Sample":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["cpu_per_core"] = tuple(known.get("cpu_per_core", ()))
        known["gpus"] = tuple(GPUSample(**{k: v for k, v in g.items()
                                           if k in GPUSample.__dataclass_fields__})
                              for g in known.get("gpus", ()))
        return cls(**known)


def usable_cores() -> float:
    return detect().cpu.usable_cores  # cached after the first call


def read_runnable(path: str = "/proc/loadavg") -> tuple[int | None, float | None]:
    """(runnable threads without the reader, 1-minute load) from /proc/loadavg."""
    try:
        with open(path, "rb") as handle:
            fields = handle.read().split()
        running = int(fields[3].split(b"/")[0])
        return max(0, running - 1), float(fields[0])
    except (OSError, IndexError, ValueError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return None, load


class _CpuDeltas:
    """Per-core busy percent between two calls, from cumulative CPU times."""

    def __init__(self) -> None:
        self._last = psutil.cpu_times(percpu=True)

    def read(self) -> tuple[float, tuple[float, ...]]:
        now = psutil.cpu_times(percpu=True)
        per_core = []
        for before, after in zip(self._last, now):
            total = sum(after) - sum(before)
            idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0)
                                                 - getattr(before, "iowait", 0.0))
            per_core.append(round(100.0 * (1.0 - idle / total), 1) if total > 0 else 0.0)
        self._last = now
        overall = round(sum(per_core) / len(per_core), 1) if per_core else 0.0
        return overall, tuple(per_core)


class _ProcessTree:
    """RSS, CPU and threads of one process and (optionally) its descendants.

    Process objects are kept by pid so CPU time is a delta per process (a
    recycled pid is a new psutil.Process, told apart by its create time).
    """

    def __init__(self, pid: int, include_children: bool) -> None:
        self.pid = pid
        self.include_children = include_children
        self._cpu: dict[int, tuple[psutil.Process, float]] = {}
        self._last_time = time.monotonic()
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None
        self.read()

    def read(self) -> tuple[int, float, int, int] | None:
        if self._root is None:
            return None
        try:
            procs = [self._root]
            if self.include_children:
                procs += self._root.children(recursive=True)
        except psutil.Error:
            return None  # the watched process has exited
        now = time.monotonic()
        elapsed = max(now - self._last_time, 1e-9)
        self._last_time = now
        rss = threads = 0
        cpu_delta = 0.0
        seen: dict[int, tuple[psutil.Process, float]] = {}
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    threads += proc.num_threads()
                    times = proc.cpu_times()
            except psutil.Error:
                continue  # exited between listing and reading
            total = times.user + times.system
            previous = self._cpu.get(proc.pid)
            if previous is not None and previous[0] == proc:
                cpu_delta += max(0.0, total - previous[1])
            seen[proc.pid] = (proc, total)
        self._cpu = seen
        if not seen:
            return None
        return rss, round(100.0 * cpu_delta / elapsed, 1), threads, len(seen)


class _Nvml:
    """Per-GPU readings through NVML; a note instead of GPU fields when NVML
    (the bindings or the driver) is missing. Fields a GPU does not support
    (power on some boards) are asked once and then left as None."""

    def __init__(self, enabled: bool = True) -> None:
        self.notes: list[str] = []
        self._handles: list[Any] = []
        self._unsupported: set[str] = set()
        self._nvml: Any = None
        if not enabled:
            return
        try:
            import pynvml
        except ImportError:
            self.notes.append("no GPU fields: NVML bindings not installed (pip install nvidia-ml-py)")
            return
        try:
            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, no driver...
            self.notes.append(f"no GPU fields: NVML unavailable ({exc})")

    def _ask(self, name: str, call: Callable[[], Any]) -> Any:
        if name in self._unsupported:
            return None
        try:
            return call()
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends
            self._unsupported.add(name)
            return None

    def read(self) -> tuple[GPUSample, ...]:
        nv = self._nvml
        if nv is None:
            return ()
        out = []
        for index, h in enumerate(self._handles):
            util = self._ask(f"util{index}", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
            mem = self._ask(f"mem{index}", lambda: nv.nvmlDeviceGetMemoryInfo(h))
            temp = self._ask(f"temp{index}", lambda: nv.nvmlDeviceGetTemperature(
                h, nv.NVML_TEMPERATURE_GPU))
            power = self._ask(f"power{index}", lambda: nv.nvmlDeviceGetPowerUsage(h))
            sm = self._ask(f"sm{index}", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            memclk = self._ask(f"memclk{index}", lambda: nv.nvmlDeviceGetClockInfo(
                h, nv.NVML_CLOCK_MEM))
            out.append(GPUSample(
                index=index,
                utilization_percent=None if util is None else float(util),
                memory_used_bytes=None if mem is None else int(mem.used),
                memory_total_bytes=None if mem is None else int(mem.total),
                temperature_c=None if temp is None else float(temp),
                power_w=None if power is None else power / 1000.0,  # NVML reports mW
                sm_clock_mhz=sm, memory_clock_mhz=memclk))
        return tuple(out)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None


class Sampler:
    """Sample every ``interval_s`` seconds on a background thread.

    ``pid``: the process to watch (default this one; None-like ``0`` watches
    none); ``include_children`` adds its descendants (DataLoader workers, the
    processes a command starts). The last ``capacity`` samples stay in memory;
    ``sink`` (e.g. a JSONL writer) gets every sample as it is taken. One
    sample is taken at :meth:`start` and one at :meth:`stop`, so even a short
    run has two.
    """

    def __init__(self, interval_s: float = 1.0, *, pid: int | None = None,
                 include_children: bool = True, capacity: int = DEFAULT_CAPACITY,
                 sink: Callable[[Sample], None] | None = None, gpus: bool = True) -> None:
        if interval_s <= 0:
            raise TelemetryError(f"interval must be > 0 seconds, got {interval_s}")
        self.interval_s = float(interval_s)
        self.pid = os.getpid() if pid is None else pid
        self.include_children = include_children
        self.sink = sink
        self._samples: collections.deque[Sample] = collections.deque(maxlen=max(1, capacity))
        self._gpus_enabled = gpus
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sink_failed = False
        self._nvml: _Nvml | None = None
        self._cpu: _CpuDeltas | None = None
        self._tree: _ProcessTree | None = None
        self._cores = 1.0
        self.notes: tuple[str, ...] = ()

    # -- one reading -----------------------------------------------------------------

    def open(self) -> None:
        if self._cpu is None:
            self._nvml = _Nvml(self._gpus_enabled)
            self.notes = tuple(self._nvml.notes)
            self._cpu = _CpuDeltas()
            self._cores = usable_cores()
        if self.pid and (self._tree is None or self._tree.pid != self.pid):
            self._tree = _ProcessTree(self.pid, self.include_children)

    def sample_once(self) -> Sample:
        """Take one sample now (deltas are since the previous one) and keep it."""
        self.open()
        assert self._cpu is not None and self._nvml is not None
        cpu, per_core = self._cpu.read()
        vm = psutil.virtual_memory()
        runnable, load = read_runnable()
        tree = self._tree.read() if self._tree is not None else None
        sample = Sample(
            time=round(time.time(), 3), cpu_percent=cpu, cpu_per_core=per_core,
            memory_used_bytes=int(vm.total - vm.available), memory_total_bytes=int(vm.total),
            runnable_threads=runnable, cores=self._cores, load_1m=load,
            process_rss_bytes=tree[0] if tree else None,
            process_cpu_percent=tree[1] if tree else None,
            process_threads=tree[2] if tree else None,
            process_count=tree[3] if tree else None,
            gpus=self._nvml.read())
        with self._lock:
            self._samples.append(sample)
        if self.sink is not None:
            try:
                self.sink(sample)
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop training
                if not self._sink_failed:
                    log.warning("telemetry: could not write a sample (%s); keeping samples "
                                "in memory only", exc)
                self._sink_failed = True
        return sample

    def samples(self) -> tuple[Sample, ...]:
        with self._lock:
            return tuple(self._samples)

    # -- the thread ------------------------------------------------------------------

    def start(self) -> "Sampler":
        if self._thread is not None:
            return self
        self._stop.clear()
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="autotune-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # A fixed schedule (not sleep(interval) after each sample), so the
        # rate does not drift by the time a sample takes.
        next_at = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.sample_once()
            except Exception:  # noqa: BLE001 - keep sampling; say why once per failure
                log.exception("telemetry: sampling failed")
            next_at += self.interval_s
            if next_at < time.monotonic():  # fell behind (suspended?): skip, don't burst
                next_at = time.monotonic() + self.interval_s

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self.sample_once()

    def close(self) -> None:
        self.stop()
        if self._nvml is not None:
            self._nvml.close()
        self._nvml = self._cpu = None  # a later start() opens them again

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
