"""Online tuning: the search runs on the real run's own steps (fake clocks
where a decision must be deterministic; real DataLoaders and training)."""

from __future__ import annotations

import math

import pytest
import torch

import autotune
from autotune.errors import AutotuneError
from autotune.plan.knobs import Effect
from autotune.tuner import OnlineOptions
from autotune.tuner.paired import (Verdict, decide, interval, pair_log_ratios, t_quantile)
from online_helpers import Pace, Recording, all_but, noisy, train
from tuner_helpers import FakeClock


# -- the statistics ---------------------------------------------------------------

def test_pairs_cancel_a_steady_drift():
    # The machine slows by 3 % a chunk; B is exactly 10 % faster than A
    # would be at its own time.
    a = [100 * 0.97 ** i for i in range(0, 12, 2)]
    b = [1.1 * 100 * 0.97 ** i for i in range(1, 11, 2)]
    ratios = pair_log_ratios(a, b)
    assert len(ratios) == 5
    assert all(math.exp(r) == pytest.approx(1.1, rel=1e-9) for r in ratios)
    # Against the A before it alone, the drift would be taken for B's.
    assert all(bi / ai == pytest.approx(1.1 * 0.97) for ai, bi in zip(a, b))


def test_interval_and_verdicts():
    assert t_quantile(1) == pytest.approx(6.314) and t_quantile(1000) == pytest.approx(1.645)
    assert t_quantile(22) == t_quantile(20)  # between rows: the wider
    steady_gain = [math.log(1.10) + d for d in (0.01, -0.01, 0.005, -0.005)]
    found = interval(steady_gain)
    assert found.low > 1.05 and found.high < 1.15 and found.pairs == 4
    assert decide(steady_gain)[0] is Verdict.KEEP
    assert decide([math.log(0.7), math.log(0.72)])[0] is Verdict.DROP
    noise = [0.2, -0.25, 0.15, -0.1]
    assert decide(noise)[0] is Verdict.MORE
    assert decide(noise, max_pairs=4)[0] is Verdict.DROP
    assert decide(steady_gain[:1])[0] is Verdict.MORE  # one pair has no spread
    # A gain smaller than the margin is not worth a switch, however sure.
    tiny = [math.log(1.004) + d for d in (0.001, -0.001, 0.0005, -0.0005, 0.0)]
    assert decide(tiny, margin=0.01)[0] is Verdict.DROP


# -- decisions on a fake clock --------------------------------------------------------

def test_a_faster_candidate_is_kept_and_written_in_the_plan():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.20}, spread=0.02))
    tuned, engine, model = train([pace], clock=clock)
    report = tuned.tuning.report
    assert [t.verdict for t in report.tried] == ["kept"]
    assert report.tried[0].interval.low > 1.01
    assert engine.plan.get("pace", "level") == 1
    setting = engine.plan.setting("pace", "level")
    assert setting.source.value == "measured" and "online" in setting.reason
    assert report.winner_settings["pace"] == {"level": 1}
    assert report.complete
    # Every step of the run trained, none twice: 4 epochs of 24 batches.
    assert engine.micro_steps == 96 and len(model.seen) == 96 * 4
    # History marks which configuration each stretch of steps ran under.
    labels = [m.label for m in engine.history.marks]
    assert labels[0] == "PyTorch defaults" and "pace.level=1" in labels
    assert "pace.level=1" in tuned.tuning.table()


def test_noise_keeps_the_incumbent():
    clock = FakeClock()
    # No real difference, 30 % noise per step: nothing may be kept.
    pace = Pace(clock, noisy({0: 0.25, 1: 0.25}, spread=0.3, seed=3))
    tuned, engine, _ = train([pace], clock=clock)
    tried = tuned.tuning.report.tried
    assert len(tried) == 1 and tried[0].verdict in ("dropped", "stopped")
    assert tried[0].interval.low < 1.01 < tried[0].interval.high
    assert engine.plan.get("pace", "level") == 0


def test_a_slower_candidate_is_dropped_quickly_and_costs_little():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.50}, spread=0.05))
    tuned, engine, _ = train([pace], clock=clock, epochs=6)
    tried = tuned.tuning.report.tried[0]
    assert tried.verdict == "dropped" and tried.interval.high < 1
    assert tried.interval.pairs == 2  # the least the statistics allow
    assert tried.steps < 0.15 * engine.micro_steps


def test_what_slower_candidates_may_cost_is_capped():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.5, 2: 0.5}, spread=0.05), levels=(1, 2))
    tuned, engine, _ = train([pace], clock=clock, epochs=6, options={"max_loss": 0.02})
    report = tuned.tuning.report
    first = report.tried[0]
    # 2 % of 144 steps is 2.9 steps' worth: one chunk of six steps at half
    # speed is 3, so the candidate stops after its first pair, unkept, and
    # the search stops with it: the second candidate is never tried.
    assert first.verdict == "dropped" and "cost 2%" in first.reason
    assert [t.label for t in report.tried] == ["pace.level=1"] and 2 not in pace.changes
    assert not report.complete and engine.plan.get("pace", "level") == 0


def test_chunks_longer_than_an_epoch_still_decide():
    # 3 steps an epoch, 4 timed steps a chunk: each chunk is timed across
    # epoch boundaries (the step after each boundary is not timed).
    clock = FakeClock()
    tuned, engine, _ = train([Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0))], clock=clock,
                             n=12, epochs=40)
    tried = tuned.tuning.report.tried[0]
    assert tried.verdict == "kept", tried.reason
    assert engine.plan.get("pace", "level") == 1
    timed = [c for c in tuned.tuning.report.chunks if c.role in ("incumbent", "candidate")]
    assert all(c.counted_steps == 4 for c in timed)


def test_groups_go_by_prior_a_loader_group_included():
    # Up front a loader-phase group waits for the step groups; online, every
    # chunk is timed end to end, so the higher prior goes first.
    clock = FakeClock()
    step = Pace(clock, lambda engine, level: 0.25, name="steppy", prior=0.2)
    loader = Pace(clock, lambda engine, level: 0.25, name="loady", prior=0.4, phase="loader")
    tuned, _, _ = train([step, loader], clock=clock)
    assert [t.plugin for t in tuned.tuning.report.tried][:2] == ["loady", "steppy"]


def test_math_changing_knobs_are_never_tried_unasked():
    clock = FakeClock()
    training = Pace(clock, noisy({0: 0.25, 1: 0.1}, 0.0), name="trainknob",
                    effect=Effect.TRAINING)
    numerics = Pace(clock, lambda engine, level: 0.0, name="numknob", effect=Effect.NUMERICS)
    tuned, engine, _ = train([training, numerics], clock=clock)
    tried = {t.plugin for t in tuned.tuning.report.tried}
    assert "trainknob" not in tried and "numknob" not in tried
    assert training.changes == [] and numerics.changes == []
    # Asked for, precision-like (numerics) knobs are tried; training ones never.
    clock = FakeClock()
    training = Pace(clock, noisy({0: 0.25, 1: 0.1}, 0.0), name="trainknob",
                    effect=Effect.TRAINING)
    numerics = Pace(clock, lambda engine, level: 0.0, name="numknob", effect=Effect.NUMERICS)
    tuned, _, _ = train([training, numerics], clock=clock,
                        options={"allow": ("precision",)})
    tried = {t.plugin for t in tuned.tuning.report.tried}
    assert "numknob" in tried and "trainknob" not in tried
    assert training.changes == []


def test_precision_changes_live_between_steps_and_keeps_its_grad_scaler():
    # What allow=["precision"] tries: mixed_precision's live change, on the
    # real plugin and engine (this CPU has no native bf16, so the search
    # itself prunes bf16 here; the switch is what is tested).
    from autotune.plan.plan import Source

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    loader = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(6)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    tuned = autotune.apply(model, loader, optimizer=optimizer, tune=False,
                           disable=all_but("mixed_precision"))
    engine = tuned.engine(optimizer, torch.nn.functional.cross_entropy, progress=False)
    state = engine.plugin_state("mixed_precision")

    def output_dtype():
        with engine.forward_context(True):
            return model(torch.randn(2, 8)).dtype

    assert output_dtype() == torch.float32
    for dtype, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        assert engine.change_live("mixed_precision", {"dtype": dtype, "grad_scaler": False},
                                  Source.MEASURED, "test")
        assert output_dtype() == expected and engine.plan.get("mixed_precision", "dtype") == dtype
        engine.fit(loader, epochs=1)
        assert math.isfinite(engine.history[-1].train_loss)
    assert engine.change_live("mixed_precision", {"dtype": "fp16", "grad_scaler": True},
                              Source.MEASURED, "test")
    scaler = state["scaler"]
    assert scaler is not None
    engine.change_live("mixed_precision", {"dtype": "fp32", "grad_scaler": False},
                       Source.MEASURED, "test")
    assert state["scaler"] is None and output_dtype() == torch.float32
    engine.change_live("mixed_precision", {"dtype": "fp16", "grad_scaler": True},
                       Source.MEASURED, "test")
    assert state["scaler"] is scaler  # its scale carries over
    assert not engine.change_live("mixed_precision", {"dtype": "int8"}, Source.MEASURED, "t")
    engine.close()


def test_a_failing_candidate_mid_chunk_loses_nothing():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), fail_at=1)
    tuned, engine, model = train([pace], clock=clock)
    tried = tuned.tuning.report.tried[0]
    assert tried.verdict == "failed" and "out of memory" in tried.reason
    assert engine.plan.get("pace", "level") == 0
    # The failed step ran again under the incumbent: the run trained exactly
    # what a run without the candidate trains, bitwise.
    clock = FakeClock()
    _, plain_engine, plain_model = train([Pace(clock, noisy({0: 0.25}, 0.0), levels=())],
                                         clock=clock)
    assert model.seen == plain_model.seen
    for mine, theirs in zip(model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_a_candidate_whose_loss_turns_nan_mid_chunk_loses_nothing():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0), nan_at=1)
    tuned, engine, model = train([pace], clock=clock)
    tried = tuned.tuning.report.tried[0]
    assert tried.verdict == "failed" and "NonFiniteLoss" in tried.reason, tried.reason
    assert tried.steps == 2  # two good steps under it, then the NaN
    assert engine.plan.get("pace", "level") == 0
    # The NaN never reached backward, and the retried step drew the dropout
    # the candidate's forward had drawn: bitwise what a run without it trains.
    clock = FakeClock()
    _, _, plain_model = train([Pace(clock, noisy({0: 0.25}, 0.0), levels=())], clock=clock)
    assert model.seen == plain_model.seen
    for mine, theirs in zip(model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_drift_reopens_the_search():
    clock = FakeClock()
    steps = {"n": 0}

    def step_time(engine, level):
        steps["n"] += 1
        slow = 2.0 if steps["n"] > 60 else 1.0  # another job arrives at step 60
        return (0.25 if level == 0 else 0.5) * slow

    pace = Pace(clock, step_time)
    tuned, _, _ = train([pace], clock=clock, epochs=8, n=64)
    report = tuned.tuning.report
    assert len(report.reopened) == 1
    step = int(report.reopened[0].split(":")[0].split()[1])
    assert step > 60 and "loader and thread settings searched again" in report.reopened[0]
    # The same run without the newcomer never reopens.
    clock, steps["n"] = FakeClock(), -10 ** 6
    steady, _, _ = train([Pace(clock, step_time)], clock=clock, epochs=8, n=64)
    assert steady.tuning.report.reopened == []


def test_a_cached_online_winner_is_rechecked_not_searched_again():
    clock = FakeClock()
    first, _, _ = train([Pace(clock, noisy({0: 0.25, 1: 0.2, 2: 0.3}, 0.02), levels=(1, 2))],
                        clock=clock)
    assert first.tuning.report.winner_settings["pace"] == {"level": 1}
    assert first.tuning.report.cache_path is not None
    clock = FakeClock()
    second_pace = Pace(clock, noisy({0: 0.25, 1: 0.2, 2: 0.3}, 0.02), levels=(1, 2))
    second, engine, _ = train([second_pace], clock=clock)
    report = second.tuning.report
    assert report.recheck and report.start == "pace.level=1"
    assert [t.plugin for t in report.tried] == ["recheck"]  # defaults only, not level 2
    assert report.tried[0].label == "PyTorch defaults" and report.tried[0].verdict == "dropped"
    assert 2 not in second_pace.changes
    assert engine.plan.get("pace", "level") == 1


def test_an_investment_is_made_only_when_the_run_can_repay_it():
    clock = FakeClock()
    pace = Pace(clock, noisy({0: 0.25, 1: 0.2}, 0.0))
    tuned, _, _ = train([pace], clock=clock, keep=("compile",), epochs=4)
    report = tuned.tuning.report
    compile_tried = [t for t in report.tried if t.plugin == "compile"]
    assert compile_tried and compile_tried[0].verdict == "not tried"
    investment = report.investments[0]
    assert not investment.tried and investment.worth_s < 2 * investment.cost_s
    assert "to compile" in report.summary()


def test_bad_online_input_is_one_clear_error():
    model = Recording()
    with pytest.raises(AutotuneError, match="allow"):
        OnlineOptions(allow=("clipping",))
    with pytest.raises(AutotuneError, match="tune='online'"):
        autotune.apply(model, [], allow=["precision"])
    with pytest.raises(AutotuneError, match="tune must be .*'online'.*got 'sometimes'"):
        autotune.apply(model, [], tune="sometimes")
    with pytest.raises(AutotuneError, match="max_pairs"):
        OnlineOptions(max_pairs=0)


def _loader_speed(engine, level):
    """Steps "run" faster with one loader worker and one compute thread."""
    workers = engine.plan.get("dataloader", "num_workers") or 0
    threads = engine.plan.get("threads", "intra_op")
    return 0.25 - (0.06 if workers == 1 else 0.0) - (0.03 if threads == 1 else 0.0)


def test_switches_mid_epoch_keep_the_data_and_train_bitwise_like_no_tuning():
    clock = FakeClock()
    pace = Pace(clock, _loader_speed, levels=())
    tuned, engine, model = train([pace], clock=clock, keep=("dataloader", "threads"),
                                 epochs=5, n=120)
    report = tuned.tuning.report
    assert any(t.plugin == "dataloader" for t in report.tried)
    assert engine.plan.get("dataloader", "num_workers") == 1  # what the clock favours
    # Loader settings changed inside epochs, not only at their boundaries.
    per_epoch = 30
    switches = [m for m in engine.history.marks[1:] if "dataloader" in m.label
                or m.label == "PyTorch defaults"]
    assert any(m.step % per_epoch for m in switches)
    # Same samples in the same order, and the same weights bit for bit, as a
    # run that tuned nothing (same seed: the global RNG stream is the same).
    clock = FakeClock()
    _, plain_engine, plain = train([Pace(clock, _loader_speed, levels=())], clock=clock,
                                   epochs=5, n=120, tune=False)
    assert plain_engine.micro_steps == engine.micro_steps == 5 * per_epoch
    assert model.seen == plain.seen
    for mine, theirs in zip(model.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(mine, theirs)
