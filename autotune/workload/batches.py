"""Small tensor and module helpers the engine and the plugins share."""

from __future__ import annotations

from typing import Any

import torch

from autotune.errors import TrainingError


def move_to(obj: Any, device: torch.device, *, non_blocking: bool = False,
            memory_format: torch.memory_format | None = None) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to ``device``.

    ``memory_format`` (channels_last) is applied to 4-D floating-point
    tensors only: images; masks, token ids and targets keep their layout.
    """
    if isinstance(obj, torch.Tensor):
        if memory_format is not None and obj.dim() == 4 and obj.is_floating_point():
            return obj.to(device, non_blocking=non_blocking, memory_format=memory_format)
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to(v, device, non_blocking=non_blocking, memory_format=memory_format)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(move_to(v, device, non_blocking=non_blocking, memory_format=memory_format)
                         for v in obj)
    return obj


def first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def count_samples(inputs: Any, targets: Any) -> int:
    """Samples in a batch: the leading dimension of the targets (or inputs)."""
    for part in (targets, inputs):
        tensor = first_tensor(part)
        if tensor is not None and tensor.dim() > 0:
            return int(tensor.shape[0])
    return 1


def split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TrainingError(f"a batch must be an (inputs, targets) pair, got "
                        f"{type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                        + "; HINT: make the dataset or collate_fn return (inputs, targets)")


def is_compiled(model: Any) -> bool:
    """True for the wrapper ``torch.compile(module)`` returns."""
    # Checked by name: importing torch._dynamo just to get the class costs
    # about a second, and most runs never compile.
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


def find_ddp(model: Any) -> "torch.nn.parallel.DistributedDataParallel | None":
    """The DistributedDataParallel wrapper in ``model``'s wrapper chain, if any."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            return model
        if is_compiled(model):
            model = model._orig_mod
            continue
        return None


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under compile / DDP / DataParallel wrappers: its
    ``state_dict`` has the keys the user's own model has (no ``_orig_mod.``
    or ``module.`` prefixes)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if is_compiled(model):
            model = model._orig_mod
        elif isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        else:
            return model


def has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in unwrap_model(model).modules())


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
