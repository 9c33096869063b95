"""Collate: how the DataLoader turns samples into a batch.

Profile options (``plugins: collate:``)::

    collate:
      collate: default   # default (the loader's collate_fn as given) | stack

``stack`` collates samples that are tuples (or lists) of tensors -- what a
``TensorDataset`` yields -- with one ``torch.stack`` per field, without
``default_collate``'s generic recursion over element types; a batch of any
other shape is handed to ``default_collate`` unchanged, so the batches are
the same either way. It replaces only torch's own ``default_collate`` on a
plain ``torch.utils.data.DataLoader``: a collate_fn the user wrote is never
touched. Speed only, measured end to end with the loader (phase
``loader``); the rule keeps the user's loader and leaves ``stack`` to the
tuner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune.sdk import (
    LOADER, Context, Kind, Knob, PluginOptions, Setting, default, from_profile, hookimpl, option,
    parse_options)

NAME = "collate"
CHOICES = ("default", "stack")


@dataclass(frozen=True)
class Options(PluginOptions):
    collate: str = option("default", "default: the loader's collate_fn as given; stack: one "
                          "torch.stack per field", choices=CHOICES)


@hookimpl
def autotune_options() -> type:
    return Options


def propose(profile_options: Mapping[str, Any] | None = None) -> dict[str, Setting]:
    """This plugin's settings; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    if "collate" in given:
        return {"collate": from_profile(options.collate, f"profile asks for the "
                                                         f"{options.collate} collate")}
    return {"collate": default("default", "the loader's collate_fn as you built it; 'stack' "
                                          "(torch.stack per field) is measured by the tuner")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.options_for(NAME))


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    # "default" is the user's loader exactly as built: the tuner's baseline.
    return {"collate": Knob(off="default", phase=LOADER, choices=CHOICES)}


# -- the collate -------------------------------------------------------------------


def _stack(tensors: tuple[Any, ...]) -> Any:
    import torch
    from torch.utils.data import get_worker_info

    first = tensors[0]
    out = None
    if get_worker_info() is not None:
        # In a worker, stack straight into shared memory (as default_collate
        # does) so the batch is not copied again to reach the main process.
        numel = sum(t.numel() for t in tensors)
        storage = first._typed_storage()._new_shared(numel, device=first.device)
        out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, 0, out=out)


def stack_collate(batch: Any) -> Any:
    """``default_collate`` for samples that are tuples (or lists) of tensors
    of one shape per field, with one ``torch.stack`` per field; any other
    batch goes to ``default_collate`` itself. Returns a list of fields, as
    ``default_collate`` does for tuple samples."""
    import torch
    from torch.utils.data import default_collate

    first = batch[0] if isinstance(batch, (list, tuple)) and batch else None
    if not isinstance(first, (tuple, list)) or not first:
        return default_collate(batch)
    width = len(first)
    fields = []
    for i in range(width):
        column = tuple(sample[i] for sample in batch
                       if isinstance(sample, (tuple, list)) and len(sample) == width)
        if len(column) != len(batch) or not all(
                isinstance(t, torch.Tensor) and t.layout is torch.strided and not t.is_nested
                and t.shape == column[0].shape and t.dtype == column[0].dtype for t in column):
            return default_collate(batch)
        fields.append(column)
    return [_stack(column) for column in fields]


def uses_default_collate(loader: Any) -> bool:
    """A plain torch DataLoader that batches with torch's ``default_collate``."""
    from torch.utils.data import DataLoader, default_collate

    return type(loader) is DataLoader and loader.collate_fn is default_collate


def with_collate(loader: Any, collate_fn: Any) -> Any:
    """A new DataLoader over the same dataset with the same sampler, batch
    size, workers and every other setting, but ``collate_fn``. The user's
    loader is left untouched."""
    from torch.utils.data import DataLoader, IterableDataset

    kwargs: dict[str, Any] = {
        "dataset": loader.dataset, "num_workers": loader.num_workers, "collate_fn": collate_fn,
        "pin_memory": loader.pin_memory, "worker_init_fn": loader.worker_init_fn,
        "generator": loader.generator, "timeout": loader.timeout,
    }
    if isinstance(loader.dataset, IterableDataset):
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    elif loader.batch_size is None and loader.batch_sampler is not None:
        kwargs["batch_sampler"] = loader.batch_sampler
    else:
        # The same sampler object: shuffling draws from the same generator.
        kwargs.update(sampler=loader.sampler, batch_size=loader.batch_size,
                      drop_last=loader.drop_last)
    if loader.num_workers > 0:
        kwargs.update(prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers,
                      multiprocessing_context=loader.multiprocessing_context)
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    if getattr(loader, "pin_memory_device", "") and loader.pin_memory:
        kwargs["pin_memory_device"] = loader.pin_memory_device
    return DataLoader(**kwargs)


@hookimpl
def autotune_apply_loader(loader: Any, plan: Any, context: Context, report: Any) -> Any:
    choice = plan.get(NAME, "collate", "default")
    if choice == "default":
        report.add(NAME, Kind.SKIPPED, "collate=default: the loader's collate_fn as given")
        return None
    if choice != "stack":
        raise ValueError(f"collate.collate must be one of {CHOICES}, got {choice!r}")
    if not uses_default_collate(loader):
        from torch.utils.data import DataLoader

        if type(loader) is not DataLoader:
            what = f"{type(loader).__name__} is not a plain torch DataLoader"
        else:
            own = getattr(loader.collate_fn, "__qualname__", repr(loader.collate_fn))
            what = f"the loader batches with its own collate_fn ({own})"
        report.add(NAME, Kind.SKIPPED, f"collate=stack: {what}; left as is")
        return None
    report.add(NAME, Kind.APPLIED, "rebuilt the DataLoader: default_collate -> stack_collate "
               "(torch.stack per field)")
    return with_collate(loader, stack_collate)


# -- measured tuning ---------------------------------------------------------------


@hookimpl
def autotune_candidates(context: Context) -> list[dict[str, Any]]:
    loader = context.workload.loader
    return [{"collate": "stack"}] if loader is not None and uses_default_collate(loader) else []


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    loader = context.workload.loader
    if loader is None or not uses_default_collate(loader):
        return 0.0, "the loader does not batch with torch's default_collate"
    return 0.05, "stacking tuples of tensors skips default_collate's per-element dispatch"
