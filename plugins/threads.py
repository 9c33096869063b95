"""CPU threads: intra-op and inter-op parallelism, OMP/MKL for children.

Profile options::

    threads:
      intra_op: 16     # torch.set_num_threads
      inter_op: null   # torch.set_num_interop_threads (null: leave as is)
      set_env: false   # export OMP_NUM_THREADS / MKL_NUM_THREADS for child processes

The rule: one intra-op thread per physical core this process may use
(hyper-threads share the FPU and rarely help dense math). The engine
restores the previous values when it is closed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.knobs import Knob
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile
from autotune.report import Kind

NAME = "threads"


@dataclass(frozen=True)
class Options:
    intra_op: int | None = None
    inter_op: int | None = None
    set_env: bool = False


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    cpu = hardware.cpu
    smt = max(1, cpu.logical_cores // max(1, cpu.physical_cores))
    physical_usable = max(1, int(cpu.usable_cores // smt)) if smt > 1 else cpu.worker_budget
    if options.intra_op is not None:
        intra = from_profile(options.intra_op, "profile sets intra_op")
    else:
        intra = default(physical_usable, f"one thread per usable physical core ({physical_usable})")
    inter = (from_profile(options.inter_op, "profile sets inter_op") if "inter_op" in given
             else default(None, "PyTorch's default inter-op pool"))
    env = (from_profile(options.set_env, "profile sets set_env") if "set_env" in given
           else default(False, "child processes read OMP/MKL thread counts as they find them "
                               "(DataLoader workers use one thread each anyway)"))
    return {"intra_op": intra, "inter_op": inter, "set_env": env}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    import torch

    # "Off" is what this process runs with now (torch's own choice, or the
    # user's torch.set_num_threads).
    return {"intra_op": Knob(off=torch.get_num_threads()), "inter_op": Knob(off=None),
            "set_env": Knob(off=False)}


# -- application -----------------------------------------------------------------

ENV_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def apply_threads(intra_op: int | None, inter_op: int | None = None, set_env: bool = False,
                  note: Callable[[Kind, str], None] = lambda kind, message: None
                  ) -> Callable[[], None]:
    """Set torch's thread pools (and the OMP/MKL variables child processes
    read); returns the undo. ``note(kind, message)`` hears what happened.

    The inter-op pool can be sized only once per process and only before
    parallel work has started; otherwise it stays as it is, with a warning.
    """
    import torch

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
        for variable in ENV_VARIABLES:
            previous = os.environ.get(variable)
            os.environ[variable] = str(intra_op)
            undo.append(lambda v=variable, p=previous: _restore_env(v, p))
        note(Kind.APPLIED, f"{' and '.join(ENV_VARIABLES)}={intra_op} for child processes")

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def _restore_env(variable: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = previous


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    values = plan.values(NAME)
    engine.on_close(apply_threads(values.get("intra_op"), values.get("inter_op"),
                                  bool(values.get("set_env")),
                                  lambda kind, message: engine.note(NAME, kind, message)))


# -- candidates for measured tuning ------------------------------------------------


def candidates(hardware: Hardware, plan_values: Mapping[str, Any] | None = None,
               workload: Workload | None = None, loader_workers: int = 0) -> list[dict[str, Any]]:
    """Intra-op thread counts worth a trial: one per usable physical core,
    one per usable logical core (with SMT), and, when DataLoader workers run
    beside the step on a CPU-only machine, the cores the workers leave free."""
    cpu = hardware.cpu
    smt = max(1, cpu.logical_cores // max(1, cpu.physical_cores))
    physical = max(1, int(cpu.usable_cores // smt)) if smt > 1 else cpu.worker_budget
    counts = [physical, cpu.worker_budget]
    if loader_workers > 0 and not hardware.has_cuda:
        counts.append(max(1, cpu.worker_budget - loader_workers))
    out: list[dict[str, Any]] = []
    for n in counts:
        if {"intra_op": n} not in out:
            out.append({"intra_op": n})
    return out


@hookimpl
def autotune_candidates(context: Context, plan: Any) -> list[dict[str, Any]]:
    workers = int(plan.get("dataloader", "num_workers", 0) or 0)
    return candidates(context.hardware, plan.values(NAME), context.workload, workers)
