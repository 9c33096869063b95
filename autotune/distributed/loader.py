"""Loaders for DDP: each rank reads its share of the data through a
``DistributedSampler``, reshuffled every epoch."""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from autotune.distributed.ranks import DistributedError, rank, world_size


class EpochLoader:
    """A loader whose ``DistributedSampler`` gets ``set_epoch(n)`` before
    each pass, so every epoch has a new order (the same on all ranks);
    without it each epoch repeats the first one's order."""

    def __init__(self, loader: Any, start_epoch: int = 0) -> None:
        self.loader = loader
        self.epoch = start_epoch

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # batch_size, dataset, num_workers...
        return getattr(self.__dict__["loader"], name)


def distributed_loader(loader: Any, *, shuffle: bool | None = None, seed: int = 0,
                       drop_last: bool = False) -> Any:
    """``loader`` rebuilt with a ``DistributedSampler`` (each rank sees its
    1/world_size share); other settings kept. A loader that already has one
    is returned as is. ``shuffle`` defaults to whether ``loader`` shuffles."""
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    if type(loader) is not DataLoader:
        raise DistributedError(f"cannot add a DistributedSampler to a {type(loader).__name__}; "
                               "pass a torch DataLoader or build it with one")
    if loader.batch_size is None:
        raise DistributedError("the loader uses its own batch_sampler; build it with a "
                               "DistributedSampler yourself")
    if shuffle is None:
        shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(),
                                 shuffle=shuffle, seed=seed, drop_last=drop_last)
    kwargs: dict[str, Any] = {"batch_size": loader.batch_size, "sampler": sampler,
                              "num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
                              "pin_memory": loader.pin_memory, "drop_last": loader.drop_last,
                              "worker_init_fn": loader.worker_init_fn}
    if loader.num_workers > 0:
        kwargs.update(prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers,
                      multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(loader.dataset, **kwargs)
