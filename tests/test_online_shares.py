"""One mechanism for every change during a run: the daemon's share is
taken by its LiveAdapter, and online tuning measures within it (real
engine, threads plugin and training; a fake clock and fake daemon)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

import autotune
from autotune.live.adapter import LiveAdapter
from autotune.plan.resources import Share
from autotune.tuner import OnlineOptions
from online_helpers import Indexed, Pace, Recording, all_but
from tuner_helpers import FakeClock

SHARE_AT = 30


def test_a_new_share_is_taken_kept_through_switches_and_searched_within():
    clock = FakeClock()
    threads_at_step: list[int] = []

    def step_time(engine, level):
        threads_at_step.append(torch.get_num_threads())
        return {0: 0.25, 1: 0.2, 2: 0.3}[level] * (1.0 + 0.3 * (engine.optimizer_steps % 2))

    pace = Pace(clock, step_time, levels=(1, 2))
    engine_box = {}

    def shares():
        engine = engine_box.get("engine")
        if engine is None or engine.optimizer_steps < SHARE_AT:
            return 0, None
        return 1, Share(threads=1, loader_workers=0, reason="a second job arrived")

    threads_before = torch.get_num_threads()
    torch.manual_seed(0)
    model = Recording()
    loader = DataLoader(Indexed(96), batch_size=4, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    tuned = autotune.apply(model, loader, optimizer=optimizer,
                           loss_fn=nn.functional.cross_entropy,
                           tune=OnlineOptions(clock=clock, chunk_s=1.0, settle_steps=2,
                                              max_loss=1.0),
                           plugins=[pace], disable=all_but("threads"))
    daemon = []
    engine = tuned.engine(optimizer, progress=False,
                          live=[lambda made: daemon.append(LiveAdapter(made, shares)) or daemon[0]])
    engine_box["engine"] = engine
    engine.fit(tuned.loader, epochs=6)
    plan = engine.plan
    engine.close()

    report = tuned.tuning.report
    # The adapter took the share at once (fewer threads) and tried nothing itself.
    assert [c.outcome for c in daemon[0].changes] == ["share"]
    assert plan.get("threads", "intra_op") == 1
    assert plan.setting("threads", "intra_op").source.value == "daemon"
    # Every step after the share ran with its one thread, candidates included.
    assert set(threads_at_step[SHARE_AT + 1:]) == {1}
    assert threads_at_step[SHARE_AT + 1:] and report.candidate_steps > 0
    # The tuner searched again within the share; the incumbent kept it.
    assert any("a new share (a second job arrived)" in why for why in report.reopened)
    assert report.winner_settings["threads"]["intra_op"] == 1
    # The pace group's search went on in the share: level 2 was still tried.
    assert {t.changes["pace"]["level"]: t.verdict for t in report.tried} == {
        1: "kept", 2: "dropped"}
    assert [t.label for t in report.tried][-1] == "threads.intra_op=1, pace.level=2"
    assert torch.get_num_threads() == threads_before
