"""The daemon's functional core (who gets which cores), its messages, and
live adaptation at epoch boundaries with a real socket and DataLoader."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import autotune
from autotune import hookimpl
from autotune.coordinator import client as job_client
from autotune.coordinator.allocator import Demand, Observation, allocate
from autotune.coordinator.protocol import MAX_MESSAGE_BYTES, ProtocolError, encode, parse
from autotune.coordinator.server import Coordinator
from autotune.plan.plan import Setting, Source

O = Observation


# -- who gets which cores ---------------------------------------------------------------


def test_every_job_gets_a_core_of_its_own_and_the_shares_fit_the_machine():
    grants = allocate([Demand("a"), Demand("b")], [0, 1])
    assert [(g.threads, g.loader_workers, g.cpus) for g in grants.values()] == [
        (1, 0, (0,)), (1, 0, (1,))]
    alone = allocate([Demand("a")], [4, 5, 6, 7])["a"]
    assert (alone.threads, alone.cpus) == (4, (4, 5, 6, 7))  # nothing measured: the prior


def test_a_job_that_gains_little_from_cores_gives_them_to_one_that_gains_much():
    flat = Demand("flat", (O(1, 0, 100.0, 0.0), O(2, 0, 101.0, 0.0)))
    scaling = Demand("scaling", (O(1, 0, 10.0, 0.0), O(2, 0, 19.0, 0.0)))
    grants = allocate([flat, scaling], list(range(8)))
    assert grants["flat"].threads == 1
    assert grants["scaling"].threads == 7
    assert "parallel fraction 0.95 (fitted)" in grants["scaling"].reason
    # Measured flat everywhere: a spare core stays free rather than wasted.
    assert allocate([flat], [0, 1, 2])["flat"].threads == 1


def test_an_input_bound_job_gets_loader_workers_a_compute_bound_one_threads():
    inputs = Demand("inputs", (O(2, 0, 50.0, 0.5),))
    compute = Demand("compute", (O(2, 0, 50.0, 0.0),))
    grants = allocate([inputs, compute], list(range(6)))
    assert grants["inputs"].loader_workers >= 1
    assert grants["compute"].loader_workers == 0 and grants["compute"].threads >= 2
    total = sum(g.threads + g.loader_workers for g in grants.values())
    assert total <= 6
    cpus = [c for g in grants.values() for c in g.cpus]
    assert len(cpus) == len(set(cpus)) == total
    # A loader that cannot take workers gets threads only.
    fixed = Demand("fixed", (O(2, 0, 50.0, 0.5),), loader_workers_usable=False)
    assert allocate([fixed], list(range(4)))["fixed"].loader_workers == 0


def test_more_jobs_than_cores_queue_in_arrival_order():
    grants = allocate([Demand(n) for n in "abc"], [0, 1])
    assert [g.waiting for g in grants.values()] == [False, False, True]
    assert "waits (number 1 in line)" in grants["c"].reason
    assert sum(g.threads + g.loader_workers for g in grants.values()) == 2


# -- messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("line, problem", [
    (b"{not json", "not a JSON line"),
    (b"[1, 2]", "a JSON object"),
    (b'{"type": "shutdown"}', "unknown message type"),
    (b'{"type": "register", "pid": 1}', "missing field 'command'"),
    (b'{"type": "register", "pid": true, "command": "x"}', "expected int"),
    (b'{"type": "register", "pid": -3, "command": "x"}', "negative"),
    (b'{"type": "heartbeat", "extra": 1}', "unknown field"),
    (b'{"type": "report", "threads": 1, "loader_workers": 0, "samples_per_s": NaN, '
     b'"data_wait": 0}', "finite"),
])
def test_a_malformed_message_is_refused_with_the_reason(line, problem):
    with pytest.raises(ProtocolError, match=problem):
        parse(line)


def test_an_oversized_message_is_refused_both_ways():
    with pytest.raises(ProtocolError, match="over the"):
        parse(b"{" + b" " * MAX_MESSAGE_BYTES + b"}")
    with pytest.raises(ProtocolError, match="over the"):
        encode("register", pid=1, command="x" * MAX_MESSAGE_BYTES)
    assert parse(encode("heartbeat")) == {"type": "heartbeat"}


# -- live adaptation, this process as the job ---------------------------------------------------


class SlowItems(Dataset):
    """Loading sleeps ~32 ms a batch of 8, the step ~20 ms: a worker that
    loads beside the step cuts the epoch by a third or more, however busy
    the machine (sleeping needs no core)."""

    def __len__(self):
        return 240

    def __getitem__(self, index):
        time.sleep(0.004)
        return torch.full((4,), float(index)), torch.tensor(index % 2)


class SleepyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        time.sleep(0.02)
        return self.linear(x)


class Slowdown:
    """A third-party speed knob whose one live proposal is slower."""

    NAME = "slowdown"

    @hookimpl
    def autotune_configure(self):
        return {"delay_s": Setting(0.0, Source.DEFAULT, "no delay")}

    @hookimpl
    def autotune_live_candidate(self, engine):
        return {"delay_s": 0.05}

    @hookimpl
    def autotune_live_change(self, engine, values):
        engine.plugin_state("slowdown")["delay_s"] = values["delay_s"]
        return True

    @hookimpl
    def autotune_prepare_inputs(self, engine, inputs):
        state = engine.plugin_state("slowdown")
        delay = state.get("delay_s", 0.0)
        state.setdefault("used", []).append((len(engine.history) + 1, delay))
        time.sleep(delay)
        return inputs


@pytest.fixture
def coordinator(monkeypatch):
    directory = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    running = Coordinator(directory / "daemon.sock", [0, 1])
    running.start()
    monkeypatch.setenv("AUTOTUNE_SOCKET", str(running.path))
    yield running
    job_client.leave()
    running.stop()
    shutil.rmtree(directory, ignore_errors=True)


def small_job(plugin, samples=64):
    """A linear model on random data, planned with ``plugin``; its tuned result."""
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(samples, 4), torch.randint(0, 2, (samples,)))
    return autotune.apply(model, DataLoader(data, batch_size=8), plugins=[plugin])


def engine_for(tuned, **kwargs):
    from autotune.engine.engine import Engine

    return Engine(tuned.model, torch.optim.SGD(tuned.model.parameters(), lr=0.01),
                  torch.nn.functional.cross_entropy, tuned.plan, manager=tuned.manager,
                  context=tuned.context, progress=False, **kwargs)


def test_a_socket_the_daemon_cannot_listen_on_is_one_clear_error(tmp_path):
    from autotune.errors import AutotuneError

    too_long = Path("/tmp") / ("x" * 120) / "daemon.sock"  # over the 108-byte limit
    with pytest.raises(AutotuneError, match=r"cannot listen on .*choose another --socket"):
        Coordinator(too_long, [0]).start()
    shutil.rmtree(too_long.parent, ignore_errors=True)


def _wait(predicate, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def test_an_input_bound_job_gains_loader_workers_between_epochs(coordinator):
    torch.manual_seed(0)
    model = SleepyModel()
    tuned = autotune.apply(model, DataLoader(SlowItems(), batch_size=8, shuffle=True))
    assert tuned.plan.get("daemon", "job") is not None
    engine = tuned.engine(torch.optim.SGD(model.parameters(), lr=0.01),
                          torch.nn.functional.cross_entropy, progress=False)
    client = job_client.current()
    with engine:
        engine.fit(tuned.loader, epochs=3)
        # Epoch 2's report (most of it waiting for data) re-divides the cores
        # (epoch 1, the warm-up, is not reported).
        assert _wait(lambda: client.grant.loader_workers == 1), client.grant
        assert client.observations[0].threads == 2  # measured under the first share
        engine.fit(tuned.loader, epochs=3)
        history = engine.history
        changes = engine.plugin_state("daemon")["live"].changes
    assert [(c.plugin, c.outcome) for c in changes] == [
        ("threads", "share"), ("dataloader", "trying"), ("dataloader", "kept")], changes
    tried = changes[1].epoch
    assert history[tried - 2].loader_workers == 0
    assert history[tried - 1].loader_workers == 1
    assert history[tried - 1].samples_per_s > 1.3 * history[tried - 2].samples_per_s
    assert engine.plan.setting("dataloader", "num_workers").source is Source.MEASURED
    assert engine.plan.setting("threads", "intra_op") == engine.plan.setting(
        "threads", "intra_op").__class__(1, Source.DAEMON, client.grant.reason,
                                         engine.plan.setting("threads", "intra_op").effect)
    # The daemon heard the epochs run wholly under one setting: the first share, the worker.
    assert {(o.threads, o.loader_workers) for o in client.observations} >= {(2, 0), (1, 1)}


def test_a_slower_live_setting_is_reverted_and_not_tried_again(coordinator):
    tuned = small_job(Slowdown())
    engine = engine_for(tuned)
    with engine:
        engine.fit(tuned.loader, epochs=6)
        changes = engine.plugin_state("daemon")["live"].changes
        history = engine.history
    slow = [(c.epoch, c.outcome) for c in changes if c.plugin == "slowdown"]
    assert [outcome for _, outcome in slow] == ["trying", "reverted"], changes
    tried, reverted = slow[0][0], slow[1][0]
    assert history[tried - 1].samples_per_s < 0.5 * history[tried - 2].samples_per_s
    assert engine.plan.get("slowdown", "delay_s") == 0.0
    assert engine.plugin_state("slowdown")["delay_s"] == 0.0
    assert "was slower" in engine.plan.setting("slowdown", "delay_s").reason
    # It ran in its trial epoch only, and is not proposed again after the revert.
    used = engine.plugin_state("slowdown")["used"]
    assert {epoch for epoch, delay in used if delay} == {tried}
    assert max(epoch for epoch, _ in used) == 6 > reverted


def test_a_proposal_that_changes_what_is_trained_is_refused(coordinator):
    from autotune.plan.knobs import Effect, Knob

    class Smoothing:
        """Owns a knob that changes what is trained, and proposes it live."""

        NAME = "smoothing"

        @hookimpl
        def autotune_configure(self):
            return {"label_smoothing": Setting(0.0, Source.DEFAULT, "none")}

        @hookimpl
        def autotune_knobs(self):
            return {"label_smoothing": Knob(off=0.0, effect=Effect.TRAINING)}

        @hookimpl
        def autotune_live_candidate(self, engine):
            return {"label_smoothing": 0.1}

        @hookimpl
        def autotune_live_change(self, engine, values):
            raise AssertionError("a training setting must never be changed live")

    tuned = small_job(Smoothing(), samples=32)
    engine = engine_for(tuned)
    with engine:
        engine.fit(tuned.loader, epochs=5)
        changes = engine.plugin_state("daemon")["live"].changes
    assert not [c for c in changes if "label_smoothing" in c.values]
    refused = [e for e in engine.report.events if "refused: only speed settings" in e.message]
    assert len(refused) == 1  # asked once, refused once, never again
    assert refused[0].plugin == "smoothing"
    assert engine.plan.get("smoothing", "label_smoothing") == 0.0


# -- the two hooks behind it, from a plugin of one's own --------------------------------------


def test_a_machine_share_from_a_plugin_sizes_every_plugin_and_the_search():
    from autotune.plugin.context import Workload
    from autotune.planner import make_plan
    from autotune.plan.resources import Share
    from autotune.testing import cpu_laptop

    class Broker:
        """Any plugin may divide the machine: autotune_machine_share."""

        NAME = "broker"

        @hookimpl
        def autotune_configure(self):
            return {"pool": Setting("batch", Source.DEFAULT, "a site's job broker")}

        @hookimpl
        def autotune_machine_share(self, plan):
            return Share(threads=1, loader_workers=1, reason="broker: 1 core of the pool")

    model = torch.nn.Linear(4, 2)
    loader = DataLoader(SlowItems(), batch_size=8)
    planned = make_plan(hardware=cpu_laptop(), plugins=[Broker()],
                        workload=Workload.inspect(model, loader),
                        overrides={"dataloader": {"num_workers": 4}})
    threads = planned.plan.setting("threads", "intra_op")
    assert (threads.value, threads.source, threads.reason) == (
        1, Source.DAEMON, "broker: 1 core of the pool")
    # The share caps even an override (it leaves no choice), and the search stays inside it.
    assert planned.plan.get("dataloader", "num_workers") == 1
    assert planned.context.share.threads == 1
    from autotune.plugins import dataloader, threads

    assert {c["intra_op"] for c in threads.autotune_candidates(planned.context,
                                                               planned.plan)} == {1}
    assert {c["num_workers"] for c in dataloader.autotune_candidates(planned.context,
                                                                     planned.plan)} == {0, 1}


def test_a_plugin_can_hand_fit_another_loader_each_epoch():
    class EveryOtherEpochReversed:
        """autotune_epoch_loader: what Engine.fit iterates, chosen per epoch."""

        NAME = "reverser"

        @hookimpl
        def autotune_configure(self):
            return {"on": Setting(True, Source.DEFAULT, "test")}

        @hookimpl
        def autotune_epoch_loader(self, engine, loader, epoch):
            if epoch % 2 == 0:
                return list(reversed(list(loader)))
            return None

    from torch.utils.data import TensorDataset

    seen = []

    def loss_fn(outputs, targets):
        seen.append(int(targets[0]))
        return outputs.sum() * 0

    data = TensorDataset(torch.zeros(4, 1), torch.arange(4))
    tuned = autotune.apply(torch.nn.Linear(1, 1), DataLoader(data, batch_size=1),
                           plugins=[EveryOtherEpochReversed()], tune=False)
    engine = tuned.engine(torch.optim.SGD(tuned.model.parameters(), lr=0.1), loss_fn,
                          progress=False)
    with engine:
        engine.fit(tuned.loader, epochs=3)
    assert seen == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3]


def test_a_tuning_trials_engine_is_never_changed_live(coordinator):
    tuned = small_job(Slowdown())
    assert tuned.plan.get("daemon", "job") is not None
    with engine_for(tuned) as trained:  # a training engine gets the daemon plugin's adapter
        assert trained.live_adapters == (trained.plugin_state("daemon")["live"],)
    engine = engine_for(tuned, live=())  # as the tuner builds its trials
    with engine:
        engine.fit(tuned.loader, epochs=6)
        assert engine.live_adapters == () and "live" not in engine.plugin_state("daemon")
        assert engine.describe()["live_changes"] == []
        assert {delay for _, delay in engine.plugin_state("slowdown")["used"]} == {0.0}


def test_an_epoch_that_overlapped_a_new_share_is_not_reported():
    """Round 2 of the benchmark once taught the daemon that a job gains
    nothing from two threads: its two-thread epoch had run beside a job
    that had just arrived. Only epochs run wholly under the latest share count."""
    from autotune.live.adapter import LiveAdapter
    from autotune.plan.resources import Share

    tuned = small_job(Slowdown())
    engine = engine_for(tuned)
    current = {"generation": 1, "share": Share(threads=2, reason="alone")}
    reported = []
    adapter = LiveAdapter(engine, lambda: (current["generation"], current["share"]),
                          observe=lambda metrics: reported.append(metrics.epoch))
    with engine:
        for epoch in range(1, 6):
            adapter.at_epoch_start(epoch)
            if epoch == 2:  # a job arrives during epoch 2
                current.update(generation=2, share=Share(threads=1, reason="two jobs"))
            engine.fit(tuned.loader, epochs=1)
        adapter.at_epoch_start(6)
    # 1: warm-up; 2: overlapped the arrival; 3 on: run under the new share,
    # taken at the start of epoch 3.
    assert reported == [3, 4, 5]
    assert [c.outcome for c in adapter.changes][:1] == ["share"]
    assert adapter.changes[0].epoch == 3


def test_fewer_threads_are_taken_at_the_next_step_more_at_the_epoch_boundary():
    from autotune.live.adapter import LiveAdapter
    from autotune.plan.resources import Share

    tuned = small_job(Slowdown())
    engine = engine_for(tuned)
    current = {"generation": 1, "share": Share(threads=2, reason="alone")}
    adapter = LiveAdapter(engine, lambda: (current["generation"], current["share"]))
    with engine:
        torch.set_num_threads(2)
        adapter.at_epoch_start(1)
        engine.fit(tuned.loader, epochs=1)
        adapter.at_epoch_start(2)  # takes generation 1
        current.update(generation=2, share=Share(threads=1, reason="a job arrived"))
        adapter.at_step()
        assert torch.get_num_threads() == 1  # at once, mid-epoch
        current.update(generation=3, share=Share(threads=2, reason="it left"))
        adapter.at_step()
        assert torch.get_num_threads() == 1  # more cores: only at the boundary
        adapter.at_epoch_start(3)
        assert torch.get_num_threads() == 2
    assert [(c.epoch, c.values) for c in adapter.changes] == [
        (2, {"intra_op": 1}), (3, {"intra_op": 2})]
