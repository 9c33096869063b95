"""CPU threads: intra-op and inter-op parallelism, OMP/MKL for children.

Profile options::

    threads:
      intra_op: 16     # torch.set_num_threads
      inter_op: null   # torch.set_num_interop_threads (null: leave as is)
      set_env: true    # export OMP_NUM_THREADS / MKL_NUM_THREADS for child processes

The rule: one intra-op thread per physical core this process may use
(hyper-threads share the FPU and rarely help dense math). The engine
restores the previous values when it is closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile

NAME = "threads"


@dataclass(frozen=True)
class Options:
    intra_op: int | None = None
    inter_op: int | None = None
    set_env: bool = True


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
           else default(True, "child processes (loader workers) inherit OMP/MKL thread counts"))
    return {"intra_op": intra, "inter_op": inter, "set_env": env}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
