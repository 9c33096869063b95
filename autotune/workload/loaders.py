"""Helpers for the loaders users bring: DataLoaders, and any other iterable
of batches (a list, a class with ``__iter__``, a generator).

A DataLoader can be rebuilt with other loading settings
(:func:`rebuild_loader`); anything else is used as it is. Measured tuning
iterates a loader many times, so a one-shot iterator (a generator) cannot
be measured on: :func:`one_shot` says so before anything is consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def is_dataloader(loader: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(loader, DataLoader)


def workers_adjustable(loader: Any) -> bool:
    """True for a plain torch DataLoader over a map-style dataset: it can be
    rebuilt with another worker count and yield the same samples. A subclass
    may rely on its own constructor; every worker iterates its own copy of
    an IterableDataset, so another count would repeat or drop samples."""
    from torch.utils.data import DataLoader, IterableDataset

    return type(loader) is DataLoader and not isinstance(loader.dataset, IterableDataset)


def one_shot(loader: Any) -> bool:
    """True for an iterator (a generator, ``iter(x)``): a second pass over it
    yields nothing. A DataLoader or a list starts afresh at every ``iter``."""
    return isinstance(loader, Iterator) and not is_dataloader(loader)


def dataset_length(loader: Any) -> int | None:
    """``len(loader.dataset)`` when there is one with a length, else None."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset without __len__
        return None


def loader_settings(loader: Any) -> dict[str, Any]:
    """The loading settings ``loader`` has now (DataLoader's defaults when it
    is not a DataLoader): the dataloader plugin's "off" is the user's own loader."""
    workers = int(getattr(loader, "num_workers", 0) or 0)
    return {"num_workers": workers,
            "pin_memory": bool(getattr(loader, "pin_memory", False)),
            "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
            "prefetch_factor": getattr(loader, "prefetch_factor", None) if workers > 0 else None}


def rebuild_loader(loader: Any, *, num_workers: int, pin_memory: bool = False,
                   persistent_workers: bool = False, prefetch_factor: int | None = None,
                   batch_size: int | None = None) -> Any:
    """A new DataLoader over the same dataset yielding the same batches
    (same sampler object, batch size, collate_fn, drop_last, generator,
    worker_init_fn, timeout, in_order...), with new loading settings; with
    ``batch_size``, batches of that size instead (not for a loader built on
    its own ``batch_sampler``: ``ValueError``). The user's loader is left
    untouched and keeps working."""
    from torch.utils.data import DataLoader, IterableDataset

    size = loader.batch_size if batch_size is None else batch_size

    kwargs: dict[str, Any] = {
        "dataset": loader.dataset, "num_workers": num_workers, "collate_fn": loader.collate_fn,
        "pin_memory": pin_memory, "worker_init_fn": loader.worker_init_fn,
        "generator": loader.generator,
    }
    if isinstance(loader.dataset, IterableDataset):
        kwargs.update(batch_size=size, drop_last=loader.drop_last)
    elif loader.batch_size is None and loader.batch_sampler is not None:
        if batch_size is not None:
            raise ValueError("a DataLoader built on its own batch_sampler cannot be rebuilt "
                             "with another batch_size")
        kwargs["batch_sampler"] = loader.batch_sampler  # the user's own batch sampler
    else:
        # The same sampler object: shuffling draws from the same generator,
        # so the order is what the user's loader would have produced.
        kwargs.update(sampler=loader.sampler, batch_size=size, drop_last=loader.drop_last)
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                      multiprocessing_context=loader.multiprocessing_context,
                      timeout=loader.timeout)
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    if getattr(loader, "pin_memory_device", "") and pin_memory:
        kwargs["pin_memory_device"] = loader.pin_memory_device
    return DataLoader(**kwargs)


def peek_batch(loader: Any) -> Any:
    """The first batch, loaded in this process (no worker start-up for a
    DataLoader with workers). Consumes nothing of a re-iterable loader; the
    caller restores the RNG state this draws from. ``StopIteration`` when
    the loader yields nothing."""
    from torch.utils.data import DataLoader

    probe = loader
    if type(loader) is DataLoader and loader.num_workers > 0:
        probe = rebuild_loader(loader, num_workers=0)
    return next(iter(probe))
