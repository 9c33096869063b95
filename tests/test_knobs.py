"""Knobs: every plugin says what its settings change, and the plan keeps
what changes training (or must be measured first) off unless the user asks.

The rule is the core's, not each plugin's: a third-party plugin that
declares a ``training`` knob is guarded exactly like clipping."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from autotune import hookimpl, make_plan
from autotune.plugin.context import Workload
from autotune.plan.knobs import Effect, Knob
from autotune.plan.plan import Plan, Setting, Source
from autotune.testing import BUILTIN_PLUGINS, cpu_laptop, h100_box, plugin_manager


class Dropper:
    """A third-party plugin: ``rate`` changes what is trained, ``fused`` is
    speed only but must be measured first; both default to "on"."""

    NAME = "dropper"

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        options = context.options_for(self.NAME)
        rate = options.get("rate", 0.5)
        source = Source.PROFILE if "rate" in options else Source.DEFAULT
        return {"rate": Setting(rate, source, "drop half the tokens"),
                "fused": Setting(True, Source.DEFAULT, "fused kernel"),
                "chunk": Setting(64, Source.DEFAULT, "chunk size")}

    @hookimpl
    def autotune_knobs(self) -> dict[str, Knob]:
        return {"rate": Knob(off=0.0, effect=Effect.TRAINING),
                "fused": Knob(off=False, measure_first=True)}


def plan_with(plugin: Any, **kwargs: Any) -> Plan:
    return make_plan(hardware=cpu_laptop(),
                     manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=[plugin]),
                     **kwargs).plan


def test_a_third_party_training_knob_stays_off_unless_asked() -> None:
    plan = plan_with(Dropper())
    rate = plan.setting("dropper", "rate")
    assert rate.value == 0.0 and rate.effect is Effect.TRAINING
    assert "0.5, which changes what is trained" in rate.reason
    fused = plan.setting("dropper", "fused")
    assert fused.value is False and fused.reason.startswith("not measured")
    chunk = plan.setting("dropper", "chunk")  # no knob: a speed setting, as proposed
    assert chunk.value == 64 and chunk.effect is Effect.SPEED
    asked = plan_with(Dropper(), overrides={"dropper": {"rate": 0.1, "fused": True}})
    assert asked.setting("dropper", "rate") == Setting(0.1, Source.OVERRIDE, "set by the user",
                                                       Effect.TRAINING)
    assert asked.get("dropper", "fused") is True


def test_a_profile_turns_on_a_training_knob_only_when_chosen_by_name(tmp_path) -> None:
    (tmp_path / "lab.yaml").write_text("name: lab\nmatch: {}\npriority: 5\n"
                                       "plugins:\n  dropper: {rate: 0.2}\n")
    matched = plan_with(Dropper(), profile_dirs=[tmp_path])
    assert matched.profile == "lab" and matched.get("dropper", "rate") == 0.0
    assert "profile lab (matched, not chosen)" in matched.setting("dropper", "rate").reason
    chosen = plan_with(Dropper(), profile_dirs=[tmp_path], profile="lab")
    assert chosen.setting("dropper", "rate").value == 0.2
    assert chosen.setting("dropper", "rate").source is Source.PROFILE


def test_effects_round_trip_through_json() -> None:
    plan = plan_with(Dropper())
    data = json.loads(plan.to_json())
    assert data["plugins"]["dropper"]["rate"]["effect"] == "training"
    assert Plan.from_json(plan.to_json()) == plan
    # Plans written before effects existed read back as speed settings.
    del data["plugins"]["dropper"]["chunk"]["effect"]
    assert Plan.from_dict(data).setting("dropper", "chunk").effect is Effect.SPEED


def test_every_builtin_describes_every_setting_it_proposes() -> None:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)),
                                         batch_size=4)
    for hardware in (cpu_laptop(), h100_box()):
        planned = make_plan(hardware=hardware, manager=plugin_manager(),
                            workload=Workload.inspect(torch.nn.Conv2d(3, 3, 1), loader))
        knobs = planned.manager.knobs(planned.context, planned.plan)
        for plugin, key, setting in planned.plan.rows():
            assert key in knobs[plugin], f"{plugin}.{key} has no knob"
            assert knobs[plugin][key].effect is setting.effect
        assert {k for k, v in knobs["clipping"].items() if v.effect is Effect.TRAINING} == {
            "max_norm", "norm_type", "clip_value"}
        assert knobs["accumulation"]["steps"] == Knob(off=1, effect=Effect.TRAINING)
        assert knobs["dataloader"]["num_workers"].off == 0  # the user's own loader
        assert knobs["threads"]["intra_op"].off == torch.get_num_threads()


def test_a_malformed_knobs_answer_is_that_plugin_failing() -> None:
    class Bad(Dropper):
        NAME = "bad"

        @hookimpl
        def autotune_knobs(self) -> dict[str, Any]:
            return {"rate": 0.0}

    with pytest.warns(UserWarning, match="plugin 'bad' failed in autotune_knobs"):
        plan = plan_with(Bad())
    assert "bad" not in plan.settings and "autotune_knobs" in plan.disabled["bad"]


def test_knob_validates_its_fields() -> None:
    assert Knob(off=1, effect="training").effect is Effect.TRAINING
    with pytest.raises(ValueError, match="phase"):
        Knob(off=1, phase="later")
    with pytest.raises(ValueError):
        Knob(off=1, effect="sometimes")


# -- what a user may set: each plugin's knob checks the overrides -----------------------


@pytest.mark.parametrize("plugin, key, value, problem", [
    ("compile", "mode", "bogus",
     "compile.mode must be one of off, default, reduce-overhead, max-autotune"),
    ("compile", "fullgraph", None, "compile.fullgraph must be true or false"),
    ("accumulation", "steps", 0, "accumulation.steps must be a whole number >= 1"),
    ("accumulation", "steps", 1.5, "accumulation.steps must be a whole number >= 1"),
    ("clipping", "max_norm", 0.0, "clipping.max_norm must be a number > 0 or null"),
    ("mixed_precision", "dtype", "auto", "mixed_precision.dtype must be one of bf16, fp16, fp32"),
    ("dataloader", "num_workers", -1, "dataloader.num_workers must be a whole number >= 0"),
    ("dataloader", "prefetch_factor", 0,
     "dataloader.prefetch_factor must be a whole number >= 1 or null"),
    ("threads", "intra_op", 0, "threads.intra_op must be a whole number >= 1 or null"),
])
def test_an_override_is_checked_by_its_plugins_knob(plugin, key, value, problem) -> None:
    from autotune.errors import PlanError

    expected = f"overrides={{{plugin!r}: {{{key!r}: {value!r}}}}}: {problem}"
    with pytest.raises(PlanError) as caught:
        make_plan(hardware=h100_box(), manager=plugin_manager(),
                  overrides={plugin: {key: value}})
    assert str(caught.value) == expected


@pytest.mark.parametrize("plugin, values", [
    ("compile", {"mode": "max-autotune", "fullgraph": True}),
    ("accumulation", {"steps": 4}),
    ("clipping", {"max_norm": 1, "clip_value": None}),
    ("mixed_precision", {"dtype": "bf16", "tf32": None}),
    ("dataloader", {"num_workers": 0, "prefetch_factor": None}),
    ("threads", {"intra_op": 2, "inter_op": None}),
    ("parallel_folds", {"backend": "threading", "max_concurrent": 2}),
])
def test_what_the_plugins_accept_passes(plugin, values) -> None:
    plan = make_plan(hardware=h100_box(), manager=plugin_manager(),
                     overrides={plugin: values}).plan
    assert all(plan.get(plugin, k) == v for k, v in values.items())


def test_apply_refuses_an_override_before_touching_the_model() -> None:
    import autotune
    from autotune.errors import AutotuneError, PlanError

    model = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=r"^overrides=\{'accumulation': \{'steps': 0\}\}: "
                                        r"accumulation.steps must be a whole number >= 1$"):
        autotune.apply(model, overrides={"accumulation": {"steps": 0}}, tune=False,
                       manager=plugin_manager(), device="cpu")
    assert issubclass(PlanError, AutotuneError)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_third_party_knob_declares_what_it_accepts() -> None:
    from autotune.errors import PlanError
    from autotune.plan.knobs import whole_number

    class Picky(Dropper):
        NAME = "picky"

        @hookimpl
        def autotune_knobs(self) -> dict[str, Knob]:
            return {"rate": Knob(off=0.0, effect=Effect.TRAINING,
                                 check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
                    "chunk": Knob(off=64, check=whole_number(8))}

    assert plan_with(Picky(), overrides={"picky": {"rate": 0.25}}).get("picky", "rate") == 0.25
    with pytest.raises(PlanError, match=r"picky.rate must be in \[0, 1\)$"):
        plan_with(Picky(), overrides={"picky": {"rate": 1.0}})
    with pytest.raises(PlanError, match="picky.chunk must be a whole number >= 8$"):
        plan_with(Picky(), overrides={"picky": {"chunk": 4}})


def test_knob_choices_and_checks() -> None:
    from autotune.plan.knobs import positive_number, true_or_false, whole_number

    knob = Knob(off="a", choices=["a", "b", None])
    assert knob.choices == ("a", "b", None) and knob.problem("b") is None
    assert knob.problem("c") == "must be one of a, b, null"
    assert Knob(off=0, choices=(0, 1)).problem(True) == "must be one of 0, 1"  # True is no 1
    assert whole_number(1)(True) and whole_number(1)(2) is None
    assert whole_number(1, or_null=True)(None) is None and whole_number(1)(None)
    assert positive_number()(float("inf")) and positive_number()(0.5) is None
    assert true_or_false()(1) and true_or_false(or_null=True)(None) is None
    # A check is a function: the knob's data leaves it out, and equality ignores it.
    checked = Knob(off=1, effect=Effect.TRAINING, check=whole_number(1))
    assert checked == Knob(off=1, effect=Effect.TRAINING)
    assert "check" not in checked.to_dict() and json.dumps(checked.to_dict())
    assert Knob(off="off", choices=("off", "on")).to_dict()["choices"] == ["off", "on"]
    with pytest.raises(ValueError, match="choices"):
        Knob(off="a", choices="ab")
    with pytest.raises(ValueError, match="check"):
        Knob(off=1, check=3)


def test_overrides_on_a_plan_made_earlier_are_checked_the_same_way() -> None:
    # cross_validate(plan=tuned.plan, overrides=...) goes through the manager.
    from autotune.errors import PlanError

    planned = make_plan(hardware=cpu_laptop(), manager=plugin_manager())
    with pytest.raises(PlanError, match=r"^overrides=\{'compile': \{'mode': 'fast'\}\}: "
                                        r"compile.mode must be one of off, default"):
        planned.manager.with_overrides(planned.context, planned.plan,
                                       {"compile": {"mode": "fast"}})
    plan = planned.manager.with_overrides(planned.context, planned.plan,
                                          {"compile": {"mode": "default"}})
    assert plan.get("compile", "mode") == "default"
