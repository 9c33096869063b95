"""Linux control-group limits: the CPU and memory a process may really use.

A container or a batch scheduler can give a process fewer CPUs and less
memory than the machine has; ``os.cpu_count()`` and ``psutil`` report the
machine. Both cgroup v2 (``cpu.max``, ``memory.max``) and v1
(``cpu.cfs_quota_us``, ``memory.limit_in_bytes``) are read, for the
process's own cgroup (from ``/proc/self/cgroup``) and each of its ancestors,
because a limit set on a parent applies to every child; the tightest wins.

Every function takes the mount point and the ``/proc/self/cgroup`` file as
arguments so that tests can point them at a directory they made.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("autotune.machine.detect")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: v1 reports "no limit" as a huge page-aligned number rather than "max".
_UNLIMITED_BYTES = 1 << 60


def _own_paths(proc_self_cgroup: Path) -> tuple[str, dict[str, str]]:
    """This process's cgroup: the v2 path and ``{v1 controller: path}``."""
    v2 = "/"
    v1: dict[str, str] = {}
    try:
        text = proc_self_cgroup.read_text()
    except OSError:
        return v2, v1
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            v2 = path or "/"
        for controller in controllers.split(","):
            v1[controller] = path or "/"
    return v2, v1


def _candidates(base: Path, path: str) -> list[Path]:
    """``base/path`` and each ancestor up to ``base``, existing ones only.

    When the process's path is not visible under the mount (a container
    whose cgroup namespace hides the host hierarchy), only ``base`` is left.
    """
    rel = Path(path.strip("/")) if path.strip("/") else Path()
    dirs = [base / rel, *[base / p for p in rel.parents]]
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in seen:
            seen.append(d)
    return seen or ([base] if base.is_dir() else [])


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_limit_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    return int(quota) / int(period or 100000)


def _cpu_limit_v1(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def _tightest(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT,
                     proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs this process may use by its cgroup quota (e.g. ``1.5``), or None
    when no quota is set or none can be read."""
    v2_path, v1_paths = _own_paths(proc_self_cgroup)
    try:
        limits: list[float | None] = [_cpu_limit_v2(d) for d in _candidates(root, v2_path)]
        for mount in ("cpu", "cpu,cpuacct"):
            path = v1_paths.get("cpu", "/")
            limits += [_cpu_limit_v1(d) for d in _candidates(root / mount, path)]
        return _tightest(limits)
    except (OSError, ValueError) as exc:
        log.debug("cgroup CPU quota unreadable: %s", exc)
        return None


def _bytes(text: str | None) -> int | None:
    if not text or text == "max":
        return None
    value = int(text)
    return None if value >= _UNLIMITED_BYTES else value


def cgroup_memory_limit(root: Path = CGROUP_ROOT,
                        proc_self_cgroup: Path = PROC_SELF_CGROUP) -> tuple[int, int] | None:
    """``(limit, in use)`` in bytes for this process's memory cgroup, from
    the tightest limit on the path; None when unlimited or unreadable."""
    v2_path, v1_paths = _own_paths(proc_self_cgroup)
    found: list[tuple[int, int]] = []
    try:
        for d in _candidates(root, v2_path):
            limit = _bytes(_read(d / "memory.max"))
            if limit is not None:
                found.append((limit, int(_read(d / "memory.current") or 0)))
        for d in _candidates(root / "memory", v1_paths.get("memory", "/")):
            limit = _bytes(_read(d / "memory.limit_in_bytes"))
            if limit is not None:
                found.append((limit, int(_read(d / "memory.usage_in_bytes") or 0)))
    except (OSError, ValueError) as exc:
        log.debug("cgroup memory limit unreadable: %s", exc)
        return None
    return min(found) if found else None
