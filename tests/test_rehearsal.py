"""``apply(tune="rehearse")``: the online search run before training, on
the user's objects restored after (fake clocks decide; the training, the
DataLoader and the budget are real)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import autotune
from autotune.errors import AutotuneError, TrainingError
from autotune.plan.knobs import Effect
from autotune.tuner import OnlineOptions
from autotune.tuner.budget import TOLERANCE_S
from online_helpers import Indexed, Pace, Recording, all_but, noisy, train
from tuner_helpers import FakeClock


def rehearse(plugins, clock, *, budget_s=60.0, seed=0, momentum=0.0, **options):
    """``apply(tune=OnlineOptions(rehearse=True, ...))`` on a fresh model:
    (tuned, model, optimizer, the model's state before)."""
    torch.manual_seed(seed)
    model = Recording()
    loader = DataLoader(Indexed(96), batch_size=4, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"clock": clock, "chunk_s": 1.0, "settle_steps": 2, **options}
    tuned = autotune.apply(model, loader, optimizer=optimizer,
                           loss_fn=nn.functional.cross_entropy, budget_s=budget_s,
                           tune=OnlineOptions(rehearse=True, **settings),
                           plugins=plugins, disable=all_but())
    return tuned, model, optimizer, before


def test_the_winner_is_found_before_training_and_the_model_comes_back_unchanged():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.2, 2: 0.3}, 0.02), levels=(1, 2))
    tuned, model, optimizer, before = rehearse([pace], clock, momentum=0.9)
    report = tuned.tuning.report
    assert tuned.tuning.mode == "rehearsal" and report.mode == "rehearsal"
    assert {t.label: t.verdict for t in report.tried} == {"pace.level=1": "kept",
                                                         "pace.level=2": "dropped"}
    assert report.complete and report.steps > 0
    setting = tuned.plan.setting("pace", "level")
    assert setting.value == 1 and setting.source.value == "measured"
    assert "rehearsal in paired chunks" in setting.reason
    assert any("rehearsal:" in str(e) and "winner: pace.level=1" in str(e)
               for e in tuned.report)
    # Nothing of the rehearsal is left: weights, buffers, optimizer state.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert optimizer.state_dict()["state"] == {}
    # The run trains with the winner as a fixed plan and searches nothing,
    # and draws the shuffle it would have drawn had nothing been rehearsed
    # (torch's RNG came back too).
    model.seen.clear()
    engine = tuned.engine(optimizer, progress=False)
    assert engine.live_adapters == () and engine.plan.get("pace", "level") == 1
    engine.fit(tuned.loader, epochs=1)
    engine.close()
    torch.manual_seed(0)
    Recording()
    plain = list(DataLoader(Indexed(96), batch_size=4, shuffle=True))
    assert model.seen == [int(i) for x, _ in plain for i in x[:, 0]]


def test_a_failing_candidate_is_dropped_and_the_weights_come_back():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.2, 2: 0.2}, 0.0), levels=(1, 2), nan_at=1,
                fail_at=2)
    tuned, model, _, before = rehearse([pace], clock)
    verdicts = {t.label: (t.verdict, t.reason) for t in tuned.tuning.report.tried}
    assert verdicts["pace.level=1"][0] == "failed" and "NonFiniteLoss" in verdicts["pace.level=1"][1]
    assert verdicts["pace.level=2"][0] == "failed" and "out of memory" in verdicts["pace.level=2"][1]
    assert tuned.plan.get("pace", "level") == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_budget_ends_a_rehearsal_and_the_incumbent_stays():
    clock = FakeClock()

    def slow_and_undecided(engine, level):
        time.sleep(0.02)  # real time passes, so the real budget runs out
        return 0.25 if engine.optimizer_steps % 2 else 0.35  # noise that never settles

    pace = Pace(clock, slow_and_undecided)
    started = time.monotonic()
    tuned, model, _, before = rehearse([pace], clock, budget_s=2.0, max_pairs=10 ** 6)
    took = time.monotonic() - started
    report = tuned.tuning.report
    assert took < 2.0 + TOLERANCE_S
    assert not report.complete and tuned.plan.get("pace", "level") == 0
    assert "cut short by the budget" in tuned.plan.setting("pace", "level").reason
    # Stopped by the tuner (too few steps left) or at the deadline: never "trying".
    assert report.tried[-1].verdict == "stopped", report.tried[-1]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_rehearsal_compares_the_cheap_knobs_before_it_compiles():
    # The budget pays in a rehearsal: a costly group (first_step_cost, as
    # compilation) goes last even with the higher prior; online, by prior.
    clock = FakeClock()
    costly = Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), name="costly", prior=0.9,
                  first_step_cost=2.0)
    cheap = Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), name="cheap", prior=0.1)
    tuned, _, _, _ = rehearse([costly, cheap], clock)
    assert [t.plugin for t in tuned.tuning.report.tried] == ["cheap", "costly"]
    clock = FakeClock()
    online, _, _ = train([Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), name="costly", prior=0.9,
                               first_step_cost=2.0),
                          Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), name="cheap", prior=0.1)],
                         clock=clock)
    assert [t.plugin for t in online.tuning.report.tried][0] == "costly"


def test_a_rehearsed_winner_is_where_online_tuning_starts():
    clock = FakeClock()
    speeds = {0: 0.25, 1: 0.2, 2: 0.3}
    first, _, _, _ = rehearse([Pace(clock, noisy(speeds, 0.02), levels=(1, 2))], clock)
    assert first.tuning.report.cache_path is not None
    clock = FakeClock()
    # Online tuning that may try what a rehearsal tries (precision) shares its cache.
    online, _, _ = train([Pace(clock, noisy(speeds, 0.02), levels=(1, 2))], clock=clock,
                         options={"allow": ("precision",)})
    report = online.tuning.report
    assert report.recheck and report.start == "pace.level=1"
    assert [t.label for t in report.tried] == ["PyTorch defaults"]


def test_precision_is_measured_as_up_front_training_knobs_never():
    # Like the trial search (and unlike online tuning, which needs allow=),
    # a rehearsal measures numerics knobs: the winner ships as a plan the
    # user sees before training. Knobs that change what is trained: never.
    clock = FakeClock()
    numerics = Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), name="numknob",
                    effect=Effect.NUMERICS)
    training = Pace(clock, lambda engine, level: 0.0, name="trainknob", effect=Effect.TRAINING)
    tuned, _, _, _ = rehearse([numerics, training], clock)
    assert {t.plugin for t in tuned.tuning.report.tried} == {"numknob"}
    assert tuned.plan.get("numknob", "level") == 1 and training.changes == []


def test_rehearsing_needs_an_optimizer_and_a_loader_and_keeps_the_batch_size():
    model = nn.Linear(4, 2)
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))]
    with pytest.raises(AutotuneError, match="tune='rehearse'"):
        autotune.apply(model, batches, tune="rehearse", loss_fn=nn.functional.cross_entropy)
    with pytest.raises(AutotuneError, match="never change the batch size"):
        autotune.apply(model, batches, tune="rehearse", batch_size=True,
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       loss_fn=nn.functional.cross_entropy)


def test_a_model_that_cannot_train_is_one_clear_error_and_loses_nothing():
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(2, 5), torch.tensor([0, 1]))] * 4  # 5 features for a 4-input layer
    with pytest.raises(TrainingError, match="could not train this model.*RuntimeError.*HINT"):
        autotune.apply(model, batches, tune="rehearse", budget_s=30,
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       loss_fn=nn.functional.cross_entropy)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
