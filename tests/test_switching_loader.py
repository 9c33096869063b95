"""SwitchableLoader: loading settings change mid-epoch while the batches, their
order and bounds, and torch's global RNG stay what plain iteration gives.
Real DataLoaders with real worker processes; small datasets."""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from autotune.workload.switching import SwitchableLoader

N = 50


class Items(Dataset):
    """Item i is (tensor([i.]), i)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        return torch.tensor([float(i)]), i


class Pids(Items):
    def __getitem__(self, i: int) -> Any:
        return torch.tensor(i), os.getpid()


class FailsInWorkers(Items):
    """Item 20 fails, but only in a worker process (and while ``fail``)."""

    fail = True

    def __getitem__(self, i: int) -> Any:
        if self.fail and i == 20 and get_worker_info() is not None:
            raise ValueError(f"bad item {i}")
        return torch.tensor(i)


class DiesInWorkers(Items):
    """A worker process dies on item 20 (as if killed). It waits a moment
    first, so the death is reported while the main process waits in next()
    (torch's SIGCHLD handler raises at whatever line is current)."""

    def __getitem__(self, i: int) -> Any:
        if i == 20 and get_worker_info() is not None:
            time.sleep(0.5)
            os._exit(1)
        return torch.tensor(i)


class Irregular:
    """A batch sampler of uneven batches that shuffles eagerly in ``iter()``
    from the global RNG: torch calls iter() before it draws its base seed."""

    sizes = (3, 1, 7, 5, 2, 9, 4, 6, 8, 5)  # sums to 50

    def __iter__(self):
        order = torch.randperm(N).tolist()
        batches, start = [], 0
        for size in self.sizes:
            batches.append(order[start:start + size])
            start += size
        return iter(batches)

    def __len__(self) -> int:
        return len(self.sizes)


def as_dict(items: list[Any]) -> dict[str, Any]:
    return {"x": torch.stack([x for x, _ in items]) * 2, "i": torch.tensor([i for _, i in items])}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def assert_same_batches(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for n, (a, b) in enumerate(zip(got, expected)):
        assert same(a, b), f"batch {n}: {a!r} != {b!r}"


def plain(make, epochs: int, seed: int = 0) -> tuple[list, list, list]:
    """Batches, draws between batches (a model's dropout) and the RNG state
    after each epoch of ``for batch in loader``."""
    torch.manual_seed(seed)
    loader = make()
    batches, draws, states = [], [], []
    for _ in range(epochs):
        for batch in loader:
            batches.append(batch)
            draws.append(torch.rand(1))
        states.append(torch.get_rng_state())
    return batches, draws, states


def switched(make, epochs: int, schedule: dict[tuple[int, int], dict], seed: int = 0,
             loader: SwitchableLoader | None = None) -> tuple[list, list, list]:
    """As :func:`plain`, through a SwitchableLoader that switches to
    ``schedule[(epoch, position)]`` before drawing that batch."""
    torch.manual_seed(seed)
    loader = loader or SwitchableLoader(make())
    batches, draws, states = [], [], []
    try:
        for epoch in range(epochs):
            if (epoch, 0) in schedule:
                loader.switch(schedule[epoch, 0])
            for batch in loader:
                batches.append(batch)
                draws.append(torch.rand(1))
                if (epoch, loader.position) in schedule:
                    loader.switch(schedule[epoch, loader.position])
            states.append(torch.get_rng_state())
    finally:
        loader.close()
    return batches, draws, states


def check_equal(make, epochs: int, schedule: dict[tuple[int, int], dict]) -> None:
    expected = plain(make, epochs)
    got = switched(make, epochs, schedule)
    assert_same_batches(got[0], expected[0])
    assert all(torch.equal(a, b) for a, b in zip(got[1], expected[1]))
    assert len(got[2]) == epochs
    for a, b in zip(got[2], expected[2]):
        assert torch.equal(a, b)


@pytest.fixture(autouse=True)
def _no_pin_warning():
    with warnings.catch_warnings():  # pin_memory=True on a machine without CUDA
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        yield


SCHEDULE = {(0, 3): {"num_workers": 2}, (0, 7): {"num_workers": 0},
            (0, 9): {"num_workers": 1, "pin_memory": True},
            (1, 0): {"num_workers": 2, "prefetch_factor": 1, "pin_memory": False},
            (1, 5): {"num_workers": 0}, (1, 6): {"num_workers": 1}}


def test_shuffled_switches_match_plain_iteration_and_rng():
    check_equal(lambda: DataLoader(Items(), batch_size=4, shuffle=True), 2, SCHEDULE)


def test_user_generator_and_persistent_user_loader_match_plain():
    # A persistent user loader draws its base seed in its first epoch only.
    check_equal(lambda: DataLoader(Items(), batch_size=6, shuffle=True, num_workers=1,
                                   persistent_workers=True), 3,
                {(0, 2): {"num_workers": 0}, (1, 4): {"num_workers": 1}})
    generator = torch.Generator()

    def make():
        generator.manual_seed(7)
        return DataLoader(Items(), batch_size=5, shuffle=True, generator=generator)

    expected = plain(make, 2)
    after = generator.get_state()
    got = switched(make, 2, {(0, 4): {"num_workers": 2}, (1, 1): {"num_workers": 0}})
    assert_same_batches(got[0], expected[0])
    assert torch.equal(generator.get_state(), after)


@pytest.mark.parametrize("drop_last", [True, False])
def test_drop_last_and_partial_last_batch(drop_last):
    def make():
        return DataLoader(Items(), batch_size=8, shuffle=True, drop_last=drop_last)

    check_equal(make, 1, {(0, 2): {"num_workers": 2}, (0, 5): {"num_workers": 0}})
    sizes = [len(b[1]) for b in plain(make, 1)[0]]
    assert sizes == ([8] * 6 if drop_last else [8] * 6 + [2])


def test_user_batch_sampler_and_dict_collate():
    check_equal(lambda: DataLoader(Items(), batch_sampler=Irregular(), collate_fn=as_dict), 2,
                {(0, 1): {"num_workers": 2}, (0, 6): {"num_workers": 0},
                 (1, 3): {"num_workers": 1}})


def test_no_auto_batching():
    check_equal(lambda: DataLoader(Items(), batch_size=None, shuffle=True), 1,
                {(0, 10): {"num_workers": 2}, (0, 30): {"num_workers": 0}})


def test_persistent_pool_is_reused_after_switching_back():
    a = {"num_workers": 2, "persistent_workers": True}
    loader = SwitchableLoader(DataLoader(Pids(), batch_size=4), a)
    pids: list[set[int]] = [set(), set(), set()]  # batches 0-3 (A), 4-5 (B), 6- (A again)
    indices: list[int] = []
    try:
        for epoch in range(2):
            for batch in loader:
                indices += batch[0].tolist()
                done = loader.position
                pids[2 if epoch or done > 6 else 1 if done > 4 else 0] |= set(batch[1].tolist())
                if epoch == 0 and done == 4:
                    pool, workers = loader._active_loader, loader._active_loader._iterator
                    loader.switch({"num_workers": 0})
                elif epoch == 0 and done == 6:
                    loader.switch(a)
        assert loader._segments[(2, False, True, 2)] is pool
        assert pool._iterator is workers  # the same torch iterator, reset twice
    finally:
        loader.close()
    assert indices == list(range(N)) * 2
    assert len(pids[0]) == 2 and os.getpid() not in pids[0]
    assert pids[1] == {os.getpid()}
    assert pids[2] == pids[0]  # the same two workers after A -> B -> A and a new epoch


@pytest.mark.parametrize("persistent", [False, True])
def test_worker_failure_then_switch_delivers_every_batch_once(persistent):
    before = set(multiprocessing.active_children())
    loader = SwitchableLoader(DataLoader(FailsInWorkers(), batch_size=4),
                              {"num_workers": 2, "persistent_workers": persistent})
    it = iter(loader)
    got: list[int] = []
    failures = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except ValueError as exc:
            assert "bad item 20" in str(exc)
            failures += 1
            assert loader.position == 5  # batch 5 holds item 20: not yet yielded
            assert set(multiprocessing.active_children()) <= before  # the failed pool went
            loader.switch({"num_workers": 0})
            continue
        got += batch.tolist()
    assert failures == 1
    assert got == list(range(N))
    assert loader.position == len(loader) == 13
    with pytest.raises(StopIteration):
        next(it)
    loader.close()


def test_retrying_without_switch_fails_again_then_recovers():
    data = FailsInWorkers()
    loader = SwitchableLoader(DataLoader(data, batch_size=10), {"num_workers": 1})
    it = iter(loader)
    assert next(it).tolist() == list(range(10))
    assert next(it).tolist() == list(range(10, 20))
    for _ in range(2):
        with pytest.raises(ValueError, match="bad item 20"):
            next(it)
        assert loader.position == 2
    loader.switch({"num_workers": 0})
    assert [b.tolist()[0] for b in it] == [20, 30, 40]
    loader.close()


@pytest.mark.parametrize("persistent", [False, True])
def test_dead_worker_error_propagates_and_the_epoch_goes_on(persistent):
    before = set(multiprocessing.active_children())
    loader = SwitchableLoader(DataLoader(DiesInWorkers(), batch_size=10),
                              {"num_workers": 1, "persistent_workers": persistent})
    it = iter(loader)
    got: list[int] = []
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid"):
        while True:
            got += next(it).tolist()
    # Reported while a batch before item 20's was awaited (the worker had
    # prefetched ahead) or item 20's own: that batch is still the next one.
    assert loader.position in (1, 2) and got == list(range(10 * loader.position))
    assert not set(multiprocessing.active_children()) - before  # the pool went
    loader.switch({"num_workers": 0})
    got += [i for batch in it for i in batch.tolist()]
    assert got == list(range(N))
    loader.close()


def test_state_len_close_and_errors():
    user = DataLoader(Items(), batch_size=4, num_workers=1, prefetch_factor=3)
    loader = SwitchableLoader(user)
    assert loader.loader is user and len(loader) == 13 and loader.position == 0
    assert loader.settings == {"num_workers": 1, "pin_memory": False,
                               "persistent_workers": False, "prefetch_factor": 3}
    assert loader.batch_size == 4 and loader.dataset is user.dataset
    loader.switch({"num_workers": 2, "persistent_workers": True})
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 3)
    settings = loader.settings
    settings["num_workers"] = 9
    assert loader.num_workers == 2  # a copy
    loader.switch({"num_workers": 0})
    assert loader.settings == {"num_workers": 0, "pin_memory": False,
                               "persistent_workers": False, "prefetch_factor": None}
    assert loader.pin_memory is False

    before = set(multiprocessing.active_children())
    loader.switch({"num_workers": 2, "persistent_workers": True})
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert loader.position == 3
    segment = loader._active
    loader.switch(loader.settings)  # the same settings: a no-op, the segment goes on
    loader.switch({"prefetch_factor": 2, "persistent_workers": True})
    assert loader._active is segment is not None
    loader.switch({"num_workers": 1})  # the persistent pool stays, a second one starts
    next(it)
    assert loader.position == 4
    assert len(set(multiprocessing.active_children()) - before) == 3
    loader.close()
    assert not set(multiprocessing.active_children()) - before
    loader.close()  # idempotent
    # Iteration goes on after close (with new workers), the same batches.
    assert [b[1].tolist() for b in it] == [list(range(i, min(i + 4, N))) for i in range(16, N, 4)]
    loader.close()
    assert not set(multiprocessing.active_children()) - before

    it = iter(loader)
    next(it)
    fresh = iter(loader)  # a new epoch, the old iterator is stale
    assert loader.position == 0
    with pytest.raises(RuntimeError, match="superseded"):
        next(it)
    assert len(list(fresh)) == 13
    loader.close()

    with pytest.raises(ValueError, match="unknown loader settings"):
        loader.switch({"workers": 2})
    with pytest.raises(ValueError, match="num_workers"):
        loader.switch({"num_workers": -1})


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(10))


class MyLoader(DataLoader):
    pass


@pytest.mark.parametrize("make", [lambda: DataLoader(Stream(), batch_size=2),
                                  lambda: MyLoader(Items(), batch_size=2),
                                  lambda: [1, 2, 3]], ids=["iterable", "subclass", "list"])
def test_rejects_what_it_cannot_switch(make):
    with pytest.raises(ValueError, match="plain torch DataLoader over a map-style dataset"):
        SwitchableLoader(make())


def test_abandoned_epoch_matches_plain():
    def body(loader):
        it = iter(loader)
        first = [next(it) for _ in range(3)]
        rest = list(loader)  # a new epoch before the first ended
        return first, rest, torch.get_rng_state()

    torch.manual_seed(3)
    expected = body(DataLoader(Items(), batch_size=4, shuffle=True))
    torch.manual_seed(3)
    switchable = SwitchableLoader(DataLoader(Items(), batch_size=4, shuffle=True),
                                  {"num_workers": 1})
    got = body(switchable)
    switchable.close()
    assert_same_batches(got[0], expected[0])
    assert_same_batches(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
