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

import logging
from typing import Any

from autotune.bridges.callbacks import RuntimeCallback, lazy_callback
from autotune.bridges.translate import (Change, Row, callback_rows, lines, loader_row,
                                        norm_type_row, options, planned_as, report, scaler_row,
                                        tf32_call, value_in)

__all__ = ["AutotuneCallback", "trainer_kwargs", "unsupported"]

log = logging.getLogger("autotune.bridges.lightning")

PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
FRAMEWORK = "Lightning"


def _clip_by_norm(value: Any, tuned: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return {"gradient_clip_val": value, "gradient_clip_algorithm": "norm"}


def _clip_by_value(value: Any, tuned: Any) -> dict[str, Any]:
    if value is None or tuned.plan.get("clipping", "max_norm") is not None:
        return {}  # Lightning clips one way: by norm where both are planned
    return {"gradient_clip_val": value, "gradient_clip_algorithm": "value"}


def _clip_another_norm(change: Change, tuned: Any) -> str:
    return ("Lightning clips the 2-norm; override configure_gradient_clipping with "
            "torch.nn.utils.clip_grad_norm_(self.parameters(), "
            f"{tuned.plan.get('clipping', 'max_norm')}, norm_type={change.value})")


def _compile_yourself(change: Change, tuned: Any) -> str:
    mode = "" if change.value == "default" else f", mode={change.value!r}"
    return ("Lightning has no Trainer option for it; compile the module yourself: "
            f"model = torch.compile(model{mode}), then trainer.fit(model, ...) (Lightning's "
            "docs: 'Compile your model'); tuned.model is that wrapper already")


#: What the Trainer takes from the plan (its keyword arguments, in this
#: order), what AutotuneCallback and tuned.loader apply, and what to do
#: about the rest.
TABLE = (
    Row("mixed_precision", "dtype", takes=value_in(PRECISION),
        options=lambda value, tuned: {"precision": PRECISION.get(value or "fp32", "32-true")}),
    scaler_row("precision='16-mixed'", FRAMEWORK),
    Row("mixed_precision", "tf32",
        instead=lambda change, tuned: "Lightning has no Trainer option for TF32; "
                                      + tf32_call(change, "trainer.fit")),
    Row("accumulation", "steps",
        options=lambda value, tuned: {"accumulate_grad_batches": int(value or 1)}),
    Row("clipping", "max_norm", options=_clip_by_norm),
    Row("clipping", "clip_value", options=_clip_by_value,
        takes=planned_as("clipping", "max_norm", None),
        instead="Lightning clips by norm or by value, not both (norm is applied); override "
                "configure_gradient_clipping to also call "
                "torch.nn.utils.clip_grad_value_(self.parameters(), {value})"),
    norm_type_row(_clip_another_norm),
    *callback_rows("AutotuneCallback(tuned) while the Trainer runs"),
    loader_row(": pass trainer.fit(model, train_dataloaders=tuned.loader)"),
    Row("compile", "mode", instead=_compile_yourself),
    Row("compile", "fullgraph",
        instead="pass fullgraph=True to your own torch.compile(model, ...)"),
    Row("optimizer", "implementation",
        instead="Lightning builds no optimizer; pass {value}=True to the optimizer in "
                "configure_optimizers, e.g. torch.optim.AdamW(self.parameters(), {value}=True)"),
)


def unsupported(tuned: Any) -> list[str]:
    """One line per planned setting (one that is not PyTorch's behaviour)
    that neither ``trainer_kwargs`` nor ``AutotuneCallback`` can apply,
    with what to do instead."""
    return lines(TABLE, tuned, FRAMEWORK)[1]


def trainer_kwargs(tuned: Any) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer`` from ``tuned.plan``:
    ``precision``, ``accumulate_grad_batches`` and, when clipping is
    planned, ``gradient_clip_val`` and ``gradient_clip_algorithm``. Logs one
    INFO line per setting applied (here, by the callback or through
    ``tuned.loader``) and one WARNING line per setting that is not."""
    applied, missing = lines(TABLE, tuned, FRAMEWORK)
    report(log, applied, missing)
    return options(TABLE, tuned)


def _lightning_callback() -> type:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("AutotuneCallback needs Lightning: pip install lightning") from None
    return pl.Callback


def _check_trainer(trainer: Any, tuned: Any) -> list[str]:
    """What the Trainer has where it differs from ``trainer_kwargs(tuned)``."""
    wanted = options(TABLE, tuned)
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


class _Callback(RuntimeCallback):
    """Applies the part of an autotune plan a Lightning callback can:
    thread counts and channels_last (weights, and inputs to the
    LightningModule's forward), from ``setup`` to ``teardown``."""

    logger = log
    when = "at teardown"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.begin(pl_module, _check_trainer(trainer, self.tuned))

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
        self.end()


# AutotuneCallback subclasses Lightning's Callback, so it is made (and
# Lightning imported) on first use: trainer_kwargs and unsupported work
# without Lightning.
__getattr__ = lazy_callback(__name__, "AutotuneCallback", _lightning_callback, _Callback)
