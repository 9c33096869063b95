"""A DataLoader whose loading settings can change in the middle of an epoch.

The online tuner tries other DataLoader settings (num_workers, pin_memory,
persistent_workers, prefetch_factor) while training goes on, so it cannot
wait for an epoch boundary, and it must not change what the model sees. A
DataLoader rebuilt mid-epoch would restart the epoch, reshuffle, and draw
seeds from torch's global RNG again, so a model with dropout would train on
other samples with other masks. :class:`SwitchableLoader` fixes the epoch up
front instead: at ``iter()`` it draws from the global RNG exactly what the
user's own loader draws for a whole epoch, in the same order, and lists the
epoch's batches of indices from the user's sampler. The batches are then
loaded by "segment" DataLoaders (one per settings) that start at the current
position and draw only from a private generator: a switch changes how the
batches are loaded, never which batches come, their order or their bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils import signal_handling

from autotune.workload.loaders import loader_settings, workers_adjustable

log = logging.getLogger("autotune.workload.switching")

_KEYS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")


def _normalise(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``update``, made valid for a DataLoader: a partial
    switch such as ``{"num_workers": 0}`` from a persistent pool must not ask
    torch for persistent workers (or a prefetch factor) without workers."""
    unknown = sorted(set(update) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown loader settings {unknown}; expected some of {list(_KEYS)}")
    merged = {**base, **update}
    workers = int(merged["num_workers"] or 0)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    prefetch = merged["prefetch_factor"]
    prefetch = None if workers == 0 else (2 if prefetch is None else int(prefetch))
    if prefetch is not None and prefetch < 1:
        raise ValueError(f"prefetch_factor must be >= 1, got {prefetch}")
    return {"num_workers": workers, "pin_memory": bool(merged["pin_memory"]),
            "persistent_workers": workers > 0 and bool(merged["persistent_workers"]),
            "prefetch_factor": prefetch}


def stop_workers(iterator: Any, *, quiet: bool) -> None:
    """Shut a loader iterator's workers down now (the engine's epoch loop
    does it this way too). ``quiet``: an error is already on its way out;
    what the shutdown raises (a worker failure reported meanwhile) is logged
    rather than raised over it."""
    try:
        iterator._shutdown_workers()
    except Exception as exc:  # noqa: BLE001 - see quiet
        if not quiet:
            raise
        log.debug("while a segment loader's workers shut down after an error: %r", exc)
    finally:
        # A signal handled during the shutdown can cut it short before torch
        # forgets the pids; forget them here so its SIGCHLD handler cannot
        # raise for these (deliberately stopped) workers later.
        if getattr(iterator, "_worker_pids_set", False):
            signal_handling._remove_worker_pids(id(iterator))
            iterator._worker_pids_set = False


class _Remaining:
    """A segment loader's batch sampler (or sampler, without auto-batching):
    the epoch's batches from ``start`` on, snapshotted at its own ``iter()``.
    Workers prefetch ahead of the consumer, so only SwitchableLoader moves
    the position (when it yields a batch) and sets ``start`` before each
    segment; a persistent pool's reset calls ``iter()`` again and resumes
    there. It holds no reference to its owner: no cycle keeps pools alive."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.start = 0  # set by the owner before each iter()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches[self.start:])


class _Epoch(Iterator[Any]):
    """One epoch's iterator. Unlike a generator it can go on after an
    exception: the failed batch is still the next one, so a caller may
    switch to other settings and call ``next()`` again."""

    def __init__(self, owner: SwitchableLoader, epoch: int) -> None:
        self._owner, self._epoch = owner, epoch

    def __next__(self) -> Any:
        return self._owner._next(self._epoch)

    def _shutdown_workers(self) -> None:
        # The engine's worker_failures guard stops a loader iterator's
        # workers this way after an error; the next batch starts new ones.
        if self._owner._epoch == self._epoch:
            self._owner._drop_segment(failed=True)


class SwitchableLoader:
    """Iterates like ``loader`` (same batches, same order, same global RNG
    draws) while :meth:`switch` changes its loading settings at any batch."""

    def __init__(self, loader: DataLoader, settings: Mapping[str, Any] | None = None, *,
                 on_error: Callable[[BaseException], bool] | None = None) -> None:
        if not workers_adjustable(loader):
            what = (f"a DataLoader over an IterableDataset ({type(loader.dataset).__name__})"
                    if type(loader) is DataLoader and isinstance(loader.dataset, IterableDataset)
                    else f"a {type(loader).__name__}")
            raise ValueError("SwitchableLoader needs a plain torch DataLoader over a map-style "
                             f"dataset, not {what}")
        self._loader = loader
        #: Called when a batch fails to load; True: it switched to settings
        #: that work, so the same batch is loaded once more.
        self._on_error = on_error
        self._settings = _normalise(loader_settings(loader), settings or {})
        self._segments: dict[tuple[Any, ...], DataLoader] = {}  # one per settings
        self._generator = torch.Generator()  # the segment loaders' only RNG
        self._batches: list[Any] = []
        self._position = 0
        self._epoch = 0
        self._base_seed = 0
        self._active: Iterator[Any] | None = None
        self._active_loader: DataLoader | None = None

    loader = property(lambda self: self._loader, doc="The user's DataLoader.")
    settings = property(lambda self: dict(self._settings), doc="The settings in force now.")
    num_workers = property(lambda self: self._settings["num_workers"])
    pin_memory = property(lambda self: self._settings["pin_memory"])
    persistent_workers = property(lambda self: self._settings["persistent_workers"])
    prefetch_factor = property(lambda self: self._settings["prefetch_factor"])
    batch_size = property(lambda self: self._loader.batch_size)
    dataset = property(lambda self: self._loader.dataset)
    position = property(lambda self: self._position,
                        doc="Batches yielded so far in the current epoch.")

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        self._drop_segment(failed=False)  # an unfinished epoch is abandoned
        loader = self._loader
        sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        # torch's iterator: iter(sampler) (a user's sampler may draw here),
        # then the base seed, then whatever the sampler draws when advanced
        # (a RandomSampler's seed); listing the epoch makes all those draws.
        indices = iter(sampler)
        if self._draws_base_seed():
            self._base_seed = int(torch.empty((), dtype=torch.int64)
                                  .random_(generator=loader.generator).item())
        else:
            self._base_seed += 1  # only seeds our own workers: any new value will do
        self._batches = list(indices)
        self._position = 0
        self._epoch += 1
        return _Epoch(self, self._epoch)

    def _draws_base_seed(self) -> bool:
        """A persistent user loader draws its base seed only when its pool
        starts (first epoch); later epochs reset the pool without a draw."""
        loader = self._loader
        if not (loader.persistent_workers and loader.num_workers > 0):
            return True
        return self._epoch == 0 and getattr(loader, "_iterator", None) is None

    def switch(self, settings: Mapping[str, Any]) -> None:
        """New loading settings (missing keys keep the current ones), in force
        from the next batch drawn."""
        new = _normalise(self._settings, settings)
        if new == self._settings:
            return
        log.debug("loader settings %s -> %s at batch %d", self._settings, new, self._position)
        self._drop_segment(failed=False)
        self._settings = new

    def close(self) -> None:
        """Shut down every worker pool it started (idempotent); iterating
        again later starts new ones."""
        self._drop_segment(failed=True)
        for loader in self._segments.values():
            iterator, loader._iterator = loader._iterator, None
            if iterator is not None:
                stop_workers(iterator, quiet=True)

    def _next(self, epoch: int) -> Any:
        if epoch != self._epoch:
            raise RuntimeError("this SwitchableLoader iterator was superseded by a newer "
                               "iter() on the loader")
        if self._position >= len(self._batches):
            self._drop_segment(failed=False)
            raise StopIteration
        try:  # (no `or`: bool() of a torch iterator asks its sampler's len())
            batch = next(self._start_segment() if self._active is None else self._active)
        except StopIteration:
            self._drop_segment(failed=True)
            raise RuntimeError(f"a segment loader ended at batch {self._position} of "
                               f"{len(self._batches)}") from None
        except BaseException as error:
            # A dataset error or a dead worker. The workers have prefetched
            # past the failed batch, so they go; the position still names
            # that batch, and the next call starts a new segment there, with
            # whatever settings are in force by then.
            self._drop_segment(failed=True)
            if isinstance(error, Exception) and self._on_error is not None \
                    and self._on_error(error):
                batch = next(self._start_segment())
            else:
                raise
        self._position += 1
        return batch

    def _start_segment(self) -> Iterator[Any]:
        key = tuple(self._settings[k] for k in _KEYS)
        loader = self._segments.get(key)
        if loader is None:
            loader = self._segments[key] = self._build(self._settings)
        remaining = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        remaining.batches, remaining.start = self._batches, self._position
        # Worker seeds then depend only on the epoch and where the segment
        # starts: reproducible for the same switches, and no global draw.
        self._generator.manual_seed(self._base_seed + self._position)
        log.debug("segment from batch %d with %s", self._position, self._settings)
        self._active_loader = loader  # first: a failing iter() leaves a pool to stop
        self._active = iter(loader)  # a persistent pool's reset drops its stale prefetches
        return self._active

    def _build(self, settings: Mapping[str, Any]) -> DataLoader:
        user = self._loader
        workers = settings["num_workers"]
        kwargs: dict[str, Any] = {
            "dataset": user.dataset, "num_workers": workers, "collate_fn": user.collate_fn,
            "pin_memory": settings["pin_memory"], "worker_init_fn": user.worker_init_fn,
            "generator": self._generator}
        if user.batch_sampler is not None:
            kwargs["batch_sampler"] = _Remaining()
        else:  # batch_size=None: the sampler yields single indices, no auto-batching
            kwargs.update(sampler=_Remaining(), batch_size=None)
        if workers > 0:
            kwargs.update(prefetch_factor=settings["prefetch_factor"],
                          persistent_workers=settings["persistent_workers"],
                          multiprocessing_context=user.multiprocessing_context,
                          timeout=user.timeout)
        # in_order is left at True whatever the user chose: out-of-order
        # batches would make the position ambiguous, so a switch could lose
        # or repeat batches.
        if settings["pin_memory"] and getattr(user, "pin_memory_device", ""):
            kwargs["pin_memory_device"] = user.pin_memory_device
        return DataLoader(**kwargs)

    def _drop_segment(self, *, failed: bool) -> None:
        """Stop serving from the current segment. Its workers go unless they
        are a healthy persistent pool, kept for the next use of its settings."""
        iterator, loader = self._active, self._active_loader
        self._active = self._active_loader = None
        if failed and iterator is None and loader is not None:
            iterator = loader._iterator  # iter() failed: a persistent pool's reset, maybe
        if iterator is None or loader is None or not hasattr(iterator, "_shutdown_workers"):
            return
        if failed or not loader.persistent_workers:
            if loader._iterator is iterator:
                loader._iterator = None
            stop_workers(iterator, quiet=failed)
