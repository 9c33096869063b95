"""ema: an exponential moving average of the weights -- a complete autotune
plugin that changes the training step, in one module.

Register it like any plugin: ``autotune.apply(..., plugins=[ema_plugin])``,
or package it with an entry point in the group ``autotune``
(``ema = "ema_plugin"``; see examples/custom_plugin).

Profile options / overrides::

    ema:
      decay: 0.999   # null (the default): no average is kept

After every optimizer step that ran (not one the fp16 scaler skipped), the
average moves toward the weights: ``avg = decay * avg + (1 - decay) * w``.
The average is saved in engine checkpoints and read with
:func:`averaged_state_dict`. It does not change the weights being trained,
but it is a different model to evaluate or ship, so it is the user's
choice: the knob says ``training`` and autotune never turns it on by itself
or searches it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from autotune.sdk import (
    Effect, Kind, Knob, Setting, default, from_profile, hookimpl, positive_number)

NAME = "ema"


@hookimpl
def autotune_configure(context: Any) -> dict[str, Setting]:
    given = context.options_for(NAME)
    if given.get("decay") is not None:
        return {"decay": from_profile(float(given["decay"]), "profile sets decay")}
    return {"decay": default(None, "no average of the weights is kept")}


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    def below_one(value: Any) -> str | None:
        return positive_number(or_null=True)(value) or (
            "must be < 1" if value is not None and value >= 1 else None)

    return {"decay": Knob(off=None, effect=Effect.TRAINING, check=below_one)}


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    decay = plan.get(NAME, "decay")
    if decay is None:
        return
    params = [p for p in engine.module.parameters() if p.requires_grad]
    engine.plugin_state(NAME).update(
        decay=float(decay), params=params,
        average=[p.detach().clone() for p in params])
    engine.note(NAME, Kind.APPLIED, f"average of the weights, decay {decay}")


@hookimpl
def autotune_after_optimizer_step(engine: Any, skipped: bool) -> None:
    state = engine.plugin_state(NAME)
    if skipped or "average" not in state:
        return
    with torch.no_grad():
        weights = [p.detach() for p in state["params"]]
        torch._foreach_lerp_(state["average"], weights, 1.0 - state["decay"])


@hookimpl
def autotune_engine_state(engine: Any) -> dict[str, Any] | None:
    state = engine.plugin_state(NAME)
    return {"average": state["average"]} if "average" in state else None


@hookimpl
def autotune_load_engine_state(engine: Any, state: Mapping[str, Any]) -> None:
    mine = engine.plugin_state(NAME)
    if "average" in mine:
        with torch.no_grad():
            for ours, saved in zip(mine["average"], state["average"]):
                ours.copy_(saved)


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    return {"ema_decay": engine.plugin_state(NAME).get("decay")}


def averaged_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The model's state dict with the averaged weights in place of the
    trained ones (buffers as they are)."""
    state = engine.plugin_state(NAME)
    if "average" not in state:
        raise ValueError("ema is off in this engine (set ema.decay)")
    averaged = {id(p): a for p, a in zip(state["params"], state["average"])}
    out = {}
    for name, tensor in engine.module.state_dict(keep_vars=True).items():
        out[name] = averaged.get(id(tensor), tensor).detach().clone()
    return out
