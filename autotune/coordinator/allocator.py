"""How the daemon divides the cores among training jobs: by what each job
measured, the functional core (no sockets, no clock).

Every admitted job gets one intra-op thread on a core of its own; each
remaining core goes, one at a time, to the job and resource (one more
thread, or one more loader worker) with the largest estimated gain in
that job's speed relative to its speed on one core. A job that gains
little from cores gives them to one that gains much; when no job is
estimated to gain :data:`MIN_GAIN` from a core, it stays free. More jobs
than cores: the later ones wait (``threads == 0``) until a core frees, so
the sum of threads and workers never exceeds the usable cores.

The estimate comes from the job's observations (epochs measured under
earlier shares, see :class:`Observation`):

* compute: the observed rate without the data wait, scaled between
  thread counts by Amdahl's law with the parallel fraction fitted to the
  observations at different thread counts (:data:`PRIOR_PARALLEL` until
  two thread counts have been measured);
* input: the loading time per sample seen at the observed worker count;
  with ``w`` workers loading overlaps the step and spreads over ``w``
  processes. A job that never waited for data gains nothing from workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

#: Parallel fraction assumed for a job measured at one thread count only:
#: a second thread is estimated at 1.5x. Replaced by the fit once measured.
PRIOR_PARALLEL = 0.67

#: A core gives less than this relative gain to every job: it stays free.
MIN_GAIN = 0.03


@dataclass(frozen=True)
class Observation:
    """One epoch of a job measured under a share."""

    threads: int
    loader_workers: int
    samples_per_s: float
    #: Fraction of the epoch spent waiting for the DataLoader (0-1).
    data_wait: float

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Observation":
        threads, workers = data.get("threads"), data.get("loader_workers")
        rate, wait = data.get("samples_per_s"), data.get("data_wait")
        if (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
                or not isinstance(workers, int) or isinstance(workers, bool) or workers < 0
                or not isinstance(rate, (int, float)) or not rate > 0
                or not isinstance(wait, (int, float)) or not 0 <= wait <= 1):
            raise ValueError(f"not an observation: {dict(data)!r}")
        return cls(threads, workers, float(rate), float(wait))

    def to_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "loader_workers": self.loader_workers,
                "samples_per_s": self.samples_per_s, "data_wait": self.data_wait}


@dataclass(frozen=True)
class Demand:
    """A registered job as the allocator sees it."""

    job: str
    observations: tuple[Observation, ...] = ()
    #: False when its loader cannot take workers (not a torch DataLoader,
    #: an IterableDataset): it gets threads only.
    loader_workers_usable: bool = True


@dataclass(frozen=True)
class Grant:
    """A job's share: threads and loader workers on ``cpus`` (one each)."""

    job: str
    threads: int
    loader_workers: int
    cpus: tuple[int, ...]
    reason: str

    @property
    def waiting(self) -> bool:
        return self.threads == 0


class SpeedModel:
    """A job's samples/s at ``(threads, workers)``, estimated from its observations."""

    def __init__(self, observations: Sequence[Observation]) -> None:
        self.observations = tuple(observations)
        self.parallel = _fit_parallel(self.observations)
        self.measured = bool(self.observations)
        if self.observations:
            anchor = self.observations[-1]  # the latest: conditions as they are now
            per_sample = 1.0 / anchor.samples_per_s
            self._compute_1 = per_sample * (1 - anchor.data_wait) * _speedup(self.parallel,
                                                                             anchor.threads)
            wait = per_sample * anchor.data_wait
            if anchor.loader_workers == 0:
                self._load = wait  # loading ran in the step's process, all of it waited for
            else:  # workers hid loading up to the step's time: what shows is the excess
                compute = self._compute_1 / _speedup(self.parallel, anchor.threads)
                self._load = anchor.loader_workers * (wait + compute) if wait > 0 else 0.0
        else:
            self._compute_1, self._load = 1.0, 0.0

    def rate(self, threads: int, workers: int) -> float:
        compute = self._compute_1 / _speedup(self.parallel, threads)
        if workers == 0:
            return 1.0 / (compute + self._load)
        return 1.0 / max(compute, self._load / workers)

    def describe(self) -> str:
        if not self.measured:
            return "not measured yet: threads by the prior, no loader workers"
        last = self.observations[-1]
        fitted = ("fitted" if len({o.threads for o in self.observations}) > 1 else "prior")
        return (f"measured {last.samples_per_s:.1f} samples/s at {last.threads} thread(s), "
                f"{last.loader_workers} worker(s), {last.data_wait:.0%} data wait; "
                f"parallel fraction {self.parallel:.2f} ({fitted})")


def _speedup(parallel: float, threads: int) -> float:
    return 1.0 / ((1.0 - parallel) + parallel / max(1, threads))


def _fit_parallel(observations: Sequence[Observation]) -> float:
    """The Amdahl parallel fraction from the compute rates (rate without the
    data wait) at the lowest and the highest thread count observed."""
    by_threads: dict[int, float] = {}
    for o in observations:
        by_threads[o.threads] = o.samples_per_s * max(1e-6, 1 - o.data_wait)
    if len(by_threads) < 2:
        return PRIOR_PARALLEL
    low, high = min(by_threads), max(by_threads)
    ratio = by_threads[high] / by_threads[low]  # measured speed-up from low to high
    # ratio = (1 - p + p/low) / (1 - p + p/high), solved for p.
    denominator = ratio * (1 - 1 / high) - (1 - 1 / low)
    if denominator <= 0:
        return 0.0  # no gain (or a loss) from more threads
    return max(0.0, min(1.0, (ratio - 1) / denominator))


def allocate(demands: Sequence[Demand], cpus: Sequence[int]) -> dict[str, Grant]:
    """Grants for ``demands`` (in arrival order) on the usable ``cpus``."""
    cpus = tuple(cpus)
    admitted = list(demands[:len(cpus)])
    waiting = list(demands[len(cpus):])
    models = {d.job: SpeedModel(d.observations) for d in admitted}
    threads = {d.job: 1 for d in admitted}
    workers = {d.job: 0 for d in admitted}
    free = len(cpus) - len(admitted)
    while free > 0:
        # Largest gain first; on a tie, the earlier job, and a thread before a worker.
        best: tuple[float, int, bool] | None = None
        chosen: tuple[str, str] | None = None
        for order, demand in enumerate(admitted):
            model = models[demand.job]
            t, w = threads[demand.job], workers[demand.job]
            base, now = model.rate(1, 0), model.rate(t, w)
            options = [("thread", model.rate(t + 1, w))]
            if demand.loader_workers_usable and model.measured:
                options.append(("worker", model.rate(t, w + 1)))
            for resource, rate in options:
                key = ((rate - now) / base, -order, resource == "thread")
                if best is None or key > best:
                    best, chosen = key, (resource, demand.job)
        if best is None or chosen is None or best[0] < MIN_GAIN:
            break
        resource, job = chosen
        (threads if resource == "thread" else workers)[job] += 1
        free -= 1
    grants: dict[str, Grant] = {}
    at = 0
    total = len(demands)
    for demand in admitted:
        n = threads[demand.job] + workers[demand.job]
        mine = cpus[at:at + n]
        at += n
        reason = (f"daemon: {total} job(s) on {len(cpus)} usable core(s), this one "
                  f"{threads[demand.job]} thread(s) + {workers[demand.job]} loader worker(s) "
                  f"on cpu(s) {_ranges(mine)}; {models[demand.job].describe()}")
        grants[demand.job] = Grant(demand.job, threads[demand.job], workers[demand.job], mine,
                                   reason)
    for position, demand in enumerate(waiting, start=1):
        grants[demand.job] = Grant(demand.job, 0, 0, (), (
            f"daemon: {total} job(s) on {len(cpus)} usable core(s): every core holds a job's "
            f"thread, so this one waits (number {position} in line) until a job leaves"))
    return grants


def _ranges(cpus: Sequence[int]) -> str:
    """``0-3,6``: cpu ids as the kernel's cpulist format writes them."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and "-" not in parts[-1] and int(parts[-1]) == cpu - 1:
            parts[-1] = f"{parts[-1]}-{cpu}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == cpu - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts) or "-"
