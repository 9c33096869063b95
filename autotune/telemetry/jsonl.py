"""The timeline as a file: one JSON object per line, each with a ``type``:
``meta`` (what was watched, how often), ``sample`` (a
:class:`~autotune.telemetry.sampler.Sample`) or ``step`` (a
:class:`~autotune.telemetry.timeline.StepRecord`). Every line is written
with one ``os.write`` on an ``O_APPEND`` descriptor, so concurrent writers
(the sampler thread and the training loop) never interleave inside a line
and a process killed mid-run leaves whole lines; :func:`read_timeline`
skips a torn line. Files are created user-only (0600).

Reading is forgiving, because a timeline is evidence, not configuration: a
line that is not a JSON object (torn by a kill, or garbage) is skipped, a
record whose required field is unusable is skipped, and an optional field of
the wrong type (a string where a number belongs, NaN, a list, a number where
an object belongs) is read as missing. Every skip is counted in
:attr:`Timeline.skipped <autotune.telemetry.timeline.Timeline.skipped>`,
which the report prints; only a file with nothing usable in it is an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from autotune.telemetry.errors import TelemetryError
from autotune.telemetry.sampler import GPUSample, Sample
from autotune.telemetry.timeline import SKIPPED_EXAMPLES, Skipped, StepRecord, Timeline

log = logging.getLogger("autotune.telemetry")

FILE_MODE = 0o600


def open_append(path: str | os.PathLike[str], *, truncate: bool = False) -> int:
    """An O_APPEND descriptor on ``path``, created (and forced) user-only.

    When ``path`` already ends in a torn line (its last writer was killed
    mid-write, or the disk filled), a newline is written first, so the next
    record starts on a line of its own: the torn line stays as it was, and
    readers skip it and count it.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through os.open
        if not truncate and _ends_torn(path, os.fstat(fd).st_size):
            os.write(fd, b"\n")
            log.warning("telemetry: %s ended in a torn line (a writer stopped mid-line); "
                        "it is kept as it was, and new records start on the next line", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ends_torn(path: str | os.PathLike[str], size: int) -> bool:
    if size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def encode_line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


def write_line(fd: int, record: Mapping[str, Any]) -> int:
    """One whole line with one write(2); returns the bytes written."""
    data = encode_line(record)
    written = os.write(fd, data)
    if written != len(data):  # a regular file only writes short when the disk is full
        raise OSError(f"short write: {written} of {len(data)} bytes (disk full?)")
    return written


def sample_record(sample: Sample) -> dict[str, Any]:
    return {"type": "sample", **sample.to_dict()}


def step_record(step: StepRecord) -> dict[str, Any]:
    return {"type": "step", **step.to_dict()}


class _Reader:
    """Turns records into samples and steps, counting what it skips."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.line = 0
        self.lines = self.records = self.fields = 0
        self.examples: list[str] = []

    def problem(self, what: str) -> None:
        if len(self.examples) < SKIPPED_EXAMPLES:
            self.examples.append(f"{self.path}:{self.line}: {what}")

    def skip_line(self, what: str) -> None:
        self.lines += 1
        self.problem(what)

    def skipped(self) -> Skipped:
        return Skipped(self.lines, self.records, self.fields, tuple(self.examples))

    # -- fields ----------------------------------------------------------------------

    def number(self, record: Mapping[str, Any], key: str, *, kind: str,
               required: bool = False, integer: bool = False) -> Any:
        """``record[key]`` as a finite, non-negative number, or None (counted
        as a bad field unless it is simply absent or null and optional)."""
        value = record.get(key)
        if value is None and not required:
            return None
        number = _number(value)
        if number is None:
            if required:
                raise _BadRecord(f"{kind}: {key}={_show(value)} is not a number")
            self.fields += 1
            self.problem(f"{kind}: {key}={_show(value)} is not a number; read as missing")
            return None
        return int(number) if integer else float(number)

    def sample(self, record: Mapping[str, Any]) -> Sample:
        n = self.number
        # Required first: a record that is skipped adds no field problems.
        required = {key: n(record, key, kind="sample", required=True,
                           integer=key.endswith("_bytes"))
                    for key in ("time", "cpu_percent", "memory_used_bytes", "memory_total_bytes",
                                "cores")}
        cores = record.get("cpu_per_core")
        per_core: tuple[float, ...] = ()
        if isinstance(cores, list) and all(_number(c) is not None for c in cores):
            per_core = tuple(float(c) for c in cores)
        elif cores is not None:
            self.fields += 1
            self.problem(f"sample: cpu_per_core={_show(cores)} is not a list of numbers; "
                         "read as missing")
        return Sample(
            **required, cpu_per_core=per_core,
            runnable_threads=n(record, "runnable_threads", kind="sample", integer=True),
            process_rss_bytes=n(record, "process_rss_bytes", kind="sample", integer=True),
            process_cpu_percent=n(record, "process_cpu_percent", kind="sample"),
            process_threads=n(record, "process_threads", kind="sample", integer=True),
            process_count=n(record, "process_count", kind="sample", integer=True),
            load_1m=n(record, "load_1m", kind="sample"),
            gpus=self.gpus(record.get("gpus")))

    def gpus(self, raw: Any) -> tuple[GPUSample, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.fields += 1
            self.problem(f"sample: gpus={_show(raw)} is not a list; read as missing")
            return ()
        out = []
        for entry in raw:
            index = _number(entry.get("index")) if isinstance(entry, dict) else None
            if index is None or index != int(index):
                self.fields += 1
                self.problem(f"sample: GPU entry {_show(entry)} has no integer index; skipped")
                continue
            n = self.number
            out.append(GPUSample(
                index=int(index),
                utilization_percent=n(entry, "utilization_percent", kind="gpu"),
                memory_used_bytes=n(entry, "memory_used_bytes", kind="gpu", integer=True),
                memory_total_bytes=n(entry, "memory_total_bytes", kind="gpu", integer=True),
                temperature_c=n(entry, "temperature_c", kind="gpu"),
                power_w=n(entry, "power_w", kind="gpu"),
                sm_clock_mhz=n(entry, "sm_clock_mhz", kind="gpu", integer=True),
                memory_clock_mhz=n(entry, "memory_clock_mhz", kind="gpu", integer=True)))
        return tuple(out)

    def step(self, record: Mapping[str, Any]) -> StepRecord:
        n = self.number
        return StepRecord(time=n(record, "time", kind="step", required=True),
                          step=n(record, "step", kind="step", required=True, integer=True),
                          data_wait_s=n(record, "data_wait_s", kind="step", required=True),
                          step_s=n(record, "step_s", kind="step", required=True),
                          samples=n(record, "samples", kind="step", required=True, integer=True))

    def meta(self, record: dict[str, Any]) -> dict[str, Any]:
        notes = record.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(x, str) for x in notes):
            self.fields += 1
            self.problem(f"meta: notes={_show(notes)} is not a list of strings; read as missing")
            record["notes"] = [x for x in notes if isinstance(x, str)] \
                if isinstance(notes, list) else []
        return record


class _BadRecord(ValueError):
    pass


#: Larger than any count, byte size or time a sampler writes; keeps sums finite.
_LIMIT = 2.0**63


def _number(value: Any) -> int | float | None:
    """``value`` when it is a finite number in [0, 2**63], else None
    (bools, strings such as "NaN" or "50", lists, objects, NaN, Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _LIMIT else None
    return value if math.isfinite(value) and 0.0 <= value <= _LIMIT else None


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(value).__name__)
    return text if len(text) <= 40 else text[:37] + "..."


def iter_records(path: str | os.PathLike[str],
                 reader: "_Reader | None" = None) -> Iterator[dict[str, Any]]:
    """Each JSON object line of ``path``. A line that is not one (torn by a
    kill, or garbage) is skipped and, given a ``reader``, counted."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TelemetryError(f"cannot read timeline {path}: {exc.strerror or exc}") from None
    reader = reader or _Reader(path)
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        reader.line = number
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            torn = number == len(lines)  # no newline after it: cut short by a kill
            reader.skip_line(("torn last line" if torn else "not a JSON line")
                             + f" {line[:40]!r}")
            continue
        if not isinstance(record, dict):
            reader.skip_line(f"not a JSON object: {line[:40]!r}")
            continue
        yield record


def read_timeline(path: str | os.PathLike[str]) -> Timeline:
    """The samples, steps and first meta line of ``path``; what could not be
    used is skipped and counted in ``Timeline.skipped``."""
    samples: list[Sample] = []
    steps: list[StepRecord] = []
    meta: dict[str, Any] = {}
    reader = _Reader(path)
    for record in iter_records(path, reader):
        kind = record.pop("type", None)
        try:
            if kind == "sample":
                samples.append(reader.sample(record))
            elif kind == "step":
                steps.append(reader.step(record))
            elif kind == "meta" and not meta:  # rotated daemon files repeat it
                meta = reader.meta(record)
        except _BadRecord as exc:
            reader.records += 1
            reader.problem(f"{exc}; record skipped")
    skipped = reader.skipped()
    if skipped:  # the report prints it; a library caller reads Timeline.skipped
        log.info("telemetry: %s: %s", path, skipped.describe())
    if not samples and not steps:
        raise TelemetryError(f"{path}: no usable samples or steps in this timeline"
                             + (f" ({skipped.describe()})" if skipped else ""))
    return Timeline(samples=tuple(samples), steps=tuple(steps), meta=meta, skipped=skipped)
