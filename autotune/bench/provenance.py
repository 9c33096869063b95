"""When a figure was measured and how loaded the machine was: what every
benchmark result records beside its numbers, a figure without them cannot be
judged.

Kept free of torch, so the benchmark scripts (``benchmarks/common.py``)
import it at once and still answer ``--help`` without loading torch; the
machine itself, which needs torch, is :func:`autotune.bench.runner.machine_facts`.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone


def loadavg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def utc_now() -> str:
    """Now, in UTC, as ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
