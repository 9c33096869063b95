"""How training shares the machine: the typed answers of the resource hooks,
and the one place that sets torch's thread pools.

* :class:`Share` -- a part of the machine one process or fold gets (CPU
  threads, loader workers, whether it shares its process with others).
  Callers that divide the machine (``cross_validate``'s parallel folds,
  ranks of a DDP job on one node, jobs of a daemon) ask the plugins how
  their settings change under a share (``autotune_resource_share``) and
  write the answers into the plan with
  :func:`autotune.plugin.manager.share_plan`.
* :class:`FoldPlan` -- how cross-validation folds run at once, what a
  plugin's ``autotune_fold_schedule`` returns.
* :func:`set_threads` -- torch's intra-/inter-op pools and the OMP/MKL
  variables child processes read, with an undo.

Core code names no plugin: what a share means for threads or loader
workers is decided by the plugins that own those settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from autotune.plan.report import Kind
from autotune.plan.setting import Setting

#: Where cross-validation folds can run: in this process one after another,
#: loky worker processes, threads of this process, a Dask cluster.
FOLD_BACKENDS = ("sequential", "loky", "threading", "dask")

#: The thread-count variables child processes (and BLAS libraries) read.
THREAD_ENV_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _check_count(name: str, value: Any, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}"
                         f"{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class Share:
    """The part of the machine one share (a fold, a rank, a job) runs with.

    Passed to ``autotune_resource_share``; each plugin says how its own
    settings change under it. A user's override is the plugins' to keep.
    """

    #: CPU threads (cores) the share runs with: a plugin that sizes thread
    #: pools uses this many intra-op threads. ``None``: not divided, the
    #: plan's thread settings stand.
    threads: int | None = None
    #: The most DataLoader worker processes the share may start (they come
    #: out of its cores); ``None``: no cap. 0 means loading in the process.
    loader_workers: int | None = None
    #: True when the shares run in one process (threads of it): process-wide
    #: state such as environment variables is not the share's to change.
    shared_process: bool = False
    #: Why: what divides the machine ("cross_validate: 4 fold(s) at once,
    #: 2 thread(s) each"); plugins put it in their settings' reasons.
    reason: str = ""
    #: The cpu ids the share runs on (its threads and workers, one each);
    #: empty: not pinned.
    cpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_count("Share.threads", self.threads, 1, optional=True)
        _check_count("Share.loader_workers", self.loader_workers, 0, optional=True)
        object.__setattr__(self, "cpus", tuple(int(c) for c in self.cpus))


@dataclass(frozen=True)
class FoldPlan:
    """How cross-validation folds run: the answer of ``autotune_fold_schedule``."""

    #: One of :data:`FOLD_BACKENDS`.
    backend: str
    #: Folds at once (1 for ``sequential``).
    concurrency: int = 1
    #: Intra-op threads each fold runs with; ``None``: the plan's thread
    #: settings stand (one fold at a time with the whole machine).
    threads_per_fold: int | None = None
    #: The most DataLoader workers each fold may start; ``None``: no cap.
    loader_workers: int | None = None
    #: Devices the folds are spread over, fold ``i`` on ``devices[i % n]``;
    #: empty: every fold on the device cross-validation was asked to use.
    devices: tuple[str, ...] = ()
    #: One line: why this schedule (shown in the plan and the log).
    reason: str = ""
    #: The measured peak memory of one fold's training step (CUDA), or 0.
    per_fold_memory_bytes: int = 0
    #: The answering plugin's own settings as the folds run with them
    #: (``{key: Setting}``), written into the fold plan under its name.
    settings: Mapping[str, Setting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in FOLD_BACKENDS:
            raise ValueError(f"FoldPlan.backend={self.backend!r} is not one of {FOLD_BACKENDS}")
        _check_count("FoldPlan.concurrency", self.concurrency, 1, optional=False)
        _check_count("FoldPlan.threads_per_fold", self.threads_per_fold, 1, optional=True)
        _check_count("FoldPlan.loader_workers", self.loader_workers, 0, optional=True)
        _check_count("FoldPlan.per_fold_memory_bytes", self.per_fold_memory_bytes, 0,
                     optional=False)
        object.__setattr__(self, "devices", tuple(str(d) for d in self.devices))
        object.__setattr__(self, "settings", dict(self.settings))

    def device_for(self, fold: int, default: str) -> str:
        """The device fold ``fold`` trains on."""
        return self.devices[fold % len(self.devices)] if self.devices else default


# -- threads ---------------------------------------------------------------------------


def set_threads(intra_op: int | None, inter_op: int | None = None, set_env: bool = False,
                note: Callable[[Kind, str], None] = lambda kind, message: None
                ) -> Callable[[], None]:
    """Set torch's thread pools (and, with ``set_env``, the OMP/MKL variables
    child processes read); returns the undo. ``note(kind, message)`` hears
    what happened.

    The inter-op pool can be sized only once per process and only before
    parallel work has started; otherwise it stays as it is, with a warning.
    """
    import torch  # here, not above: planning and the command line need no torch

    undo: list[Callable[[], None]] = []
    if intra_op is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(int(intra_op))
        undo.append(lambda: torch.set_num_threads(before))
        if before == intra_op:
            note(Kind.SKIPPED, f"intra-op threads already {intra_op}")
        else:
            note(Kind.APPLIED, f"intra-op threads {before} -> {intra_op} (restored at close)")
    if inter_op is not None:
        current = torch.get_num_interop_threads()
        if current != inter_op:
            try:
                torch.set_num_interop_threads(int(inter_op))
                note(Kind.APPLIED, f"inter-op threads {current} -> {inter_op} (torch cannot "
                     "change it again in this process, so it is not restored)")
            except RuntimeError as exc:
                note(Kind.WARNING, f"inter-op threads stay at {current}: torch sizes that pool "
                     f"once per process, before parallel work starts ({str(exc).strip()})")
    if set_env and intra_op is not None:
        for variable in THREAD_ENV_VARIABLES:
            previous = os.environ.get(variable)
            os.environ[variable] = str(intra_op)
            undo.append(lambda v=variable, p=previous: _restore_env(v, p))
        note(Kind.APPLIED, f"{' and '.join(THREAD_ENV_VARIABLES)}={intra_op} for child processes")

    def restore() -> None:
        for step in reversed(undo):
            step()
        undo.clear()

    return restore


def _restore_env(variable: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = previous
