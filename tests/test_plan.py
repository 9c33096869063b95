"""Plans: what the built-in plugins propose for real machines, precedence,
overrides and the JSON/YAML round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from autotune import make_plan
from autotune.plugin.context import Workload
from autotune.errors import PlanError
from autotune.plan.knobs import Effect
from autotune.plan.plan import Plan, Setting, Source
from autotune.testing import (BUILTIN_PLUGINS, a100_box, cpu_laptop, fake_cpu, fake_gpu,
                              fake_hardware, h100_box, plugin_manager, rtx4090_box, rtx5080_7950x)

PRESETS = [rtx5080_7950x, h100_box, a100_box, rtx4090_box, cpu_laptop]


def plan_for(hardware, **kwargs) -> Plan:
    return make_plan(hardware=hardware, manager=plugin_manager(), **kwargs).plan


# -- what the profiles and rules produce -----------------------------------------------


def test_rtx5080_7950x_plan_follows_its_profile():
    plan = plan_for(rtx5080_7950x())
    assert plan.profile == "rtx5080_7950x"
    workers = plan.setting("dataloader", "num_workers")
    assert 10 <= workers.value <= 18 and workers.source is Source.PROFILE
    assert 6 <= plan.get("dataloader", "prefetch_factor") <= 8
    assert plan.get("dataloader", "pin_memory") is True
    assert plan.get("parallel_folds", "max_concurrent") <= 2
    assert plan.get("threads", "intra_op") == 16  # one per physical core, not per SMT thread
    # Matched, not chosen: its bf16 waits for a measurement and its clipping
    # (which changes what is trained) stays off; the plan says why.
    dtype, clip = plan.setting("mixed_precision", "dtype"), plan.setting("clipping", "max_norm")
    assert dtype.value == "fp32" and dtype.reason.startswith("not measured: profile rtx5080_7950x")
    assert dtype.effect is Effect.NUMERICS
    assert clip.value is None and clip.effect is Effect.TRAINING
    assert "changes what is trained" in clip.reason and "profile='rtx5080_7950x'" in clip.reason


def test_a_profile_chosen_by_name_may_turn_on_what_it_sets():
    plan = plan_for(rtx5080_7950x(), profile="rtx5080_7950x")
    assert plan.get("mixed_precision", "dtype") == "bf16"
    assert plan.get("mixed_precision", "grad_scaler") is False
    assert plan.setting("clipping", "max_norm") == Setting(1.0, Source.PROFILE, "profile sets max_norm",
                                                           Effect.TRAINING)


def test_an_unmeasured_plan_changes_nothing_that_must_be_measured_or_asked_for():
    """Whatever the hardware: fp32, eager, contiguous, no clipping, one step per batch."""
    conv = Workload.inspect(torch.nn.Conv2d(3, 8, 3))
    for make in PRESETS:
        plan = plan_for(make(), workload=conv)
        assert plan.get("mixed_precision", "dtype") == "fp32", make.__name__
        assert plan.get("mixed_precision", "tf32") in (None, False)
        assert plan.get("compile", "mode") == "off"
        assert plan.get("channels_last", "enabled") is False
        assert plan.get("clipping", "max_norm") is None and plan.get("clipping", "clip_value") is None
        assert plan.get("accumulation", "steps") == 1
        off = {"dtype": "fp32", "grad_scaler": False, "tf32": None, "steps": 1, "max_norm": None,
               "norm_type": 2.0, "clip_value": None}
        for plugin, key, setting in plan.rows():
            if setting.effect is not Effect.SPEED:
                assert setting.value == off[key], (make.__name__, plugin, key)


def test_rtx5080_workers_never_exceed_the_usable_cores():
    hw = rtx5080_7950x()
    limited = fake_hardware(cpu={**vars(hw.cpu), "usable_cores": 6.0}, memory=hw.memory,
                            gpus=hw.gpus)
    workers = plan_for(limited, profile="rtx5080_7950x").setting("dataloader", "num_workers")
    assert workers.value == 6 and "capped at the 6 usable cores" in workers.reason


def test_h100_plan():
    plan = plan_for(h100_box())
    assert plan.profile == "h100"
    assert 8 <= plan.get("dataloader", "num_workers") <= 16
    assert plan.get("compile", "mode") == "off"  # the profile's reduce-overhead: not measured
    assert "reduce-overhead" in plan.setting("compile", "mode").reason
    chosen = plan_for(h100_box(), profile="h100")
    assert chosen.get("compile", "mode") == "reduce-overhead"
    assert chosen.get("mixed_precision", "dtype") == "bf16"
    # tf32 comes from the plugin's rule, not the profile: measured or asked for only.
    assert chosen.get("mixed_precision", "tf32") is None
    assert plan_for(h100_box(), overrides={"mixed_precision": {"tf32": True}}).get(
        "mixed_precision", "tf32") is True


def test_cpu_laptop_plan():
    plan = plan_for(cpu_laptop())
    assert plan.profile == "generic_cpu"
    assert plan.get("mixed_precision", "dtype") == "fp32"  # no native bf16 on Tiger Lake
    assert "no native bf16" in plan.setting("mixed_precision", "dtype").reason
    assert plan.get("dataloader", "pin_memory") is False
    assert plan.get("threads", "intra_op") == 4
    assert "tf32" not in plan.values("mixed_precision")


def test_this_machine_plan_uses_bf16_exactly_when_the_cpu_has_it():
    planned = make_plan(manager=plugin_manager())
    hw = planned.context.hardware
    if hw.has_cuda:
        pytest.skip("the CPU rule is what this test checks")
    assert planned.plan.get("mixed_precision", "dtype") == ("bf16" if hw.cpu.has_bf16 else "fp32")


@pytest.mark.parametrize("make", PRESETS)
def test_every_setting_has_a_reason_and_is_json(make):
    plan = plan_for(make())
    assert set(plan.plugins()) == set(BUILTIN_PLUGINS) - {"daemon"}  # no daemon listens
    for plugin, key, setting in plan.rows():
        assert setting.reason, f"{plugin}.{key} has no reason"
        json.dumps(setting.value)


def test_tf32_source_is_its_own_not_the_dtype_one():
    plan = plan_for(h100_box(), profile="h100")  # the profile sets dtype, not tf32
    assert plan.setting("mixed_precision", "dtype").source is Source.PROFILE
    assert plan.setting("mixed_precision", "tf32").source is Source.DEFAULT


def test_fp16_profile_on_a_cpu_is_downgraded_and_says_so(tmp_path):
    (tmp_path / "generic_cpu.yaml").write_text(
        "name: generic_cpu\nplugins:\n  mixed_precision: {dtype: fp16}\n")
    plan = plan_for(cpu_laptop(), profile_dirs=[tmp_path])
    dtype = plan.setting("mixed_precision", "dtype")
    assert dtype.value == "fp32" and "downgraded" in dtype.reason


def test_pre_ampere_gpu_gets_fp16_with_a_scaler():
    t4 = fake_hardware(gpus=[fake_gpu("Tesla T4", 15, (7, 5))])
    plan = plan_for(t4)
    assert plan.get("mixed_precision", "dtype") == "fp32"  # until measured
    assert "'fp16'" in plan.setting("mixed_precision", "dtype").reason
    asked = plan_for(t4, overrides={"mixed_precision": {"dtype": "fp16", "grad_scaler": True}})
    assert asked.get("mixed_precision", "dtype") == "fp16"
    assert asked.get("mixed_precision", "grad_scaler") is True
    assert asked.get("mixed_precision", "tf32") is None  # no TF32 on a T4: flags left alone
    from autotune.plugins.mixed_precision import propose

    proposed = propose(t4)  # what the tuner is offered first
    assert (proposed["dtype"].value, proposed["grad_scaler"].value) == ("fp16", True)


def test_workload_shapes_the_plan():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    loader = DataLoader(TensorDataset(torch.randn(40, 8), torch.randn(40, 4)), batch_size=10)
    workload = Workload.inspect(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    assert (workload.has_conv2d, workload.batch_size, workload.dataset_length) == (False, 10, 40)
    assert workload.num_parameters == 8 * 4 + 4 and workload.optimizer == "SGD"
    plan = plan_for(cpu_laptop(), workload=workload)
    assert plan.get("channels_last", "enabled") is False
    assert "no Conv2d" in plan.setting("channels_last", "enabled").reason
    conv = Workload.inspect(torch.nn.Conv2d(3, 8, 3))
    enabled = plan_for(cpu_laptop(), workload=conv).setting("channels_last", "enabled")
    assert enabled.value is False and enabled.reason.startswith("not measured")


def test_accumulation_target_batch_size(tmp_path):
    (tmp_path / "generic_cpu.yaml").write_text(
        "name: generic_cpu\nplugins:\n  accumulation: {target_batch_size: 256}\n")
    steps = plan_for(cpu_laptop(), profile_dirs=[tmp_path], profile="generic_cpu",
                     workload=Workload(batch_size=48)).setting("accumulation", "steps")
    assert steps.value == 6 and steps.source is Source.PROFILE  # ceil(256 / 48)
    unknown = plan_for(cpu_laptop(), profile_dirs=[tmp_path]).setting("accumulation", "steps")
    assert unknown.value == 1 and "batch size" in unknown.reason
    matched = plan_for(cpu_laptop(), profile_dirs=[tmp_path],
                       workload=Workload(batch_size=48)).setting("accumulation", "steps")
    assert matched.value == 1 and "proposes 6, which changes what is trained" in matched.reason


def test_parallel_folds_split_cpu_cores():
    hw = fake_hardware(cpu=fake_cpu(physical_cores=16, logical_cores=16))
    plan = plan_for(hw)
    assert plan.get("parallel_folds", "max_concurrent") == 8
    assert plan.get("parallel_folds", "threads_per_fold") == 2


# -- precedence ----------------------------------------------------------------------


def test_precedence_default_profile_measured_override():
    plan = Plan(settings={"dataloader": {"num_workers": Setting(2, Source.DEFAULT, "rule")}})
    plan = plan.with_values("dataloader", {"num_workers": 4}, Source.PROFILE, "profile")
    assert plan.setting("dataloader", "num_workers").source is Source.PROFILE
    plan = plan.with_values("dataloader", {"num_workers": 6}, Source.MEASURED, "trial won")
    plan = plan.with_overrides({"dataloader": {"num_workers": 1}})
    assert plan.setting("dataloader", "num_workers") == Setting(1, Source.OVERRIDE, "set by the user")
    # a later measurement does not beat the user's word, nor a profile a measurement
    plan = plan.with_values("dataloader", {"num_workers": 8}, Source.MEASURED, "trial won")
    assert plan.get("dataloader", "num_workers") == 1
    assert [s.value for s in sorted(Source, key=lambda s: s.rank)] == [
        "default", "profile", "measured", "daemon", "override"]


def test_measured_values_replace_profile_values():
    plan = plan_for(rtx5080_7950x())
    measured = plan.with_values("dataloader", {"num_workers": 12}, Source.MEASURED, "12 won")
    assert measured.setting("dataloader", "num_workers").source is Source.MEASURED
    assert plan.get("dataloader", "num_workers") == 18  # plans are immutable


def test_overrides_through_make_plan():
    plan = plan_for(cpu_laptop(), overrides={"compile": {"mode": "default"},
                                             "clipping": {"max_norm": None}})
    assert plan.setting("compile", "mode").source is Source.OVERRIDE
    assert plan.get("clipping", "max_norm") is None


@pytest.mark.parametrize("overrides, message", [
    ({"compil": {"mode": "default"}}, "unknown or disabled plugin 'compil'"),
    ({"compile": {"mod": "default"}}, r"unknown key\(s\) \['mod'\] for plugin 'compile'"),
    ({"dataloader": {"pin_memory": "yes"}}, "is a string, but dataloader proposes true/false"),
    ({"dataloader": {"num_workers": [1, 2]}}, "is a list, but dataloader proposes a number"),
    ({"compile": "default"}, "must be a mapping"),
])
def test_bad_overrides_are_errors(overrides, message):
    with pytest.raises(PlanError, match=message):
        plan_for(cpu_laptop(), overrides=overrides)


def test_override_for_a_disabled_plugin_says_it_is_disabled():
    with pytest.raises(PlanError, match=r"compile is disabled: disabled by disable=\[\.\.\.\]"):
        make_plan(hardware=cpu_laptop(), manager=plugin_manager(disable=["compile"]),
                  overrides={"compile": {"mode": "default"}})


# -- serialising ---------------------------------------------------------------------


@pytest.mark.parametrize("make", PRESETS)
def test_json_and_yaml_round_trip(make):
    plan = plan_for(make(), overrides={"accumulation": {"steps": 4}})
    plan = plan.with_values("compile", {"mode": "default"}, Source.MEASURED, "1.3x in a trial")
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_yaml(plan.to_yaml()) == plan
    data = json.loads(plan.to_json())
    assert set(data) == {"profile", "hardware_fingerprint", "plugins", "disabled"}
    assert data["plugins"]["accumulation"]["steps"] == {
        "value": 4, "source": "override", "reason": "set by the user", "effect": "training"}


def test_round_trip_keeps_disabled_reasons():
    plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager(disable=["threads"])).plan
    assert Plan.from_yaml(plan.to_yaml()).disabled == {"threads": "disabled by disable=[...]"}


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a mapping"),
    ('{"plugins": {"compile": {"mode": {"source": "default"}}}}', "lacks 'value'"),
    ('{"plugins": {"compile": {"mode": {"value": 1, "source": "guessed"}}}}', "guessed"),
])
def test_malformed_serialised_plans(text, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_json(text)
    with pytest.raises(PlanError):
        Plan.from_yaml("plugins: [")


def test_settings_that_follow_an_override_are_recomputed_from_it():
    two_cores = fake_hardware(cpu=fake_cpu(physical_cores=2, logical_cores=2))
    planned = make_plan(hardware=two_cores).plan  # a quarter of two cores: no workers
    assert planned.get("dataloader", "num_workers") == 0
    assert planned.setting("dataloader", "persistent_workers").reason == "no workers"
    plan = make_plan(hardware=two_cores, overrides={"dataloader": {"num_workers": 1}}).plan
    reasons = {k: s.reason for k, s in plan.settings["dataloader"].items()}
    assert not any("no workers" in r for r in reasons.values()), reasons
    assert plan.get("dataloader", "persistent_workers") is True
    assert plan.get("dataloader", "prefetch_factor") == 2
    # A dependent key the user set too stays as set.
    both = make_plan(hardware=two_cores, overrides={"dataloader": {
        "num_workers": 2, "persistent_workers": False}}).plan
    assert both.get("dataloader", "persistent_workers") is False
    assert both.setting("dataloader", "persistent_workers").source is Source.OVERRIDE
    assert both.get("dataloader", "prefetch_factor") == 2
    # And back to none: what followed the planned workers goes with them.
    gpu = make_plan(hardware=h100_box(), overrides={"dataloader": {"num_workers": 0}}).plan
    assert gpu.get("dataloader", "persistent_workers") is False
    assert gpu.get("dataloader", "prefetch_factor") is None


def test_with_values_force_replaces_an_override_and_keeps_the_effect():
    plan = make_plan(hardware=cpu_laptop(), overrides={"compile": {"mode": "default"}}).plan
    kept = plan.with_values("compile", {"mode": "off"}, Source.MEASURED, "measured")
    assert kept.get("compile", "mode") == "default"  # an override beats a measurement
    forced = plan.with_values("compile", {"mode": "off"}, Source.MEASURED, "fell back",
                              force=True)
    setting = forced.setting("compile", "mode")
    assert (setting.value, setting.source, setting.reason) == ("off", Source.MEASURED, "fell back")
    assert setting.effect is plan.setting("compile", "mode").effect


def test_a_plugin_recomputes_what_follows_its_overridden_key_through_the_hook():
    import autotune
    from autotune.plugin.manager import PluginWarning
    from autotune.plan.plan import default
    from autotune.testing import plugin_manager

    class Cache:
        NAME = "cache"

        @autotune.hookimpl
        def autotune_configure(self):
            return {"size_mb": default(0, "no cache"), "evict": default("none", "no cache")}

        @autotune.hookimpl
        def autotune_follow_overrides(self, overrides):
            size = overrides.get("size_mb", 0)
            return {"evict": default("lru" if size else "none", f"for size_mb={size}"),
                    "size_mb": default(-1, "never: the user set it")}

    plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[Cache()]),
                     overrides={"cache": {"size_mb": 64}}).plan
    assert plan.get("cache", "size_mb") == 64  # the user's word stands
    assert plan.setting("cache", "evict") == Setting("lru", Source.DEFAULT, "for size_mb=64")

    class Sloppy(Cache):
        NAME = "sloppy"

        @autotune.hookimpl
        def autotune_follow_overrides(self):
            return {"unknown_key": default(1, "?")}

    with pytest.warns(PluginWarning, match="autotune_follow_overrides set key"):
        make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[Sloppy()]),
                  overrides={"sloppy": {"size_mb": 64}})
