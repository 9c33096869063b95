"""An autotune plan for a Lightning ``Trainer``.

::

    tuned = autotune.apply(model, loader)                 # model: your LightningModule
    trainer = L.Trainer(max_epochs=3, callbacks=[AutotuneCallback(tuned)],
                        **trainer_kwargs(tuned))
    trainer.fit(model, train_dataloaders=tuned.loader)

What is applied, and by what:

* ``trainer_kwargs(tuned)``: ``precision`` (``"bf16-mixed"``, ``"16-mixed"``
  -- Lightning's GradScaler included -- or ``"32-true"``) from
  ``mixed_precision.dtype``; ``accumulate_grad_batches`` from
  ``accumulation.steps``; ``gradient_clip_val`` and
  ``gradient_clip_algorithm`` from ``clipping.max_norm`` (``"norm"``) or
  ``clipping.clip_value`` (``"value"``).
* ``AutotuneCallback(tuned)``: the threads plugin's thread counts (set at
  ``setup``, restored at ``teardown``) and channels_last (the weights, and
  4-D floating-point tensors passed to the LightningModule's forward,
  through a forward pre-hook: what ``self(x)`` in ``training_step`` gets).
  At ``setup`` it also checks the Trainer has what ``trainer_kwargs`` gives
  and warns where it differs.
* The loader settings are in ``tuned.loader``, which ``autotune.apply``
  rebuilt: pass it as ``train_dataloaders``.

Not applied, each stated in one line by :func:`unsupported` (and logged as
a warning by ``trainer_kwargs``): ``torch.compile`` (compile the module
yourself, as Lightning's docs show: ``model = torch.compile(model)``), the
fused/foreach optimizer (pass ``fused=True`` in ``configure_optimizers``),
TF32, clipping with a norm other than 2 or by value and norm together, and
third-party plugins' settings, which need autotune's own engine.

Lightning is imported only by ``AutotuneCallback`` (``lightning.pytorch``,
else ``pytorch_lightning``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from autotune.bridges import (Change, Runtime, describe, generic_hint, report,
                              split_lines)

__all__ = ["AutotuneCallback", "trainer_kwargs", "unsupported"]

log = logging.getLogger("autotune.bridges.lightning")

PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
#: Settings the callback applies (the rest of the plan is trainer_kwargs').
CALLBACK = {("threads", "intra_op"), ("threads", "inter_op"), ("threads", "set_env"),
            ("channels_last", "enabled")}


def _kwargs(plan: Any) -> dict[str, Any]:
    dtype = plan.get("mixed_precision", "dtype", "fp32") or "fp32"
    kwargs: dict[str, Any] = {"precision": PRECISION.get(dtype, "32-true"),
                              "accumulate_grad_batches": int(plan.get("accumulation", "steps",
                                                                      1) or 1)}
    max_norm = plan.get("clipping", "max_norm")
    clip_value = plan.get("clipping", "clip_value")
    if max_norm is not None:
        kwargs.update(gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
    elif clip_value is not None:
        kwargs.update(gradient_clip_val=clip_value, gradient_clip_algorithm="value")
    return kwargs


def _line(change: Change, tuned: Any) -> tuple[bool, str]:
    """``(applied, line)`` for one planned change."""
    plan = tuned.plan
    key, value = (change.plugin, change.key), change.value
    kwargs = _kwargs(plan)
    if key == ("mixed_precision", "dtype") and value in PRECISION:
        return True, describe(change, f"precision={PRECISION[value]!r}")
    if key == ("mixed_precision", "grad_scaler"):
        if plan.get("mixed_precision", "dtype") == "fp16":
            return True, describe(change, "precision='16-mixed' brings Lightning's GradScaler")
        return False, describe(change, "Lightning scales the loss only with precision='16-mixed'; "
                                       "not applied")
    if key == ("mixed_precision", "tf32"):
        return False, describe(change, "Lightning has no Trainer option for TF32; call "
                                       "torch.set_float32_matmul_precision("
                                       f"{'high' if value else 'highest'!r}) before trainer.fit")
    if key == ("accumulation", "steps"):
        steps = kwargs["accumulate_grad_batches"]
        return True, describe(change, f"accumulate_grad_batches={steps}")
    if key == ("clipping", "max_norm"):
        return True, describe(change, f"gradient_clip_val={value}, gradient_clip_algorithm='norm'")
    if key == ("clipping", "clip_value"):
        if plan.get("clipping", "max_norm") is None:
            return True, describe(change, f"gradient_clip_val={value}, "
                                          "gradient_clip_algorithm='value'")
        return False, describe(change, "Lightning clips by norm or by value, not both (norm is "
                                       "applied); override configure_gradient_clipping to also "
                                       f"call torch.nn.utils.clip_grad_value_(self.parameters(), "
                                       f"{value})")
    if key == ("clipping", "norm_type"):
        if plan.get("clipping", "max_norm") is None:
            return True, describe(change, "no norm clipping planned: nothing to apply")
        return False, describe(change, "Lightning clips the 2-norm; override "
                                       "configure_gradient_clipping with torch.nn.utils."
                                       "clip_grad_norm_(self.parameters(), "
                                       f"{plan.get('clipping', 'max_norm')}, norm_type={value})")
    if key in CALLBACK:
        return True, describe(change, "applied by AutotuneCallback(tuned) while the Trainer runs")
    if change.plugin == "dataloader":
        loader = tuned.loader
        if loader is None:
            return False, describe(change, "autotune.apply had no DataLoader to rebuild; build "
                                           f"yours with {change.key}={value!r}")
        return True, describe(change, f"in tuned.loader ({change.key}="
                                      f"{getattr(loader, change.key, value)!r}): pass "
                                      "trainer.fit(model, train_dataloaders=tuned.loader)")
    if key == ("compile", "mode"):
        mode = "" if value == "default" else f", mode={value!r}"
        return False, describe(change, "Lightning has no Trainer option for it; compile the "
                                       f"module yourself: model = torch.compile(model{mode}), "
                                       "then trainer.fit(model, ...) (Lightning's docs: "
                                       "'Compile your model'); tuned.model is that "
                                       "wrapper already")
    if key == ("compile", "fullgraph"):
        return False, describe(change, "pass fullgraph=True to your own torch.compile(model, ...)")
    if key == ("optimizer", "implementation"):
        return False, describe(change, "Lightning builds no optimizer; pass "
                                       f"{value}=True to the optimizer in configure_optimizers, "
                                       f"e.g. torch.optim.AdamW(self.parameters(), {value}=True)")
    return False, generic_hint(change, "Lightning")


def _lines(tuned: Any) -> tuple[list[str], list[str]]:
    return split_lines(tuned, _line)


def unsupported(tuned: Any) -> list[str]:
    """One line per planned setting (one that is not PyTorch's behaviour)
    that neither ``trainer_kwargs`` nor ``AutotuneCallback`` can apply,
    with what to do instead."""
    return _lines(tuned)[1]


def trainer_kwargs(tuned: Any) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer`` from ``tuned.plan``:
    ``precision``, ``accumulate_grad_batches`` and, when clipping is
    planned, ``gradient_clip_val`` and ``gradient_clip_algorithm``. Logs one
    INFO line per setting applied (here, by the callback or through
    ``tuned.loader``) and one WARNING line per setting that is not."""
    applied, missing = _lines(tuned)
    report(log, applied, missing)
    return _kwargs(tuned.plan)


def _lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("AutotuneCallback needs Lightning: pip install lightning") from None
    return pl


def _check_trainer(trainer: Any, tuned: Any) -> list[str]:
    """What the Trainer has where it differs from ``trainer_kwargs(tuned)``."""
    wanted = _kwargs(tuned.plan)
    have = {"precision": str(getattr(trainer, "precision", wanted["precision"])),
            "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches",
                                               wanted["accumulate_grad_batches"]),
            "gradient_clip_val": getattr(trainer, "gradient_clip_val", None)}
    algorithm = getattr(trainer, "gradient_clip_algorithm", None)
    have["gradient_clip_algorithm"] = getattr(algorithm, "value", algorithm)
    out = []
    for key, value in wanted.items():
        if key == "gradient_clip_algorithm" and have[key] is None and value == "norm":
            continue  # Lightning's default algorithm is norm
        if have.get(key) != value:
            out.append(f"the Trainer has {key}={have.get(key)!r} where the plan gives {value!r}: "
                       "pass **trainer_kwargs(tuned) to lightning.Trainer")
    if wanted.get("gradient_clip_val") is None and have["gradient_clip_val"] is not None:
        out.append(f"the Trainer clips gradients (gradient_clip_val={have['gradient_clip_val']}) "
                   "where the plan has no clipping")
    return out


@functools.lru_cache(maxsize=None)
def _callback_class() -> type:
    pl = _lightning()

    class AutotuneCallback(pl.Callback):
        """Applies the part of an autotune plan a Lightning callback can:
        thread counts and channels_last (weights, and inputs to the
        LightningModule's forward), from ``setup`` to ``teardown``."""

        def __init__(self, tuned: Any) -> None:
            super().__init__()
            self.tuned = tuned
            self.runtime = Runtime(tuned, log, when="at teardown")

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            for line in _check_trainer(trainer, self.tuned):
                log.warning("%s", line)
            self.runtime.start(pl_module)

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            planned = self.tuned.loader
            used = trainer.train_dataloader
            if planned is None or used is None or used is planned:
                return
            wanted = getattr(planned, "num_workers", None)
            have = getattr(used, "num_workers", wanted)
            if wanted != have:
                log.warning("the Trainer's loader has num_workers=%s where tuned.loader has %s: "
                            "pass trainer.fit(model, train_dataloaders=tuned.loader)", have, wanted)

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self.runtime.stop()

    # Named as the module attribute it is, so pickle finds it there.
    AutotuneCallback.__module__ = __name__
    AutotuneCallback.__qualname__ = "AutotuneCallback"
    return AutotuneCallback


def __getattr__(name: str) -> Any:
    # The callback subclasses Lightning's Callback, so it is made (and
    # Lightning imported) on first use: trainer_kwargs and unsupported work
    # without Lightning.
    if name == "AutotuneCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
