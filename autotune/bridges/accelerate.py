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

from autotune.bridges import (Change, describe, device_type, generic_hint, report,
                              split_lines)

__all__ = ["accelerator_kwargs", "unsupported"]

log = logging.getLogger("autotune.bridges.accelerate")

MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
RUNTIME = "not an Accelerator option; `with autotune.bridges.runtime(tuned):` around your loop " \
          "applies it (restored after the block)"
IN_THE_LOOP = "clipping is a call in your loop: after accelerator.backward(loss), " \
              "`if accelerator.sync_gradients: "


def _line(change: Change, tuned: Any) -> tuple[bool, str]:
    plan = tuned.plan
    key, value = (change.plugin, change.key), change.value
    if key == ("mixed_precision", "dtype") and value in MIXED_PRECISION:
        return True, describe(change, f"mixed_precision={MIXED_PRECISION[value]!r}")
    if key == ("mixed_precision", "grad_scaler"):
        if plan.get("mixed_precision", "dtype") == "fp16":
            return True, describe(change, "mixed_precision='fp16' brings Accelerate's GradScaler")
        return False, describe(change, "Accelerate scales the loss only with "
                                       "mixed_precision='fp16'; not applied")
    if key == ("mixed_precision", "tf32"):
        return False, describe(change, "not an Accelerator option; call "
                                       "torch.set_float32_matmul_precision("
                                       f"{'high' if value else 'highest'!r}) before training")
    if key == ("accumulation", "steps"):
        return True, describe(change, f"gradient_accumulation_steps={value}; your loop runs "
                                      "each step under `with accelerator.accumulate(model):`")
    if key == ("clipping", "max_norm"):
        norm_type = plan.get("clipping", "norm_type", 2.0) or 2.0
        extra = "" if float(norm_type) == 2.0 else f", norm_type={norm_type:g}"
        return False, describe(change, f"{IN_THE_LOOP}accelerator.clip_grad_norm_("
                                       f"model.parameters(), {value}{extra})`")
    if key == ("clipping", "clip_value"):
        return False, describe(change, f"{IN_THE_LOOP}accelerator.clip_grad_value_("
                                       f"model.parameters(), {value})`")
    if key == ("clipping", "norm_type"):
        if plan.get("clipping", "max_norm") is None:
            return True, describe(change, "no norm clipping planned: nothing to apply")
        return False, describe(change, "pass norm_type to accelerator.clip_grad_norm_ (see "
                                       "clipping.max_norm)")
    if key in (("compile", "mode"), ("compile", "fullgraph")):
        return True, describe(change, "the Accelerator's dynamo plugin compiles the model in "
                                      "accelerator.prepare")
    if change.plugin == "threads":
        return False, describe(change, RUNTIME)
    if key == ("channels_last", "enabled"):
        return False, describe(change, "autotune.apply made tuned.model's weights channels_last; "
                                       f"the inputs are {RUNTIME}")
    if change.plugin == "dataloader":
        loader = tuned.loader
        if loader is None:
            return False, describe(change, "autotune.apply had no DataLoader to rebuild; build "
                                           f"yours with {change.key}={value!r}")
        return True, describe(change, f"in tuned.loader ({change.key}="
                                      f"{getattr(loader, change.key, value)!r}); "
                                      "accelerator.prepare(tuned.loader) keeps it")
    if key == ("optimizer", "implementation"):
        return False, describe(change, "Accelerate wraps the optimizer you build; build it with "
                                       f"{value}=True, e.g. torch.optim.AdamW(model.parameters(), "
                                       f"{value}=True)")
    return False, generic_hint(change, "Accelerate")


def _lines(tuned: Any) -> tuple[list[str], list[str]]:
    return split_lines(tuned, _line)


def unsupported(tuned: Any) -> list[str]:
    """One line per planned setting (one that is not PyTorch's behaviour)
    that ``accelerator_kwargs`` cannot apply, with what to do instead."""
    return _lines(tuned)[1]


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


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def accelerator_kwargs(tuned: Any) -> dict[str, Any]:
    """Keyword arguments for ``accelerate.Accelerator`` from ``tuned.plan``:
    ``mixed_precision``, ``gradient_accumulation_steps`` and, for a compile
    plan, the dynamo plugin. Logs one INFO line per setting applied and one
    WARNING line per setting that is not."""
    plan = tuned.plan
    dtype = plan.get("mixed_precision", "dtype", "fp32") or "fp32"
    kwargs: dict[str, Any] = {"mixed_precision": MIXED_PRECISION.get(dtype, "no"),
                              "gradient_accumulation_steps":
                                  int(plan.get("accumulation", "steps", 1) or 1)}
    mode = plan.get("compile", "mode", "off") or "off"
    if mode != "off":
        kwargs.update(_compile_kwargs(mode, bool(plan.get("compile", "fullgraph", False))))
    applied, missing = _lines(tuned)
    if device_type(tuned) == "cpu" and _cuda_available():
        kwargs["cpu"] = True
        applied.append("device cpu: cpu=True (autotune.apply planned for the CPU, not the GPU)")
    report(log, applied, missing)
    return kwargs
