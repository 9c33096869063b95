"""An autotune plan for the Hugging Face ``Trainer``.

::

    tuned = autotune.apply(model, optimizer=torch.optim.AdamW(model.parameters()))
    args = TrainingArguments(output_dir="runs/hf", **training_arguments(tuned, num_train_epochs=3))
    Trainer(model=model, args=args, train_dataset=train_dataset,
            callbacks=[AutotuneTrainerCallback(tuned)]).train()

What is applied, and by what:

* ``training_arguments(tuned, **yours)``: ``bf16`` / ``fp16`` (the Trainer's
  own GradScaler with fp16) from ``mixed_precision.dtype``; ``tf32``;
  ``gradient_accumulation_steps``; ``max_grad_norm`` -- ``0.0`` when the
  plan has no clipping, because the Trainer's default (1.0) clips and
  ``0`` is how transformers switches clipping off; ``torch_compile`` and
  ``torch_compile_mode``; ``dataloader_num_workers``,
  ``dataloader_pin_memory``, ``dataloader_persistent_workers``,
  ``dataloader_prefetch_factor`` (the Trainer builds its own loader, so
  these come from ``tuned.loader`` when ``autotune.apply`` rebuilt one,
  else from the plan); ``optim="adamw_torch_fused"`` for
  ``optimizer.implementation: fused`` when your optimizer is AdamW;
  ``use_cpu=True`` when ``autotune.apply`` planned for the CPU. Your
  own keyword arguments win over the plan's and are returned with them
  (setting one of ``bf16``/``fp16``, or ``dataloader_num_workers``, keeps
  the plan's related keys out).
* ``AutotuneTrainerCallback(tuned)``: the threads plugin's thread counts
  (``on_train_begin`` to ``on_train_end``) and channels_last (the model's
  weights and, through a forward pre-hook, 4-D floating-point inputs).

Not applied, each stated in one line by :func:`unsupported` (and logged as
a warning by ``training_arguments``): clipping by value or with a norm
other than 2, ``compile.fullgraph``, a fused/foreach optimizer the
Trainer's ``optim`` names do not cover, fp16 without a GradScaler, and
third-party plugins' settings, which need autotune's own engine.

transformers is imported by ``AutotuneTrainerCallback`` and, to check the
field names, by ``training_arguments``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from autotune.bridges import (Change, Runtime, describe, device_type,
                              generic_hint, report, split_lines)

__all__ = ["AutotuneTrainerCallback", "training_arguments", "unsupported"]

log = logging.getLogger("autotune.bridges.huggingface")

CALLBACK = {("threads", "intra_op"), ("threads", "inter_op"), ("threads", "set_env"),
            ("channels_last", "enabled")}
#: Keys that go together: a user who sets one of them decides the group.
GROUPS = ({"bf16", "fp16"}, {"torch_compile", "torch_compile_mode"},
          {"dataloader_num_workers", "dataloader_prefetch_factor",
           "dataloader_persistent_workers"})
LOADER_FIELDS = {"num_workers": "dataloader_num_workers", "pin_memory": "dataloader_pin_memory",
                 "persistent_workers": "dataloader_persistent_workers",
                 "prefetch_factor": "dataloader_prefetch_factor"}


def _loader_values(tuned: Any) -> dict[str, Any]:
    """What the Trainer's loader should have: what autotune.apply built into
    ``tuned.loader`` (caps included), else the plan's values."""
    from torch.utils.data import DataLoader

    values = tuned.plan.values("dataloader")
    if isinstance(tuned.loader, DataLoader):
        loader = tuned.loader
        values = {key: getattr(loader, key) for key in LOADER_FIELDS}
    workers = int(values.get("num_workers") or 0)
    return {"num_workers": workers, "pin_memory": bool(values.get("pin_memory")),
            "persistent_workers": bool(values.get("persistent_workers")) and workers > 0,
            "prefetch_factor": values.get("prefetch_factor") if workers > 0 else None}


def _plan_arguments(tuned: Any) -> dict[str, Any]:
    plan = tuned.plan
    dtype = plan.get("mixed_precision", "dtype", "fp32")
    out: dict[str, Any] = {"bf16": dtype == "bf16", "fp16": dtype == "fp16"}
    tf32 = plan.get("mixed_precision", "tf32")
    if tf32 is not None:
        out["tf32"] = bool(tf32)
    out["gradient_accumulation_steps"] = int(plan.get("accumulation", "steps", 1) or 1)
    max_norm = plan.get("clipping", "max_norm")
    out["max_grad_norm"] = float(max_norm) if max_norm is not None else 0.0
    mode = plan.get("compile", "mode", "off") or "off"
    out["torch_compile"] = mode != "off"
    if mode != "off":
        out["torch_compile_mode"] = mode
    if "dataloader" in plan:
        for key, value in _loader_values(tuned).items():
            out[LOADER_FIELDS[key]] = value
    if _fused_adamw(tuned):
        out["optim"] = "adamw_torch_fused"
    if device_type(tuned) == "cpu":
        # The plan is for the CPU; the Trainer also wants to be told before
        # it runs bf16 there.
        out["use_cpu"] = True
    return out


def _fused_adamw(tuned: Any) -> bool:
    workload = getattr(tuned.context, "workload", None)
    return (tuned.plan.get("optimizer", "implementation") == "fused"
            and getattr(workload, "optimizer", None) == "AdamW")


def _line(change: Change, tuned: Any) -> tuple[bool, str]:
    plan = tuned.plan
    key, value = (change.plugin, change.key), change.value
    if key == ("mixed_precision", "dtype") and value in ("bf16", "fp16", "fp32"):
        return True, describe(change, {"bf16": "bf16=True", "fp16": "fp16=True",
                                       "fp32": "bf16=False, fp16=False"}[value])
    if key == ("mixed_precision", "grad_scaler"):
        if plan.get("mixed_precision", "dtype") == "fp16":
            return True, describe(change, "fp16=True brings the Trainer's GradScaler")
        return False, describe(change, "the Trainer scales the loss only with fp16=True; "
                                       "not applied")
    if key == ("mixed_precision", "tf32"):
        return True, describe(change, f"tf32={bool(value)}")
    if key == ("accumulation", "steps"):
        return True, describe(change, f"gradient_accumulation_steps={value}")
    if key == ("clipping", "max_norm"):
        return True, describe(change, f"max_grad_norm={float(value)}")
    if key == ("clipping", "clip_value"):
        return False, describe(change, "the Trainer clips by norm only; subclass Trainer and "
                                       "call torch.nn.utils.clip_grad_value_(model.parameters(), "
                                       f"{value}) in training_step after the backward")
    if key == ("clipping", "norm_type"):
        if plan.get("clipping", "max_norm") is None:
            return True, describe(change, "no norm clipping planned: nothing to apply")
        return False, describe(change, "the Trainer clips the 2-norm (max_grad_norm); another "
                                       "norm_type is not applied")
    if key == ("compile", "mode"):
        return True, describe(change, f"torch_compile=True, torch_compile_mode={value!r}")
    if key == ("compile", "fullgraph"):
        return False, describe(change, "TrainingArguments has no fullgraph; compile the model "
                                       "yourself (torch.compile(model, fullgraph=True)) and "
                                       "leave torch_compile off")
    if key == ("optimizer", "implementation"):
        if _fused_adamw(tuned):
            return True, describe(change, "optim='adamw_torch_fused'")
        optimizer = getattr(getattr(tuned.context, "workload", None), "optimizer", None)
        return False, describe(change, f"the Trainer's optim names cover fused AdamW only (your "
                                       f"optimizer: {optimizer or 'not given to autotune.apply'});"
                                       f" pass Trainer(optimizers=(YourOptimizer(..., "
                                       f"{value}=True), None))")
    if key in CALLBACK:
        return True, describe(change, "applied by AutotuneTrainerCallback(tuned) while training")
    if change.plugin == "dataloader" and change.key in LOADER_FIELDS:
        field = LOADER_FIELDS[change.key]
        return True, describe(change, f"{field}={_loader_values(tuned)[change.key]!r}")
    return False, generic_hint(change, "the Hugging Face Trainer")


def _lines(tuned: Any) -> tuple[list[str], list[str]]:
    return split_lines(tuned, _line)


def unsupported(tuned: Any) -> list[str]:
    """One line per planned setting (one that is not PyTorch's behaviour)
    that neither ``training_arguments`` nor ``AutotuneTrainerCallback`` can
    apply, with what to do instead."""
    return _lines(tuned)[1]


def _field_defaults() -> dict[str, Any] | None:
    try:
        from transformers import TrainingArguments
    except ImportError:
        return None
    return {f.name: f.default for f in dataclasses.fields(TrainingArguments)}


def training_arguments(tuned: Any, **user_kwargs: Any) -> dict[str, Any]:
    """``TrainingArguments`` fields from ``tuned.plan``, merged with
    ``user_kwargs`` (yours win). Logs one INFO line per setting applied
    (here or by the callback), one INFO line per plan value your keyword
    arguments replace, and one WARNING line per setting not applied."""
    planned = _plan_arguments(tuned)
    applied, missing = _lines(tuned)
    defaults = _field_defaults()
    if defaults is not None:
        for key in [k for k in planned if k not in defaults]:
            missing.append(f"{key}={planned.pop(key)!r}: this transformers' TrainingArguments has "
                           "no such field; not applied")
        if planned.get("max_grad_norm") == 0.0 and defaults.get("max_grad_norm") != 0.0 \
                and "max_grad_norm" not in user_kwargs:
            applied.append(f"clipping off: max_grad_norm=0.0 (the Trainer's default, "
                           f"{defaults.get('max_grad_norm')}, would clip)")
    if planned.get("use_cpu"):
        applied.append("device cpu: use_cpu=True (autotune.apply planned for the CPU)")
    out = dict(planned)
    for group in GROUPS:
        if group & set(user_kwargs):
            for key in group:
                out.pop(key, None)
    for key, value in user_kwargs.items():
        if key in planned and planned[key] != value:
            applied.append(f"{key}={value!r}: yours, kept (the plan gives {planned[key]!r})")
    out.update(user_kwargs)
    report(log, applied, missing)
    return out


def _check_args(args: Any, tuned: Any) -> list[str]:
    wanted = _plan_arguments(tuned)
    out = []
    for key in ("bf16", "fp16", "gradient_accumulation_steps", "max_grad_norm"):
        have = getattr(args, key, wanted[key])
        if have != wanted[key]:
            out.append(f"TrainingArguments has {key}={have!r} where the plan gives "
                       f"{wanted[key]!r}: pass **training_arguments(tuned)")
    return out


@functools.lru_cache(maxsize=None)
def _callback_class() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("AutotuneTrainerCallback needs transformers: "
                          "pip install transformers") from None

    class AutotuneTrainerCallback(TrainerCallback):
        """Applies the part of an autotune plan no TrainingArguments field
        covers: thread counts and channels_last, from ``on_train_begin`` to
        ``on_train_end``."""

        def __init__(self, tuned: Any) -> None:
            self.tuned = tuned
            self.runtime = Runtime(tuned, log, when="at on_train_end")

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                           **kwargs: Any) -> None:
            for line in _check_args(args, self.tuned):
                log.warning("%s", line)
            self.runtime.start(model)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.runtime.stop()

    # Named as the module attribute it is, so pickle finds it there.
    AutotuneTrainerCallback.__module__ = __name__
    AutotuneTrainerCallback.__qualname__ = "AutotuneTrainerCallback"
    return AutotuneTrainerCallback


def __getattr__(name: str) -> Any:
    # The callback subclasses transformers' TrainerCallback: made (and
    # transformers imported) on first use.
    if name == "AutotuneTrainerCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
