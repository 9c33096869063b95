"""DataLoader: worker processes, pinned memory, prefetching.

Profile options (an int, or ``[min, max]`` for the rules to pick within)::

    dataloader:
      num_workers: [10, 18]
      prefetch_factor: [6, 8]
      pin_memory: true
      persistent_workers: true

Rules: with a GPU, the loader should keep it fed, so ``num_workers`` is the
usable CPU count minus two (one for the training loop, one for the system),
at most 8 without a profile, clamped into the profile's range, and never
above the cores this process may use (cgroup quota and affinity). On a
CPU-only machine the workers compete with the compute threads, so the rule
keeps ``num_workers`` at a quarter of the cores; the tuner measures more.
``pin_memory`` only with CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from autotune.sdk import (
    LOADER, Context, Hardware, Kind, Knob, PluginOptions, Setting, Share, Source, Workload,
    clamp_to, default, describe_bounds, from_profile, hookimpl, loader_settings, option,
    parse_options, rebuild_loader, true_or_false, whole_number, workers_adjustable)

NAME = "dataloader"
#: Without a profile, more workers than this rarely help one GPU.
MAX_DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class Options(PluginOptions):
    num_workers: int | tuple[int, int] | None = option(
        None, "worker processes; an int or [min, max] for the rule to pick within", minimum=0)
    prefetch_factor: int | tuple[int, int] | None = option(
        None, "batches each worker loads ahead; an int or [min, max]", minimum=1)
    pin_memory: bool | None = option(None, "page-locked host memory (only with CUDA)")
    persistent_workers: bool | None = option(None, "keep workers alive between epochs")


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    options = parse_options(NAME, Options, dict(profile_options or {}))
    cores = hardware.cpu.worker_budget
    if hardware.has_cuda:
        rule = max(1, min(cores - 2, MAX_DEFAULT_WORKERS)) if options.num_workers is None else max(1, cores - 2)
        why = f"{cores} usable cores, keep the GPU fed"
    else:
        rule = cores // 4
        why = f"CPU training: workers compete with {cores} compute cores"
    if options.num_workers is not None:
        wanted = clamp_to(rule, options.num_workers)
        workers_n = min(wanted, cores)
        note = "" if workers_n == wanted else f", capped at the {cores} usable cores"
        workers = from_profile(workers_n, f"profile range {describe_bounds(options.num_workers)}{note}")
    else:
        workers = default(rule, why)
    settings = {"num_workers": workers, **follow_workers(workers.value, options)}
    if options.pin_memory is not None:
        pin = options.pin_memory and hardware.has_cuda
        settings["pin_memory"] = from_profile(pin, "profile" if pin == options.pin_memory
                                              else "profile asks for pinning, but there is no CUDA")
    else:
        settings["pin_memory"] = default(hardware.has_cuda, "page-locked host memory for fast H2D copies"
                                         if hardware.has_cuda else "no CUDA: nothing to pin for")
    return settings


def follow_workers(n: int, options: Options) -> dict[str, Setting]:
    """``prefetch_factor`` and ``persistent_workers`` for ``n`` workers: they
    follow ``num_workers``, whether planned, overridden or capped."""
    if n > 0:
        if options.prefetch_factor is not None:
            pf = options.prefetch_factor
            value = pf if isinstance(pf, int) else pf[0]
            prefetch = from_profile(value, f"profile range {describe_bounds(pf)}")
        else:
            prefetch = default(2, "PyTorch's default")
        persistent = (from_profile(options.persistent_workers, "profile")
                      if options.persistent_workers is not None
                      else default(True, "keep workers alive between epochs"))
        return {"prefetch_factor": prefetch, "persistent_workers": persistent}
    return {"prefetch_factor": default(None, "no workers: loading runs in the main process"),
            "persistent_workers": default(False, "no workers")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_follow_overrides(context: Context, overrides: Mapping[str, Any]) -> dict[str, Setting]:
    """A user's ``num_workers`` decides ``prefetch_factor`` and
    ``persistent_workers`` as a planned one would (the manager keeps any of
    them the user set too)."""
    if "num_workers" not in overrides:
        return {}
    n = int(overrides["num_workers"] or 0)
    options = parse_options(NAME, Options, dict(context.options_for(NAME)))
    return {key: replace(setting, reason=f"{setting.reason} (for num_workers={n}, set by the user)")
            for key, setting in follow_workers(n, options).items()}


@hookimpl
def autotune_knobs(context: Context) -> dict[str, Knob]:
    off = loader_settings(context.workload.loader)
    return {key: Knob(off=value, phase=LOADER, check=CHECKS.get(key))
            for key, value in off.items()}


#: What a user may set each key to (what DataLoader accepts).
CHECKS = {"num_workers": whole_number(0), "prefetch_factor": whole_number(1, or_null=True),
          "pin_memory": true_or_false(), "persistent_workers": true_or_false()}


# -- application -----------------------------------------------------------------


def _describe(workers: int, pin: bool, persistent: bool, prefetch: int | None) -> str:
    extra = f", persistent_workers={persistent}, prefetch_factor={prefetch or 2}" if workers else ""
    return f"num_workers={workers}, pin_memory={pin}{extra}"


@hookimpl
def autotune_apply_loader(loader: Any, plan: Any, context: Context, report: Any) -> Any:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    if type(loader) is not DataLoader:
        report.add(NAME, Kind.SKIPPED, f"{type(loader).__name__} is not a torch DataLoader "
                   "(a subclass may rely on its own constructor): left as is")
        return None
    values = plan.values(NAME)
    workers = int(values.get("num_workers") or 0)
    budget = context.hardware.cpu.worker_budget
    if workers > budget:
        report.add(NAME, Kind.WARNING, f"num_workers={workers} capped at the {budget} cores "
                   "this process may use (CPU quota and affinity)")
        workers = budget
    if isinstance(loader.dataset, IterableDataset) and workers != loader.num_workers:
        report.add(NAME, Kind.SKIPPED, f"kept num_workers={loader.num_workers}: every worker "
                   "iterates its own copy of an IterableDataset, so another count could repeat "
                   "or drop samples")
        workers = loader.num_workers
    pin = bool(values.get("pin_memory"))
    if pin and not torch.cuda.is_available():
        report.add(NAME, Kind.SKIPPED, "pin_memory off: no CUDA device to copy to")
        pin = False
    persistent = bool(values.get("persistent_workers")) and workers > 0
    prefetch = values.get("prefetch_factor") if workers > 0 else None
    before = _describe(loader.num_workers, loader.pin_memory, loader.persistent_workers,
                       loader.prefetch_factor)
    after = _describe(workers, pin, persistent, prefetch)
    if before == after:
        report.add(NAME, Kind.SKIPPED, f"the loader already has {after}")
        return None
    report.add(NAME, Kind.APPLIED, f"rebuilt the DataLoader: {before} -> {after}")
    return rebuild_loader(loader, num_workers=workers, pin_memory=pin,
                          persistent_workers=persistent, prefetch_factor=prefetch)


# -- candidates for measured tuning ------------------------------------------------


def candidates(hardware: Hardware, plan_values: Mapping[str, Any] | None = None,
               workload: Workload | None = None,
               share: Share | None = None) -> list[dict[str, Any]]:
    """Loader settings worth a trial, measured end to end with the step.

    With a GPU: worker counts around the rule (the rule first, then more,
    then fewer, up to the usable cores), each with pinned memory and
    persistent workers, and a deeper prefetch for the rule's count. On a
    CPU the workers compete with the compute threads, so the counts are
    0, 1, half and all of the usable cores. Nothing for a loader that is not
    a plain torch DataLoader or iterates an IterableDataset (another worker
    count would repeat or drop samples there)."""
    loader = workload.loader if workload is not None else None
    if not workers_adjustable(loader):
        return []
    cores = hardware.cpu.worker_budget
    if share is not None and share.loader_workers is not None:
        cores = share.loader_workers  # a job sharing the machine: what its share allows
    if hardware.has_cuda:
        rule = max(1, min(cores - 2, MAX_DEFAULT_WORKERS))
        counts = [rule, *(n for n in (16, 8, 4, 2) if n != rule), 0]
    else:
        counts = [0, 1, max(1, cores // 2), cores]
    seen: list[int] = []
    for n in counts:
        if n <= cores and n not in seen:
            seen.append(n)

    def settings(n: int, prefetch: int | None = 2) -> dict[str, Any]:
        return {"num_workers": n, "pin_memory": hardware.has_cuda,
                "persistent_workers": n > 0, "prefetch_factor": prefetch if n > 0 else None}

    out = [settings(n) for n in seen]
    if hardware.has_cuda and seen and seen[0] > 0:
        out.insert(1, settings(seen[0], 4))
    return out


@hookimpl
def autotune_candidates(context: Context, plan: Any) -> list[dict[str, Any]]:
    return candidates(context.hardware, plan.values(NAME), context.workload, context.share)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if device_type == "cuda":
        return 0.5, "an input-bound GPU waits for the loader"
    return 0.1, "loader workers compete with compute threads on a CPU"


@hookimpl
def autotune_prune_candidate(context: Context, values: Mapping[str, Any],
                             device_type: str) -> str | None:
    budget = context.hardware.cpu.worker_budget
    if values.get("pin_memory") and device_type != "cuda":
        return "pinned memory only speeds up copies to a GPU"
    if int(values.get("num_workers") or 0) > budget:
        return f"more workers than the {budget} usable cores"
    share = context.share
    if share is not None and share.loader_workers is not None \
            and int(values.get("num_workers") or 0) > share.loader_workers:
        return f"more workers than the {share.loader_workers} this job's share allows"
    return None


# -- sharing the machine ------------------------------------------------------------


@hookimpl
def autotune_resource_share(plan: Any, share: Share) -> dict[str, Setting]:
    """Loader workers come out of the share: ``num_workers`` is capped at the
    share's ``loader_workers`` (a user's override too, since the share leaves
    no choice); with no workers left, ``persistent_workers`` and
    ``prefetch_factor`` go with them."""
    if share.loader_workers is None:
        return {}
    workers = int(plan.get(NAME, "num_workers", 0) or 0)
    allowed = share.loader_workers
    if workers <= allowed:
        return {}
    why = (f"{share.reason}; loader workers come out of the share's {share.threads} "
           "thread(s)" if share.threads is not None else share.reason)
    out = {"num_workers": Setting(allowed, Source.DEFAULT, why)}
    if allowed == 0:
        out.update({key: Setting(s.value, Source.DEFAULT, s.reason)
                    for key, s in follow_workers(0, Options()).items()})
    return out


# -- changes during a run (autotune.live.adapter) ------------------------------------------------

#: An epoch that waited for data this much of its time is input-bound:
#: more loader workers are worth a try.
INPUT_BOUND = 0.2


@hookimpl
def autotune_live_candidate(engine: Any, metrics: Any, share: Share | None) -> dict[str, Any] | None:
    """Input-bound: twice the workers (two from none), within the share."""
    state = engine.plugin_state(NAME)
    if metrics.data_wait_fraction < INPUT_BOUND or not workers_adjustable(state.get("given")):
        return None
    current = int(engine.plan.get(NAME, "num_workers", 0) or 0)
    if share is not None and share.loader_workers is not None:
        allowed = share.loader_workers
    elif engine.context is not None:
        allowed = engine.context.hardware.cpu.worker_budget
    else:
        return None
    proposed = min(allowed, current * 2 if current else 2)
    if proposed <= current:
        return None
    return {"num_workers": proposed, "persistent_workers": True, "prefetch_factor": 2}


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    """Loader settings change during a run. Under online tuning
    (``engine.changes_mid_epoch``) from the next batch on, through the
    switchable loader (same batches, same order); otherwise workers change
    between epochs: the next epoch's loader is rebuilt
    (``autotune_epoch_loader``) from the one given to ``fit``."""
    state = engine.plugin_state(NAME)
    if engine.changes_mid_epoch:
        if set(values) - set(LIVE_KEYS):
            return False
        state.setdefault("wanted", {}).update(values)
        if state.get("switchable") is not None:
            state["switchable"].switch(values)
        return True
    if not workers_adjustable(state.get("given")) or set(values) - {
            "num_workers", "persistent_workers", "prefetch_factor"}:
        return False
    state["live"] = {key: engine.plan.get(NAME, key) for key in
                     ("num_workers", "persistent_workers", "prefetch_factor")}
    if not state.get("closing"):
        state["closing"] = True
        engine.on_close(lambda: _retire(state.pop("rebuilt", None)))
    return True


#: What can change mid-epoch through the switchable loader.
LIVE_KEYS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")


@hookimpl
def autotune_epoch_loader(engine: Any, loader: Any, epoch: int) -> Any:
    state = engine.plugin_state(NAME)
    state["given"] = loader
    if engine.changes_mid_epoch and workers_adjustable(loader):
        return _switchable(engine, state, loader)
    wanted = state.get("live")
    if not wanted or not workers_adjustable(loader):
        return None
    key = (id(loader), tuple(sorted(wanted.items())))
    rebuilt = state.get("rebuilt")
    if rebuilt is not None and rebuilt[0] == key:
        return rebuilt[1]  # its persistent workers carry on
    _retire(rebuilt)
    workers = int(wanted["num_workers"] or 0)
    if (workers, bool(wanted["persistent_workers"]) and workers > 0) == (
            loader.num_workers, loader.persistent_workers):
        state.pop("rebuilt", None)
        return None  # back to what the given loader has
    new = rebuild_loader(loader, num_workers=workers, pin_memory=loader.pin_memory,
                         persistent_workers=bool(wanted["persistent_workers"]) and workers > 0,
                         prefetch_factor=wanted["prefetch_factor"] if workers > 0 else None)
    state["rebuilt"] = (key, new)
    engine.note(NAME, Kind.APPLIED, f"epoch {epoch}: loader rebuilt with num_workers={workers}")
    return new


def _switchable(engine: Any, state: dict[str, Any], loader: Any) -> Any:
    """The loader ``fit`` was given, as one whose settings can change at any
    batch (one per given loader, its worker pools kept between epochs)."""
    from autotune.sdk import SwitchableLoader

    made = state.get("switchable")
    if made is None or made.loader is not loader:
        if made is not None:
            made.close()
        # A batch that fails under settings being tried (a worker died) is
        # loaded again under the ones that worked, once the live adapter
        # has taken its change back.
        made = state["switchable"] = SwitchableLoader(
            loader, state.get("wanted"), on_error=lambda error: engine.recover_live(
                error, "loading"))
        if not state.get("closing_switchable"):
            state["closing_switchable"] = True
            engine.on_close(lambda: state["switchable"].close())
    return made


def _retire(rebuilt: Any) -> None:
    """Stop the persistent workers of a loader no longer used."""
    if rebuilt is None:
        return
    iterator = getattr(rebuilt[1], "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    rebuilt[1]._iterator = None
