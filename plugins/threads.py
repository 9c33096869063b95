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

from dataclasses import dataclass
from typing import Any, Mapping

from autotune.sdk import (
    THREAD_ENV_VARIABLES, Context, Hardware, Knob, PluginOptions, Setting, Share, Source, Workload,
    default, from_profile, hookimpl, option, parse_options, set_threads, true_or_false,
    whole_number)

NAME = "threads"


@dataclass(frozen=True)
class Options(PluginOptions):
    intra_op: int | None = option(None, "torch.set_num_threads", minimum=1)
    inter_op: int | None = option(None, "torch.set_num_interop_threads; null: leave as is",
                                  minimum=1, null=True)
    set_env: bool = option(False, "export OMP_NUM_THREADS / MKL_NUM_THREADS for child processes")


@hookimpl
def autotune_options() -> type:
    return Options


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


# First in the plan: the tuner searches plugins of equal prior in plan order,
# and thread counts before the optimizer's kernels is the order it measures.
@hookimpl(tryfirst=True)
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    import torch

    # "Off" is what this process runs with now (torch's own choice, or the
    # user's torch.set_num_threads).
    # Compute threads share the cores with loader workers: measured again
    # once the search has changed the loader.
    return {"intra_op": Knob(off=torch.get_num_threads(), revisit_after_loader=True,
                             check=whole_number(1, or_null=True)),
            "inter_op": Knob(off=None, check=whole_number(1, or_null=True)),
            "set_env": Knob(off=False, check=true_or_false())}


# -- application -----------------------------------------------------------------

#: The variables ``set_env`` exports (kept here under its old name).
ENV_VARIABLES = THREAD_ENV_VARIABLES

#: Set torch's thread pools (and OMP/MKL for child processes); returns the
#: undo. The one thread setter, shared with cross-validation's folds.
apply_threads = set_threads


# First: the pools are sized before any other plugin sets up (and their
# restore, registered first, runs last at close).
@hookimpl(tryfirst=True)
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    values = plan.values(NAME)
    engine.on_close(apply_threads(values.get("intra_op"), values.get("inter_op"),
                                  bool(values.get("set_env")),
                                  lambda kind, message: engine.note(NAME, kind, message)))


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    """The intra-op pool can be resized between epochs (a new share); the
    inter-op pool and the environment cannot."""
    if set(values) - {"intra_op"} or values.get("intra_op") is None:
        return False
    # Undo callbacks run last-first, so the engine's close still ends at the
    # thread count from before the engine.
    engine.on_close(apply_threads(int(values["intra_op"]), None, False,
                                  lambda kind, message: engine.note(NAME, kind, message)))
    return True


# -- candidates for measured tuning ------------------------------------------------


def candidates(hardware: Hardware, plan_values: Mapping[str, Any] | None = None,
               workload: Workload | None = None, loader_workers: int = 0,
               share: Share | None = None) -> list[dict[str, Any]]:
    """Intra-op thread counts worth a trial: one per usable physical core,
    one per usable logical core (with SMT), and, when DataLoader workers run
    beside the step on a CPU-only machine, the cores the workers leave free."""
    cpu = hardware.cpu
    smt = max(1, cpu.logical_cores // max(1, cpu.physical_cores))
    physical = max(1, int(cpu.usable_cores // smt)) if smt > 1 else cpu.worker_budget
    counts = [physical, cpu.worker_budget]
    if loader_workers > 0 and not hardware.has_cuda:
        counts.append(max(1, cpu.worker_budget - loader_workers))
    if share is not None and share.threads is not None:
        # A job sharing the machine measures only what its share allows.
        counts = [min(n, share.threads) for n in counts]
    out: list[dict[str, Any]] = []
    for n in counts:
        if {"intra_op": n} not in out:
            out.append({"intra_op": n})
    return out


@hookimpl
def autotune_candidates(context: Context, plan: Any) -> list[dict[str, Any]]:
    workers = int(plan.get("dataloader", "num_workers", 0) or 0)
    return candidates(context.hardware, plan.values(NAME), context.workload, workers,
                      context.share)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if device_type == "cuda":
        return 0.02, "intra-op threads rarely matter when a GPU computes"
    return 0.05, "compute threads vs loader workers on the same cores"


# -- sharing the machine ------------------------------------------------------------


@hookimpl
def autotune_resource_share(plan: Any, share: Share) -> dict[str, Setting]:
    """Each share runs with its own number of intra-op threads (a user's
    ``intra_op`` stands); shares in one process leave its environment alone."""
    out: dict[str, Setting] = {}
    current = plan.setting(NAME, "intra_op")
    if (share.threads is not None and current is not None
            and current.source is not Source.OVERRIDE and current.value != share.threads):
        out["intra_op"] = Setting(share.threads, Source.DEFAULT, share.reason)
    if share.shared_process and plan.get(NAME, "set_env"):
        out["set_env"] = Setting(False, Source.DEFAULT, f"{share.reason}: the shares run in "
                                 "one process, which has one environment")
    return out
