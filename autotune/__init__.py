"""autotune: detect the machine, match a profile, let plugins propose
settings, measure what matters, apply the winner to one training engine."""

from autotune.context import Context, Workload
from autotune.detect import detect
from autotune.errors import AutotuneError, PlanError, PluginError, ProfileError
from autotune.hardware import CPU, GPU, Hardware, Memory
from autotune.hookspecs import hookimpl
from autotune.manager import PluginManager
from autotune.plan import Plan, Setting, Source
from autotune.planner import make_plan
from autotune.profile import Profile, load_profiles, recommend

__version__ = "0.1.0"

__all__ = [
    "CPU", "GPU", "AutotuneError", "Context", "Hardware", "Memory", "Plan", "PlanError",
    "PluginError", "PluginManager", "Profile", "ProfileError", "Setting", "Source",
    "Workload", "detect", "hookimpl", "load_profiles", "make_plan", "recommend",
]
