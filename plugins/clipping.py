"""Gradient clipping, after unscaling, with the pre-clip norm recorded.

Profile options::

    clipping:
      max_norm: 1.0     # clip_grad_norm_ to this; null (the default) = no norm clipping
      norm_type: 2.0
      clip_value: null  # also clip_grad_value_ to +-clip_value, when set

Clipping changes what is trained, so it is **off** unless the user turns it
on (``overrides={"clipping": {"max_norm": 1.0}}``, ``--set
clipping.max_norm=1.0``) or chooses by name a profile that sets it
(``profile="rtx5080_7950x"``). A profile that was only matched to the
machine cannot turn it on; the plan says so. With both ``max_norm`` and
``clip_value`` null the engine computes nothing: plain PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.knobs import Effect, Knob
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile
from autotune.report import Kind

NAME = "clipping"


@dataclass(frozen=True)
class Options:
    max_norm: float | None = None
    norm_type: float = 2.0
    clip_value: float | None = None

    def __post_init__(self) -> None:
        for key in ("max_norm", "clip_value"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"clipping.{key} must be > 0 or null, got {value}")


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)

    def make(key: str, why: str) -> Setting:
        value = getattr(options, key)
        return from_profile(value, f"profile sets {key}") if key in given else default(value, why)

    return {
        "max_norm": make("max_norm", "no clipping: gradients as computed (PyTorch's behaviour)"),
        "norm_type": make("norm_type", "Euclidean norm, when max_norm is set"),
        "clip_value": make("clip_value", "no element-wise clipping"),
    }


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


#: Clipping changes every update it touches: the user's decision, never a
#: default and never searched.
KNOBS = {
    "max_norm": Knob(off=None, effect=Effect.TRAINING),
    "norm_type": Knob(off=2.0, effect=Effect.TRAINING),
    "clip_value": Knob(off=None, effect=Effect.TRAINING),
}


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    return dict(KNOBS)


# -- application -----------------------------------------------------------------


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    values = plan.values(NAME)
    max_norm, clip_value = values.get("max_norm"), values.get("clip_value")
    if max_norm is None and clip_value is None:
        engine.note(NAME, Kind.SKIPPED, "off: gradients as computed")
        return
    norm_type = float(values.get("norm_type") or 2.0)
    engine.set_clipping(max_norm, norm_type, clip_value)
    what = [f"global {norm_type:g}-norm to {max_norm}" if max_norm is not None
            else "nothing by norm (the norm is recorded)"]
    if clip_value is not None:
        what.append(f"each element to +-{clip_value}")
    engine.note(NAME, Kind.APPLIED, "clip " + " and ".join(what) + ", after unscaling")
