"""How a batch becomes a loss, and how many samples it holds: the step
contract the engine, the own-loop API and measured tuning share.

Four shapes, the way the libraries users know write them:

* ``(inputs, targets)`` with a ``loss_fn``: ``loss_fn(model(inputs), targets)``
  (plain PyTorch, timm);
* a dict batch (Hugging Face's collators: ``BatchEncoding`` and friends):
  ``outputs = model(**batch)``; the loss is ``loss_fn(outputs, batch)`` when
  a ``loss_fn`` is given, else the model's own: ``outputs.loss`` or
  ``outputs["loss"]``;
* a pair without a ``loss_fn``: ``model(inputs, targets)`` computes its own
  loss (torchvision's detection models take ``(images, targets)`` and return
  a dict of losses);
* anything else: ``step_fn(model, batch) -> loss`` (two-input models, losses
  that need the inputs).

A model or ``step_fn`` that returns a dict of losses (torchvision detection:
``loss_classifier``, ``loss_box_reg``, ...) trains on their sum; each part is
kept in :attr:`Loss.parts` for the logs.

Samples (for samples/s, the effective batch and every tuning score) are
counted per batch by ``batch_size_fn(batch)`` when given, else: one per
target dict when the targets are a list of dicts (detection: images, not
boxes), the targets' leading dimension, else the first tensor's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from autotune.errors import AutotuneError, TrainingError


@dataclass(frozen=True)
class Loss:
    """What one forward gave: the tensor to train on, and its parts."""

    value: torch.Tensor
    outputs: Any = None
    #: ``{name: tensor}`` when the model (or ``step_fn``) returned a dict of losses.
    parts: Mapping[str, torch.Tensor] | None = None


def _is_pair(batch: Any) -> bool:
    return isinstance(batch, (tuple, list)) and len(batch) == 2 and not hasattr(batch, "_fields")


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) \
        else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def _leading(obj: Any) -> int | None:
    tensor = _first_tensor(obj)
    if tensor is None:
        return None
    return int(tensor.shape[0]) if tensor.dim() > 0 else 1


def loss_of(result: Any, where: str) -> Loss:
    """The loss in a model's (or ``step_fn``'s) result: a scalar tensor,
    an output's ``loss`` attribute or key, or a dict of losses (summed)."""
    if isinstance(result, torch.Tensor):
        return Loss(result)
    loss = getattr(result, "loss", None) if not isinstance(result, Mapping) else None
    if isinstance(loss, torch.Tensor):
        return Loss(loss, outputs=result)
    if isinstance(result, Mapping):
        if isinstance(result.get("loss"), torch.Tensor):
            return Loss(result["loss"], outputs=result)
        parts = {k: v for k, v in result.items() if isinstance(v, torch.Tensor)}
        if parts and len(parts) == len(result) and all(v.dim() == 0 for v in parts.values()):
            return Loss(torch.stack(list(parts.values())).sum(), outputs=result, parts=parts)
    kind = type(result).__name__
    raise TrainingError(f"{where} returned {kind}, which holds no loss (no .loss, no 'loss' key, "
                        "not a dict of scalar losses); HINT: pass loss_fn=fn (called as "
                        "fn(outputs, targets)) or step_fn=fn (called as fn(model, batch), "
                        "returning the loss)")


@dataclass(frozen=True)
class StepContract:
    """``loss_fn`` / ``step_fn`` / ``batch_size_fn`` as the user gave them."""

    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    step_fn: Callable[[Any, Any], Any] | None = None
    batch_size_fn: Callable[[Any], int] | None = None
    #: Called with every training loss (measured tuning checks finiteness).
    observer: Callable[[torch.Tensor], None] | None = None

    def __post_init__(self) -> None:
        for name in ("loss_fn", "step_fn", "batch_size_fn"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise AutotuneError(f"{name} must be callable, got {type(value).__name__}")
        if self.loss_fn is not None and self.step_fn is not None:
            raise AutotuneError("pass loss_fn or step_fn, not both: step_fn(model, batch) "
                                "computes the loss itself")

    @classmethod
    def of(cls, loss_fn: Any = None, step_fn: Any = None, batch_size_fn: Any = None) -> "StepContract":
        """``loss_fn`` itself when it is already a contract, else a new one."""
        if isinstance(loss_fn, StepContract):
            if step_fn is None and batch_size_fn is None:
                return loss_fn
            return replace(loss_fn, step_fn=step_fn or loss_fn.step_fn,
                           batch_size_fn=batch_size_fn or loss_fn.batch_size_fn)
        return cls(loss_fn, step_fn, batch_size_fn)

    @property
    def given(self) -> bool:
        """The user said how to compute the loss (else the model does)."""
        return self.loss_fn is not None or self.step_fn is not None

    def observed(self, observer: Callable[[torch.Tensor], None]) -> "StepContract":
        return replace(self, observer=observer)

    def describe(self) -> str:
        """Stable words for cache keys and reports."""
        def name(fn: Any) -> str:
            return getattr(fn, "__qualname__", type(fn).__qualname__)

        if self.step_fn is not None:
            return f"step_fn={name(self.step_fn)}"
        if self.loss_fn is not None:
            return name(self.loss_fn)
        return "the model's own loss"

    # -- a batch ---------------------------------------------------------------
    def inputs_of(self, batch: Any) -> Any:
        """The part of a batch that is the model's input (what channels_last
        and other input hooks see): a pair's first element, else the batch."""
        return batch[0] if _is_pair(batch) and self.step_fn is None else batch

    def with_inputs(self, batch: Any, inputs: Any) -> Any:
        if _is_pair(batch) and self.step_fn is None:
            return type(batch)((inputs, batch[1]))
        return inputs

    def samples(self, batch: Any) -> int:
        if self.batch_size_fn is not None:
            n = self.batch_size_fn(batch)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise TrainingError(f"batch_size_fn returned {n!r}; it must return the "
                                    "number of samples in the batch (an integer >= 1)")
            return n
        if _is_pair(batch):
            inputs, targets = batch
            if isinstance(targets, (list, tuple)) and targets \
                    and all(isinstance(t, Mapping) for t in targets):
                return len(targets)  # one target dict per image (detection)
            return _leading(targets) or _leading(inputs) or 1
        if isinstance(batch, Mapping):
            for key in ("labels", "input_ids", "pixel_values"):
                if isinstance(batch.get(key), torch.Tensor) and batch[key].dim() > 0:
                    return int(batch[key].shape[0])
        return _leading(batch) or 1

    def targets_of(self, batch: Any) -> Any:
        if _is_pair(batch):
            return batch[1]
        if isinstance(batch, Mapping):
            return batch.get("labels")
        return None

    def loss(self, model: Any, batch: Any) -> Loss:
        """Forward and loss, as the contract says (inside the caller's
        forward context)."""
        if self.step_fn is not None:
            result = loss_of(self.step_fn(model, batch), "step_fn(model, batch)")
        elif isinstance(batch, Mapping):
            outputs = model(**batch)
            result = (Loss(self.loss_fn(outputs, batch), outputs) if self.loss_fn is not None
                      else loss_of(outputs, "model(**batch)"))
        elif _is_pair(batch):
            inputs, targets = batch
            if self.loss_fn is not None:
                outputs = model(inputs)
                result = Loss(self.loss_fn(outputs, targets), outputs)
            else:
                result = loss_of(model(inputs, targets), "model(inputs, targets)")
        else:
            length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
            raise TrainingError(
                f"a batch must be an (inputs, targets) pair or a dict, got "
                f"{type(batch).__name__}{length}; HINT: pass step_fn=fn, called as fn(model, "
                "batch) and returning the loss, for any other batch (several inputs, a loss "
                "that needs the inputs)")
        if not isinstance(result.value, torch.Tensor):
            raise TrainingError(f"the loss must be a tensor, got {type(result.value).__name__}")
        if self.observer is not None:
            self.observer(result.value)
        return result
