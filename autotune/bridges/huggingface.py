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
import logging
from typing import Any

from torch.utils.data import DataLoader

from autotune.bridges.callbacks import RuntimeCallback, lazy_callback
from autotune.bridges.translate import (Change, Row, callback_rows, device_type, lines,
                                        norm_type_row, options, report, scaler_row, value_in)

__all__ = ["AutotuneTrainerCallback", "training_arguments", "unsupported"]

log = logging.getLogger("autotune.bridges.huggingface")

FRAMEWORK = "the Hugging Face Trainer"
#: Keys that go together: a user who sets one of them decides the group.
GROUPS = ({"bf16", "fp16"}, {"torch_compile", "torch_compile_mode"},
          {"dataloader_num_workers", "dataloader_prefetch_factor",
           "dataloader_persistent_workers"})
LOADER_FIELDS = {"num_workers": "dataloader_num_workers", "pin_memory": "dataloader_pin_memory",
                 "persistent_workers": "dataloader_persistent_workers",
                 "prefetch_factor": "dataloader_prefetch_factor"}
DTYPE_LINES = {"bf16": "bf16=True", "fp16": "fp16=True", "fp32": "bf16=False, fp16=False"}


def _loader_values(tuned: Any) -> dict[str, Any]:
    """What the Trainer's loader should have: what autotune.apply built into
    ``tuned.loader`` (caps included), else the plan's values."""
    values = tuned.plan.values("dataloader")
    if isinstance(tuned.loader, DataLoader):
        loader = tuned.loader
        values = {key: getattr(loader, key) for key in LOADER_FIELDS}
    workers = int(values.get("num_workers") or 0)
    return {"num_workers": workers, "pin_memory": bool(values.get("pin_memory")),
            "persistent_workers": bool(values.get("persistent_workers")) and workers > 0,
            "prefetch_factor": values.get("prefetch_factor") if workers > 0 else None}


def _loader_row(key: str, field: str) -> Row:
    """A loader setting: the Trainer builds its own loader, from this field."""
    def field_value(value: Any, tuned: Any) -> dict[str, Any]:
        return {field: _loader_values(tuned)[key]} if "dataloader" in tuned.plan else {}

    return Row("dataloader", key, options=field_value)


def _fused_adamw(tuned: Any) -> bool:
    workload = getattr(tuned.context, "workload", None)
    return (tuned.plan.get("optimizer", "implementation") == "fused"
            and getattr(workload, "optimizer", None) == "AdamW")


def _compile(value: Any, tuned: Any) -> dict[str, Any]:
    mode = value or "off"
    return {"torch_compile": True, "torch_compile_mode": mode} if mode != "off" \
        else {"torch_compile": False}


def _other_optimizer(change: Change, tuned: Any) -> str:
    optimizer = getattr(getattr(tuned.context, "workload", None), "optimizer", None)
    return (f"the Trainer's optim names cover fused AdamW only (your optimizer: "
            f"{optimizer or 'not given to autotune.apply'}); pass Trainer(optimizers="
            f"(YourOptimizer(..., {change.value}=True), None))")


#: What TrainingArguments takes from the plan (its fields, in this order),
#: what AutotuneTrainerCallback applies, and what to do about the rest.
TABLE = (
    Row("mixed_precision", "dtype", takes=value_in(DTYPE_LINES),
        options=lambda value, tuned: {"bf16": value == "bf16", "fp16": value == "fp16"},
        says=lambda change, tuned: DTYPE_LINES[change.value]),
    scaler_row("fp16=True", "the Trainer"),
    Row("mixed_precision", "tf32",
        options=lambda value, tuned: {} if value is None else {"tf32": bool(value)}),
    Row("accumulation", "steps",
        options=lambda value, tuned: {"gradient_accumulation_steps": int(value or 1)}),
    # transformers' "no clipping" is 0.0: its default, 1.0, clips.
    Row("clipping", "max_norm",
        options=lambda value, tuned: {"max_grad_norm": 0.0 if value is None else float(value)}),
    Row("clipping", "clip_value",
        instead="the Trainer clips by norm only; subclass Trainer and call "
                "torch.nn.utils.clip_grad_value_(model.parameters(), {value}) in training_step "
                "after the backward"),
    norm_type_row("the Trainer clips the 2-norm (max_grad_norm); another norm_type is not "
                  "applied"),
    Row("compile", "mode", options=_compile,
        says="torch_compile=True, torch_compile_mode={value!r}"),
    Row("compile", "fullgraph",
        instead="TrainingArguments has no fullgraph; compile the model yourself "
                "(torch.compile(model, fullgraph=True)) and leave torch_compile off"),
    *(_loader_row(key, field) for key, field in LOADER_FIELDS.items()),
    Row("optimizer", "implementation", instead=_other_optimizer,
        takes=lambda change, tuned: _fused_adamw(tuned),
        options=lambda value, tuned: {"optim": "adamw_torch_fused"} if _fused_adamw(tuned) else {}),
    *callback_rows("AutotuneTrainerCallback(tuned) while training"),
)


def _plan_arguments(tuned: Any) -> dict[str, Any]:
    out = options(TABLE, tuned)
    if device_type(tuned) == "cpu":
        # The plan is for the CPU; the Trainer also wants to be told before
        # it runs bf16 there.
        out["use_cpu"] = True
    return out


def unsupported(tuned: Any) -> list[str]:
    """One line per planned setting (one that is not PyTorch's behaviour)
    that neither ``training_arguments`` nor ``AutotuneTrainerCallback`` can
    apply, with what to do instead."""
    return lines(TABLE, tuned, FRAMEWORK)[1]


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
    applied, missing = lines(TABLE, tuned, FRAMEWORK)
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


def _trainer_callback() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("AutotuneTrainerCallback needs transformers: "
                          "pip install transformers") from None
    return TrainerCallback


class _Callback(RuntimeCallback):
    """Applies the part of an autotune plan no TrainingArguments field
    covers: thread counts and channels_last, from ``on_train_begin`` to
    ``on_train_end``."""

    logger = log
    when = "at on_train_end"

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any) -> None:
        self.begin(model, _check_args(args, self.tuned))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.end()


# AutotuneTrainerCallback subclasses transformers' TrainerCallback: made
# (and transformers imported) on first use.
__getattr__ = lazy_callback(__name__, "AutotuneTrainerCallback", _trainer_callback, _Callback)
