"""The rebuilt DataLoader: same samples with real worker processes, every
user setting kept, the CPU quota respected, worker crashes made clear."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler

import autotune
from autotune.errors import TrainingError
from autotune.plugins.dataloader import rebuild_loader
from autotune.testing import fake_cpu, fake_hardware, plugin_manager

OTHERS = ("threads", "mixed_precision", "accumulation", "clipping", "channels_last", "compile",
          "parallel_folds")


class Numbers(Dataset):
    """Sample i is (features, i): batches say exactly which samples they hold."""

    def __init__(self, n: int = 30, crash_at: int | None = None,
                 once: Path | None = None) -> None:
        # A worker that reaches sample crash_at kills itself with SIGKILL, as
        # the OOM killer would. With ``once``, only the first one does (it
        # leaves that file behind); otherwise every worker that gets there.
        self.n, self.crash_at, self.once = n, crash_at, once

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.crash_at is not None and index >= self.crash_at and \
                torch.utils.data.get_worker_info() is not None:
            if self.once is None or not self.once.exists():
                if self.once is not None:
                    self.once.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return torch.full((4,), float(index)), index % 3


class BadSample(Numbers):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == 5:
            raise RuntimeError("bad sample 5")
        return super().__getitem__(index)


def samples_of(loader) -> list[int]:
    """Sample ids in the order the loader yields them (targets are i % 3, so
    read the id from the features)."""
    return [int(x[0]) for inputs, _ in loader for x in inputs]


def apply_with(loader, **dataloader_overrides):
    return autotune.apply(nn.Linear(4, 3), loader, device="cpu",
                          manager=plugin_manager(disable=OTHERS),
                          overrides={"dataloader": dataloader_overrides})


def test_rebuilt_loader_has_the_users_samples_with_two_worker_processes() -> None:
    generator = torch.Generator().manual_seed(7)
    user = DataLoader(Numbers(30), batch_size=4, shuffle=True, drop_last=True,
                      generator=generator)
    tuned = apply_with(user, num_workers=2, persistent_workers=True)
    rebuilt = tuned.loader
    assert rebuilt is not user and rebuilt.num_workers == 2 and rebuilt.persistent_workers
    assert user.num_workers == 0  # the user's loader is untouched
    for _epoch in range(2):  # persistent workers serve both epochs
        mine, theirs = samples_of(rebuilt), samples_of(user)
        assert len(mine) == len(theirs) == 28  # drop_last kept
        assert len(set(mine)) == 28 and set(mine) <= set(range(30))
    # Same sampler and generator: reseeded, both give the very same order.
    # (Without persistent workers: a persistent iterator does not draw its
    # worker base seed from the generator again each epoch, so the shared
    # generator's stream -- and the shuffle -- shifts by one draw.)
    fresh = rebuild_loader(user, num_workers=2)
    generator.manual_seed(3)
    theirs = samples_of(user)
    generator.manual_seed(3)
    assert samples_of(fresh) == theirs
    # And training on it works end to end.
    model = tuned.model
    with tuned.engine(torch.optim.SGD(model.parameters(), lr=0.01),
                      nn.functional.cross_entropy, progress=False) as engine:
        history = engine.fit(rebuilt)
    assert history[-1].samples == 28
    del engine, tuned, rebuilt  # shut the persistent workers down here, not in a later test
    gc.collect()


def test_every_user_setting_is_kept() -> None:
    def collate(batch):
        return torch.stack([x for x, _ in batch]) * 2, torch.tensor([y for _, y in batch])

    def init_worker(worker_id: int) -> None:
        pass

    context = torch.multiprocessing.get_context("spawn")
    user = DataLoader(Numbers(10), batch_size=3, drop_last=True, collate_fn=collate,
                      worker_init_fn=init_worker, num_workers=1, timeout=30,
                      multiprocessing_context=context, generator=torch.Generator())
    rebuilt = rebuild_loader(user, num_workers=2, prefetch_factor=3)
    for name in ("dataset", "sampler", "batch_size", "drop_last", "collate_fn",
                 "worker_init_fn", "timeout", "multiprocessing_context", "generator"):
        assert getattr(rebuilt, name) is getattr(user, name) or \
            getattr(rebuilt, name) == getattr(user, name), name
    assert rebuilt.prefetch_factor == 3 and rebuilt.num_workers == 2

    batches = BatchSampler(SequentialSampler(range(10)), batch_size=4, drop_last=False)
    user = DataLoader(Numbers(10), batch_sampler=batches)
    rebuilt = rebuild_loader(user, num_workers=0)
    assert rebuilt.batch_sampler is batches and samples_of(rebuilt) == list(range(10))

    unbatched = DataLoader(Numbers(5), batch_size=None)
    assert rebuild_loader(unbatched, num_workers=0).batch_size is None


class Stream(IterableDataset):
    def __iter__(self):
        return iter((torch.zeros(4), 0) for _ in range(6))


def test_iterable_datasets_keep_their_worker_count() -> None:
    tuned = apply_with(DataLoader(Stream(), batch_size=2), num_workers=2)
    assert tuned.loader.num_workers == 0
    assert any("IterableDataset" in e.message for e in tuned.report.for_plugin("dataloader"))


def test_worker_count_respects_the_cpu_quota() -> None:
    two_cores = fake_hardware(cpu=fake_cpu(physical_cores=2, logical_cores=2,
                                           usable_cores=1.5))
    tuned = autotune.apply(nn.Linear(4, 3), DataLoader(Numbers(8), batch_size=2), device="cpu",
                           hardware=two_cores, manager=plugin_manager(disable=OTHERS),
                           overrides={"dataloader": {"num_workers": 16}})
    assert tuned.loader.num_workers == 1
    assert any("capped at the 1 cores" in e.message for e in tuned.report.of_kind("warning"))


#: torch reports a dead worker as "exited unexpectedly" (its own check) or
#: "is killed by signal" (its SIGCHLD handler), whichever notices first.
DIED = r"DataLoader worker \(pid.*(exited unexpectedly|killed by signal).* HINT: .*num_workers"


def _engine(tuned):
    return tuned.engine(torch.optim.SGD(tuned.model.parameters(), lr=0.01),
                        nn.functional.cross_entropy, progress=False)


def _new_children(before) -> list:
    return [p for p in multiprocessing.active_children() if p not in before]


def test_a_crashed_worker_is_a_clear_error() -> None:
    # The signal that reports the death can arrive at any line of the main
    # process (next(), the training step, the shutdown): always TrainingError.
    before = multiprocessing.active_children()
    tuned = apply_with(DataLoader(Numbers(16, crash_at=8), batch_size=4), num_workers=2)
    with _engine(tuned) as engine:
        with pytest.raises(TrainingError, match=r"DataLoader worker failed in epoch 1 while "
                                                r"loading batch \d \(loader with num_workers=2\)"
                                                r": " + DIED) as info:
            engine.fit(tuned.loader)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert _new_children(before) == []  # the other worker is gone too, not left to a late gc


def test_a_crashed_worker_in_evaluation_is_a_clear_error() -> None:
    tuned = apply_with(DataLoader(Numbers(16, crash_at=8), batch_size=4), num_workers=2)
    with _engine(tuned) as engine:
        with pytest.raises(TrainingError, match=r"DataLoader worker failed in evaluation .*" + DIED):
            engine.evaluate(tuned.loader)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_dying_mid_transfer_is_the_same_clear_error() -> None:
    # The race behind an old flake: a worker killed while it sends a batch can
    # reach the main process as the socket closing (ConnectionResetError)
    # before torch's SIGCHLD handler reports the death. The error must still
    # name the dead worker, with the hint -- here with a real killed process
    # standing for the iterator's worker.
    from autotune.engine.workers import worker_failures

    worker = multiprocessing.get_context("spawn").Process(target=_die)
    worker.start()
    worker.join()
    iterator = types.SimpleNamespace(_workers=[worker], _shutdown_workers=lambda: None)
    loader = types.SimpleNamespace(num_workers=1)
    with pytest.raises(TrainingError, match=r"evaluation .*" + DIED + ".*") as caught:
        with worker_failures(loader, None, lambda: 2) as iterators:
            iterators.append(iterator)
            raise ConnectionResetError(104, "Connection reset by peer")
    assert f"pid {worker.pid}" in str(caught.value) and "ConnectionResetError" in str(caught.value)
    # The same error from inside a worker is the dataset's own: left as it is.
    with pytest.raises(ConnectionResetError):
        with worker_failures(loader, None, lambda: 2) as iterators:
            iterators.append(iterator)
            raise ConnectionResetError("Caught ConnectionResetError in DataLoader worker process 0")


def test_persistent_workers_start_afresh_after_a_crash(tmp_path) -> None:
    loader = DataLoader(Numbers(16, crash_at=8, once=tmp_path / "crashed"), batch_size=4)
    tuned = apply_with(loader, num_workers=2, persistent_workers=True)
    assert tuned.loader.persistent_workers
    with _engine(tuned) as engine:
        with pytest.raises(TrainingError, match=DIED):
            engine.fit(tuned.loader)
        assert (tmp_path / "crashed").exists()
        # The dead workers are not reused: the next epoch gets new ones.
        assert engine.fit(tuned.loader)[-1].samples == 16
    del engine, tuned
    gc.collect()


def test_an_error_in_the_dataset_is_the_users_own() -> None:
    # torch re-raises it from the worker with its type and "Caught RuntimeError
    # in DataLoader worker process 0": not a dead worker, so no TrainingError.
    tuned = apply_with(DataLoader(BadSample(16), batch_size=4), num_workers=2)
    with _engine(tuned) as engine:
        with pytest.raises(RuntimeError, match="bad sample 5"):
            engine.fit(tuned.loader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for pinned memory")
def test_pin_memory_with_cuda() -> None:
    tuned = apply_with(DataLoader(Numbers(8), batch_size=4), num_workers=1, pin_memory=True)
    assert tuned.loader.pin_memory
    inputs, _ = next(iter(tuned.loader))
    assert inputs.is_pinned()


def test_no_pinned_memory_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tuned = apply_with(DataLoader(Numbers(8), batch_size=4), num_workers=1, pin_memory=True)
    assert not tuned.loader.pin_memory
