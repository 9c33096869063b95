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
from typing import Any, Iterable, Mapping

from autotune.sdk import (
    Context, Effect, Hardware, Kind, Knob, PluginOptions, Setting, Workload, default,
    from_profile, hookimpl, option, parse_options, positive_number)

NAME = "clipping"


@dataclass(frozen=True)
class Options(PluginOptions):
    max_norm: float | None = option(None, "clip the global gradient norm to this; null: no "
                                    "norm clipping", above=0, null=True)
    norm_type: float = option(2.0, "the norm's order (2.0: Euclidean)")
    clip_value: float | None = option(None, "also clip each gradient element to +-this; null: "
                                      "no element-wise clipping", above=0, null=True)


@hookimpl
def autotune_options() -> type:
    return Options


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
    "max_norm": Knob(off=None, effect=Effect.TRAINING, check=positive_number(or_null=True)),
    "norm_type": Knob(off=2.0, effect=Effect.TRAINING),
    "clip_value": Knob(off=None, effect=Effect.TRAINING, check=positive_number(or_null=True)),
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
    state = engine.plugin_state(NAME)
    state["clipping"] = Clipping(max_norm, norm_type, clip_value)
    # Pre-clip norms summed on the device: no host sync per step.
    state["norm_sum"] = state["norm_count"] = None
    state["last_norm"] = None
    what = [f"global {norm_type:g}-norm to {max_norm}" if max_norm is not None
            else "nothing by norm (the norm is recorded)"]
    if clip_value is not None:
        what.append(f"each element to +-{clip_value}")
    engine.note(NAME, Kind.APPLIED, "clip " + " and ".join(what) + ", after unscaling")


# -- the step: clip after the window's backward (after the fp16 scaler has
#    unscaled: it runs first), record the pre-clip norm ------------------------------


@dataclass(frozen=True)
class Clipping:
    #: Clip the global norm to this; ``None`` records the norm, clips nothing.
    max_norm: float | None = None
    norm_type: float = 2.0
    #: Also clamp each gradient element to ``[-clip_value, clip_value]``.
    clip_value: float | None = None


def total_norm(grads: list[Any], norm_type: float) -> Any:
    """The norm ``clip_grad_norm_`` would clip, without clipping."""
    import torch

    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads, norm_type)
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), norm_type) for g in grads])
    return torch.linalg.vector_norm(norms, norm_type)


def clip_gradients(params: Iterable[Any], clipping: Clipping) -> Any:
    """Clip as ``clipping`` says; returns the pre-clip global norm (None
    when no parameter has a gradient). Gradients must be unscaled already."""
    import torch

    params = [p for p in params if p.grad is not None]
    if not params:
        return None
    if clipping.max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clipping.max_norm, clipping.norm_type)
    else:
        norm = total_norm([p.grad for p in params], clipping.norm_type)
    if clipping.clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clipping.clip_value)
    return norm


def last_grad_norm(engine: Any) -> float | None:
    """Pre-clip gradient norm of ``engine``'s last optimizer step (clipping on)."""
    norm = engine.plugin_state(NAME).get("last_norm")
    return None if norm is None else float(norm)


@hookimpl
def autotune_before_optimizer_step(engine: Any, optimizer: Any) -> None:
    import torch

    state = engine.plugin_state(NAME)
    clipping = state.get("clipping")
    if clipping is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = clip_gradients(params, clipping)
    if norm is None:
        return
    norm = norm.detach().float()
    finite = torch.isfinite(norm)  # fp16 steps that overflow have inf norms
    value = torch.where(finite, norm, torch.zeros_like(norm))
    state["norm_sum"] = value if state["norm_sum"] is None else state["norm_sum"] + value
    state["norm_count"] = (finite.float() if state["norm_count"] is None
                           else state["norm_count"] + finite)
    state["last_norm"] = norm


@hookimpl
def autotune_epoch_start(engine: Any) -> None:
    state = engine.plugin_state(NAME)
    if state.get("clipping") is not None:
        state["norm_sum"] = state["norm_count"] = None


@hookimpl
def autotune_epoch_end(engine: Any) -> dict[str, float] | None:
    """The epoch's mean pre-clip norm, as ``clipping.grad_norm``."""
    state = engine.plugin_state(NAME)
    if state.get("clipping") is None or state.get("norm_count") is None:
        return None
    count = float(state["norm_count"])
    return {f"{NAME}.grad_norm": float(state["norm_sum"]) / count} if count else None


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    clipping = engine.plugin_state(NAME).get("clipping")
    return {"clipping": None if clipping is None else vars(clipping).copy()}


# -- measured tuning ------------------------------------------------------------------


@hookimpl
def autotune_search_prior() -> tuple[float, str]:
    return 0.0, "changes what is trained: only the user turns it on"
