"""Detect, match a profile, ask the plugins, apply overrides: the plan."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from autotune.machine.detect import detect
from autotune.machine.hardware import Hardware
from autotune.plan.knobs import check_overrides, guard_plan
from autotune.plan.plan import Plan, Source
from autotune.plugin.context import Context, Workload
from autotune.plugin.manager import PluginManager, share_plan
from autotune.plugin.options import option_schemas
from autotune.profile import Profile, Recommendation, get_profile, load_profiles, recommend

log = logging.getLogger("autotune.planner")


@dataclass(frozen=True)
class Planned:
    """A plan and everything it was made from."""

    plan: Plan
    context: Context
    recommendation: Recommendation
    manager: PluginManager


def load_checked_profiles(profile_dirs: Iterable[str | os.PathLike[str]],
                          manager: PluginManager) -> dict[str, Profile]:
    """Every profile, each plugin's section checked against the options that
    plugin declares (``autotune_options``): built-in and third-party alike."""
    return load_profiles(profile_dirs,
                         options=option_schemas(manager.each("autotune_options", {})))


def make_plan(*, hardware: Hardware | None = None, profile: str | None = None,
              workload: Workload | None = None, disable: Iterable[str] = (),
              overrides: Mapping[str, Mapping[str, Any]] | None = None,
              profile_dirs: Iterable[str | os.PathLike[str]] = (),
              plugins: Iterable[Any] = (), strict: bool = False,
              manager: PluginManager | None = None,
              overrides_by: str = "overrides") -> Planned:
    """Make a plan. ``profile`` forces a profile by name instead of matching.

    ``disable``, ``plugins`` and ``strict`` build the plugin manager; when a
    ``manager`` is passed they are ignored (give them to the manager).
    Every override is checked against its plugin's knob (``choices``,
    ``check``); ``overrides_by`` is how errors name an override:
    ``"overrides"`` (``overrides={'compile': {'mode': 'x'}}``) or ``"--set"``
    (``--set compile.mode='x'``, the CLI).

    Raises :class:`~autotune.errors.AutotuneError` subclasses on bad input
    (unknown profile or plugin, malformed profile, bad override).
    """
    manager = manager or PluginManager(disable=disable, plugins=plugins, strict=strict)
    manager.load()
    hardware = manager.detect(hardware if hardware is not None else detect())
    profiles = load_checked_profiles(profile_dirs, manager)
    recommendation = recommend(hardware, profiles.values())
    if profile is not None:
        chosen = get_profile(profile, profiles)
        recommendation = Recommendation(chosen, recommendation.results,
                                        forced_by=f"name ({profile!r} was asked for)")
    context = Context(hardware=hardware, profile=recommendation.profile,
                      workload=workload or Workload(), profile_chosen=profile is not None)
    plan = manager.configure(context)
    # Settings that change what is trained, and those that must be measured
    # first, go back to PyTorch's default unless the user asked for them.
    knobs = manager.knobs(context, plan)
    plan = guard_plan(manager.drop_failed(plan), knobs, profile_chosen=profile is not None)
    if overrides:
        plan = plan.with_overrides(overrides)
        check_overrides(overrides, knobs, overrides_by)
        plan = manager.follow_overrides(context, plan, overrides)
    # A daemon's share of the machine, when this job shares it with others:
    # every plugin sizes its own settings to it (source "daemon").
    shared = manager.machine_share(context, plan)
    if shared is not None:
        plan = manager.drop_failed(share_plan(plan, shared[1], context=context,
                                              manager=manager, source=Source.DAEMON))
        context = replace(context, share=shared[1])
    log.info("plan made with profile %s: %d plugins", plan.profile, len(plan.settings))
    return Planned(plan=plan, context=context, recommendation=recommendation, manager=manager)

