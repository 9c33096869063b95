"""An autotune plan for Hugging Face Accelerate.

::

    tuned = autotune.apply(model, loader, optimizer=optimizer)
    accelerator = Accelerator(**accelerator_kwargs(tuned))
    model, optimizer, loader = accelerator.prepare(tuned.model, optimizer, tuned.loader)
    with autotune.bridges.runtime(tuned):          # threads, channels_last inputs
        for inputs, targets in loader:
            with accelerator.accumulate(model):
                accelerator.backward(loss_fn(model(inputs), targets))
                optimizer.step()
                optimizer.zero_grad()

What is applied, and by what:

* ``accelerator_kwargs(tuned)``: ``mixed_precision`` (``"bf16"``,
  ``"fp16"`` -- Accelerate's GradScaler included -- or ``"no"``),
  ``gradient_accumulation_steps``, and for ``compile.mode`` a
  ``dynamo_plugin`` (``TorchDynamoPlugin(backend="inductor", mode=...,
  fullgraph=...)``; ``dynamo_backend="inductor"`` where Accelerate has no
  plugin argument); ``cpu=True`` when ``autotune.apply`` planned for the
  CPU on a machine with a GPU. A module ``autotune.apply`` compiled
  already is not compiled again by ``prepare``.
* The loader settings are in ``tuned.loader``; ``accelerator.prepare``
  keeps them.

Not applied by the Accelerator, each stated in one line by
:func:`unsupported` (and logged as a warning by ``accelerator_kwargs``):
clipping (your loop calls ``accelerator.clip_grad_norm_`` when
``accelerator.sync_gradients``), thread counts and channels_last inputs
(``with autotune.bridges.runtime(tuned):`` around the loop applies both),
TF32, the fused/foreach optimizer (build it with ``fused=True``), and
third-party plugins' settings, which need autotune's own engine.

Accelerate is imported only for a compile plan (its ``TorchDynamoPlugin``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from autotune.bridges.translate import (ANY_KEY, Change, Row, device_type, lines, loader_row,
                                        norm_type_row, options, report, scaler_row, tf32_call,
                                        value_in)

__all__ = ["accelerator_kwargs", "unsupported"]

log = logging.getLogger("autotune.bridges.accelerate")

FRAMEWORK = "Accelerate"
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
RUNTIME = "not an Accelerator option; `with autotune.bridges.runtime(tuned):` around your loop " \
          "applies it (restored after the block)"
IN_THE_LOOP = "clipping is a call in your loop: after accelerator.backward(loss), " \
              "`if accelerator.sync_gradients: "
COMPILED_IN_PREPARE = "the Accelerator's dynamo plugin compiles the model in accelerator.prepare"


def _compile_kwargs(mode: str, fullgraph: bool) -> dict[str, Any]:
    try:
        from accelerate import Accelerator
        from accelerate.utils import TorchDynamoPlugin
    except ImportError:
        return {"dynamo_backend": "inductor"}
    if "dynamo_plugin" not in inspect.signature(Accelerator.__init__).parameters:
        if mode != "default" or fullgraph:
            log.warning("this Accelerate takes no dynamo_plugin: dynamo_backend='inductor' "
                        "with torch.compile's defaults, not mode=%r fullgraph=%s", mode, fullgraph)
        return {"dynamo_backend": "inductor"}
    return {"dynamo_plugin": TorchDynamoPlugin(backend="inductor", mode=mode,
                                               fullgraph=bool(fullgraph))}


def _dynamo(value: Any, tuned: Any) -> dict[str, Any]:
    mode = value or "off"
    if mode == "off":
        return {}
    return _compile_kwargs(mode, bool(tuned.plan.get("compile", "fullgraph", False)))


def _clip_norm_in_the_loop(change: Change, tuned: Any) -> str:
    norm_type = tuned.plan.get("clipping", "norm_type", 2.0) or 2.0
    extra = "" if float(norm_type) == 2.0 else f", norm_type={norm_type:g}"
    return f"{IN_THE_LOOP}accelerator.clip_grad_norm_(model.parameters(), {change.value}{extra})`"


#: What the Accelerator takes from the plan (its keyword arguments, in this
#: order), what your loop does, and what autotune.bridges.runtime applies.
TABLE = (
    Row("mixed_precision", "dtype", takes=value_in(MIXED_PRECISION),
        options=lambda value, tuned: {"mixed_precision": MIXED_PRECISION.get(value or "fp32",
                                                                              "no")}),
    scaler_row("mixed_precision='fp16'", FRAMEWORK),
    Row("mixed_precision", "tf32",
        instead=lambda change, tuned: "not an Accelerator option; "
                                      + tf32_call(change, "training")),
    Row("accumulation", "steps",
        options=lambda value, tuned: {"gradient_accumulation_steps": int(value or 1)},
        says="{options}; your loop runs each step under `with accelerator.accumulate(model):`"),
    Row("clipping", "max_norm", instead=_clip_norm_in_the_loop),
    Row("clipping", "clip_value",
        instead=IN_THE_LOOP + "accelerator.clip_grad_value_(model.parameters(), {value})`"),
    norm_type_row("pass norm_type to accelerator.clip_grad_norm_ (see clipping.max_norm)"),
    Row("compile", "mode", options=_dynamo, says=COMPILED_IN_PREPARE),
    Row("compile", "fullgraph", says=COMPILED_IN_PREPARE),
    Row("threads", ANY_KEY, instead=RUNTIME),
    Row("channels_last", "enabled",
        instead="autotune.apply made tuned.model's weights channels_last; the inputs are "
                + RUNTIME),
    loader_row("; accelerator.prepare(tuned.loader) keeps it"),
    Row("optimizer", "implementation",
        instead="Accelerate wraps the optimizer you build; build it with {value}=True, e.g. "
                "torch.optim.AdamW(model.parameters(), {value}=True)"),
)


def unsupported(tuned: Any) -> list[str]:
    """One line per planned setting (one that is not PyTorch's behaviour)
    that ``accelerator_kwargs`` cannot apply, with what to do instead."""
    return lines(TABLE, tuned, FRAMEWORK)[1]


def accelerator_kwargs(tuned: Any) -> dict[str, Any]:
    """Keyword arguments for ``accelerate.Accelerator`` from ``tuned.plan``:
    ``mixed_precision``, ``gradient_accumulation_steps`` and, for a compile
    plan, the dynamo plugin. Logs one INFO line per setting applied and one
    WARNING line per setting that is not."""
    kwargs = options(TABLE, tuned)
    applied, missing = lines(TABLE, tuned, FRAMEWORK)
    if device_type(tuned) == "cpu" and torch.cuda.is_available():
        kwargs["cpu"] = True
        applied.append("device cpu: cpu=True (autotune.apply planned for the CPU, not the GPU)")
    report(log, applied, missing)
    return kwargs
