"""torch.compile, with a mode from the plan and an eager fallback.

Profile options::

    compile:
      mode: "off"   # off | default | reduce-overhead | max-autotune
      fullgraph: false

The rule-based default is ``off``: compilation costs start-up time that a
short run may never win back, and whether it pays depends on the model and
the device, so it is a thing to *measure* (the tuner offers the modes as
candidates) rather than assume. Profiles for large GPUs may turn it on.
A model that fails to compile trains eagerly; the reason is in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile

NAME = "compile"
MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Options:
    mode: str = "off"
    fullgraph: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"compile.mode={self.mode!r} is not one of {MODES}")


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    if "mode" in given:
        mode = from_profile(options.mode, f"profile sets mode {options.mode}")
    else:
        mode = default("off", "compile pays only when measured to; the tuner tries its modes")
    if mode.value == "reduce-overhead" and not hardware.has_cuda:
        mode = from_profile("default", "reduce-overhead needs CUDA graphs; using mode default on CPU")
    fullgraph = (from_profile(options.fullgraph, "profile sets fullgraph") if "fullgraph" in given
                 else default(False, "allow graph breaks"))
    return {"mode": mode, "fullgraph": fullgraph}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
