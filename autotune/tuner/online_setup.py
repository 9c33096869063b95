"""``apply(tune="online")``: no trial before training -- the search space,
the start and the cache are made here, and the search runs in the engine.

:func:`prepare_online` makes the :class:`~autotune.tuner.online.Space` (the
same groups, priors, candidates and baseline as the up-front search, from
what the plugins declare), picks where the run starts -- PyTorch defaults,
or the winner an earlier online run cached, which the run then only
re-checks against the defaults -- and returns the plan to apply with it and
the :class:`OnlineTuning` that ``Tuned.engine()`` attaches to its engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from autotune.plan.plan import Plan, Source
from autotune.tuner.cache import TuningCache, make_key
from autotune.tuner.candidates import Config, baseline_config, searched_plugins
from autotune.tuner.online import OnlineTuner
from autotune.tuner.online_space import Space
from autotune.tuner.online_report import OnlineReport
from autotune.tuner.options import OnlineOptions, SearchOptions
from autotune.tuner.search import search_groups
from autotune.tuner.state import Snapshot
from autotune.tuner.tuning import cache_parts, valid_settings
from autotune.workload.batches import model_device

log = logging.getLogger("autotune.tuner.online")


@dataclass(frozen=True)
class _Slot:
    """Where this workload's online result is cached."""

    store: TuningCache
    key: str
    parts: dict[str, Any]


class ShowsReport:
    """Shows :attr:`report`, an :class:`~autotune.tuner.online_report.OnlineReport`."""

    report: OnlineReport

    def table(self, width: int = 120) -> str:
        return self.report.table(width)

    def summary(self) -> str:
        return self.report.summary()

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()

    def to_json(self) -> str:
        return self.report.to_json()

    def plot(self, path: Any) -> Path:
        return self.report.plot(path)


class OnlineTuning(ShowsReport):
    """``tuned.tuning`` after ``apply(tune="online")``: attaches the search
    to each engine built from ``tuned`` (:meth:`attach`), and shows the
    latest run's :class:`~autotune.tuner.online_report.OnlineReport`."""

    def __init__(self, space: Space, options: OnlineOptions, slot: _Slot | None) -> None:
        self.space = space
        self.options = options
        self._slot = slot
        #: The latest run's report (empty until an engine trains).
        self.report = OnlineReport()

    @property
    def mode(self) -> str:
        return "online"

    def attach(self, engine: Any, budget: Any = None) -> OnlineTuner:
        """The live adapter that runs the search inside ``engine``'s training
        (``budget``: a rehearsal's, see :mod:`autotune.tuner.rehearsal`)."""
        self.report = OnlineReport(mode="online" if budget is None else "rehearsal")
        return OnlineTuner(engine, self.space, self.options, self.report, on_settled=self._store,
                           budget=budget)

    def _store(self, report: OnlineReport) -> None:
        slot = self._slot
        if slot is None:
            return
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry = {"created": created, "mode": "online", "parts": slot.parts,
                 "complete": report.complete, "winner_settings": report.winner_settings,
                 "report": report.to_dict()}
        try:
            report.cache_path = str(slot.store.store(slot.key, entry))
        except OSError as exc:
            report.cache_error = (f"the tuning cache at {slot.store.root} cannot be written "
                                  f"({exc.strerror or exc})")


def prepare_online(model: torch.nn.Module, loader: Any, optimizer: Any, loss_fn: Any,
                   plan: Plan, *, context: Any, manager: Any, device: torch.device,
                   options: OnlineOptions, remeasure: bool = False,
                   cache: bool = True) -> tuple[Plan, OnlineTuning]:
    """The plan the run starts with and the :class:`OnlineTuning` to attach."""
    context = replace(context, workload=replace(context.workload, loader=loader))
    knobs = manager.knobs(context, plan)
    # By prior alone: every chunk is timed end to end, loader included, so
    # the loader need not wait for the step's settings as in the up-front
    # search -- on an input-bound job it is what matters most.
    groups = sorted(search_groups(plan, context, device.type, knobs, None, manager=manager),
                    key=lambda group: -group.prior)
    baseline = baseline_config(plan, knobs, searched_plugins(knobs, groups))
    priors = {p: gain for p, (gain, _why) in
              manager.search_priors(context, device.type, plan.plugins()).items()}
    slot = _slot(model, loader, optimizer, loss_fn, plan, context, device, options) \
        if cache and loader is not None and optimizer is not None else None
    start = _cached_start(slot, plan, knobs) if slot is not None and not remeasure else None
    space = Space(plan, context, manager, knobs, tuple(groups), baseline, start or baseline,
                  device.type, recheck=start is not None, priors=priors)
    if start is not None:
        reason = (f"measured online by an earlier run (cached in {slot.store.path(slot.key)}); "
                  "re-checked against PyTorch defaults during this run")
        source = Source.MEASURED
    else:
        reason = "PyTorch's default: online tuning starts here and tries the alternatives " \
                 "while training"
        source = Source.DEFAULT
    started = plan
    for plugin, values in space.start.values.items():
        if plugin in plan.settings and values:
            started = started.with_values(plugin, values, source, reason, force=True)
    return started, OnlineTuning(space, options, slot)


def _slot(model: torch.nn.Module, loader: Any, optimizer: Any, loss_fn: Any, plan: Plan,
          context: Any, device: torch.device, options: OnlineOptions) -> _Slot:
    if model_device(model) != device:
        model.to(device)  # apply_plan would move it anyway; snapshot it where it trains
    parts = cache_parts(model, loader, optimizer, loss_fn, plan, context, device, SearchOptions(),
                        Snapshot.capture(model, optimizer, loader))
    parts["search"] = {"mode": "online", "margin": options.margin, "allow": list(options.allow)}
    return _Slot(TuningCache(), make_key(parts), parts)


def _cached_start(slot: _Slot, plan: Plan, knobs: Any) -> Config | None:
    """An earlier online run's winner, when it is to be trusted; None otherwise
    (absent, unfinished, or of the wrong shape: then forgotten)."""
    entry = slot.store.load(slot.key)
    if entry is None:
        return None
    try:
        if entry.get("mode") != "online" or not isinstance(entry.get("complete"), bool):
            raise ValueError("not an online tuning entry")
        winner = valid_settings(entry["winner_settings"], plan, knobs)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring online tuning cache entry %s (%s); searching again",
                    slot.store.path(slot.key), exc)
        slot.store.forget(slot.key)
        return None
    if not entry["complete"]:
        return None
    log.info("online tuning starts from the cached winner in %s", slot.store.path(slot.key))
    return Config(winner)
