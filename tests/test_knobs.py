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
from autotune.context import Workload
from autotune.knobs import Effect, Knob
from autotune.manager import BUILTIN_PLUGINS
from autotune.plan import Plan, Setting, Source
from autotune.testing import cpu_laptop, h100_box, plugin_manager


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
