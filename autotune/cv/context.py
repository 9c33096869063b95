"""The planning context for a plan made elsewhere (``tuned.plan``, a plan
broadcast from rank 0): what the plugins are asked with when they schedule
folds or share a node's cores under a plan they did not just make."""

from __future__ import annotations

from autotune.errors import ProfileError
from autotune.machine.detect import detect
from autotune.machine.hardware import Hardware
from autotune.plan.plan import Plan
from autotune.plugin.context import Context, Workload
from autotune.profile import get_profile, load_profiles, recommend


def context_for_plan(plan: Plan, workload: Workload | None = None,
                     hardware: Hardware | None = None) -> Context:
    """A planning context for a plan made elsewhere: this machine's hardware
    and the profile the plan names (the matching one when it names none
    that is known here)."""
    hardware = hardware if hardware is not None else detect()
    profiles = load_profiles()
    try:
        profile = get_profile(plan.profile, profiles) if plan.profile else None
    except ProfileError:
        profile = None
    if profile is None:
        profile = recommend(hardware, profiles.values()).profile
    return Context(hardware=hardware, profile=profile, workload=workload or Workload())
