"""channels_last memory format for models with 2-D convolutions.

Profile options::

    channels_last:
      enabled: false   # reserved key: turn the plugin off for this profile

NHWC lets cuDNN (tensor cores) and oneDNN pick faster convolution kernels,
but not on every model (depthwise convolutions, e.g. MobileNet or
EfficientNet, can run slower), so it is applied only once the tuner measured
it faster, or when asked for. It only applies to models with ``nn.Conv2d``
and to 4-D inputs; anything else is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune.sdk import (
    Context, Hardware, Kind, Knob, PluginOptions, Setting, Workload, default, hookimpl,
    parse_options, true_or_false)

NAME = "channels_last"


@dataclass(frozen=True)
class Options(PluginOptions):
    pass


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    parse_options(NAME, Options, dict(profile_options or {}))
    if workload is not None and workload.model is not None:
        if workload.has_conv2d:
            return {"enabled": default(True, "model has Conv2d layers: NHWC kernels")}
        return {"enabled": default(False, "model has no Conv2d: nothing to convert")}
    return {"enabled": default(True, "applied only to models with Conv2d and 4-D inputs")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    return {"enabled": Knob(off=False, measure_first=True, check=true_or_false())}


# -- application -----------------------------------------------------------------


def apply_channels_last(model: Any) -> bool:
    """Convert ``model``'s 4-D weights to NHWC, in place (the same module
    and parameter objects, so optimizers and the user's references stay
    valid). Returns False, changing nothing, for a model without Conv2d."""
    import torch

    from autotune.sdk import has_conv2d

    if not has_conv2d(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


@hookimpl
def autotune_apply_model(model: Any, plan: Any, report: Any) -> Any:
    if not plan.get(NAME, "enabled", False):
        report.add(NAME, Kind.SKIPPED, "enabled=false: memory format left as is")
    elif apply_channels_last(model):
        report.add(NAME, Kind.APPLIED, "model weights converted to channels_last")
    else:
        report.add(NAME, Kind.SKIPPED, "model has no Conv2d: memory format left as is")
    return model


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    import torch

    from autotune.sdk import has_conv2d

    if plan.get(NAME, "enabled", False) and has_conv2d(engine.module):
        engine.plugin_state(NAME)["inputs"] = torch.channels_last
        engine.note(NAME, Kind.APPLIED, "4-D floating-point inputs converted to channels_last")


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    """On or off during a run (online tuning): the weights change layout in
    place (the same parameter objects, so the optimizer keeps them), and
    the inputs follow from the next step."""
    import torch
    from autotune.sdk import has_conv2d

    if set(values) != {"enabled"} or not has_conv2d(engine.module):
        return False
    state = engine.plugin_state(NAME)
    if values["enabled"]:
        engine.module.to(memory_format=torch.channels_last)
        state["inputs"] = torch.channels_last
    else:
        engine.module.to(memory_format=torch.contiguous_format)
        state.pop("inputs", None)
    return True


@hookimpl
def autotune_prepare_inputs(engine: Any, inputs: Any) -> Any:
    """4-D floating-point inputs in channels_last, the weights' format."""
    memory_format = engine.plugin_state(NAME).get("inputs")
    if memory_format is None:
        return None
    from autotune.sdk import move_to

    # Already on the device: only 4-D floating-point tensors change layout.
    return move_to(inputs, engine.device, memory_format=memory_format)


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    memory_format = engine.plugin_state(NAME).get("inputs")
    return {"input_memory_format": None if memory_format is None else str(memory_format)}


# -- candidates for measured tuning ------------------------------------------------


def candidates(hardware: Hardware, plan_values: Mapping[str, Any] | None = None,
               workload: Workload | None = None) -> list[dict[str, Any]]:
    """On and off, for models with Conv2d (nothing to try otherwise)."""
    if workload is not None and workload.model is not None and not workload.has_conv2d:
        return []
    return [{"enabled": True}, {"enabled": False}]


@hookimpl
def autotune_candidates(context: Context, plan: Any) -> list[dict[str, Any]]:
    return candidates(context.hardware, plan.values(NAME), context.workload)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if not context.workload.has_conv2d:
        return 0.0, "no Conv2d in the model"
    return 0.3, "NHWC convolutions (cuDNN/oneDNN)"
