"""The plugin manager: loading, disabling, failure containment, every hook."""

from __future__ import annotations

import types
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from autotune import hookimpl, make_plan
from autotune.plugin.context import Context
from autotune.errors import PluginError, ProfileError
from autotune.plugin import registry, specs
from autotune.plugin.manager import PluginManager, PluginWarning
from autotune.plan.plan import default
from autotune.profile import load_profiles
from autotune.testing import (BUILTIN_PLUGINS, HookRecorder, cpu_laptop, plugin_manager,
                              rtx5080_7950x)


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A plugin as a module object, the shape most plugins have."""
    module = types.ModuleType(name)
    module.NAME = name
    for hook_name, func in hooks.items():
        setattr(module, hook_name, func)
    return module


def install_fake_distribution(root: Path, dist: str, module: str, source: str,
                              entry_name: str) -> None:
    """A real (if minimal) installed distribution on sys.path: a dist-info
    directory with an ``autotune`` entry point, as pip would leave it."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[autotune]\n{entry_name} = {module}\n")


FAKE_PLUGIN = """
from autotune import hookimpl
from autotune.plan.plan import default

@hookimpl
def autotune_configure(context):
    return {"level": default(3, "fake third-party plugin")}
"""


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "fake-autotune-extra", "fake_autotune_extra",
                              FAKE_PLUGIN, "extra")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "extra"


# -- loading -----------------------------------------------------------------------


def test_builtins_are_registered_through_entry_points():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="autotune")
             if ep.dist is not None and ep.dist.name.replace("_", "-") == "torch-autotune"}
    assert names == {n: f"autotune.plugins.{n}" for n in BUILTIN_PLUGINS}
    infos = {i.name: i for i in plugin_manager().plugin_infos()}
    assert all(infos[n].origin == "builtin" and infos[n].status == "loaded" for n in BUILTIN_PLUGINS)
    assert "autotune_configure" in infos["dataloader"].hooks


def test_third_party_entry_point_is_loaded(third_party):
    manager = PluginManager()
    info = {i.name: i for i in manager.plugin_infos()}[third_party]
    assert info.origin == "fake-autotune-extra 1.0" and info.status == "loaded"
    plan = make_plan(hardware=cpu_laptop(), manager=manager).plan
    assert plan.get("extra", "level") == 3


def test_autoload_env_keeps_third_party_out(third_party, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    plan = make_plan(hardware=cpu_laptop(), manager=PluginManager()).plan
    assert "extra" not in plan
    assert "AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD" in plan.disabled["extra"]
    # built-ins still load (the daemon plugin adds nothing: no daemon listens)
    assert set(plan.plugins()) == set(BUILTIN_PLUGINS) - {"daemon"}


def test_the_testing_manager_neither_loads_nor_lists_installed_plugins(third_party):
    # What autotune.testing.plugin_manager gives a test does not depend on
    # what else is installed, and an installed plugin can be tested as an object.
    plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager()).plan
    assert third_party not in plan and third_party not in plan.disabled
    assert third_party not in {i.name for i in plugin_manager().plugin_infos()}
    own = plugin_module(third_party, autotune_configure=hookimpl(
        lambda: {"level": default(5, "the test's own copy")}))
    plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[own])).plan
    assert plan.get(third_party, "level") == 5


def test_disabling_a_third_party_plugin_never_imports_it(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "boom-plugin", "boom_plugin",
                              "raise RuntimeError('imported!')\n", "boom")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning, match="plugin 'boom' failed to load.*imported!"):
        assert "boom" not in PluginManager().names()
    manager = PluginManager(disable=["boom"])
    assert manager.not_loaded_reasons()["boom"] == "disabled by disable=[...]"


def test_third_party_cannot_take_a_builtin_name(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "impostor", "impostor_plugin", FAKE_PLUGIN, "compile")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning, match="'compile' from impostor 1.0 is already taken by builtin"):
        plan = make_plan(hardware=cpu_laptop(), manager=PluginManager()).plan
    assert plan.get("compile", "mode") == "off"


# -- disabling ---------------------------------------------------------------------


def test_disable_argument_blocks_before_loading():
    planned = make_plan(hardware=cpu_laptop(), disable=["compile"])
    assert "compile" not in planned.plan
    assert planned.plan.disabled["compile"] == "disabled by disable=[...]"
    assert planned.manager.registry.is_blocked("compile")


def test_disable_env_variable(monkeypatch):
    monkeypatch.setenv("AUTOTUNE_DISABLE", "compile, threads")
    plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager()).plan
    assert "compile" not in plan and "threads" not in plan
    assert plan.disabled["threads"] == "disabled by $AUTOTUNE_DISABLE"


def test_unknown_plugin_name_lists_known_ones():
    with pytest.raises(PluginError, match="unknown plugin name.*compil; known plugins: "
                                          "accumulation, channels_last"):
        plugin_manager(disable=["compil"]).load()


def test_profile_enabled_false_loads_but_proposes_nothing(tmp_path):
    (tmp_path / "quiet.yaml").write_text(
        "name: quiet\nplugins:\n  compile: {enabled: false}\n  recorder: {enabled: false}\n")
    recorder = HookRecorder()
    planned = make_plan(hardware=cpu_laptop(), profile="quiet", profile_dirs=[tmp_path],
                        manager=plugin_manager(plugins=[recorder]))
    assert "compile" not in planned.plan
    assert planned.plan.disabled["compile"] == "disabled by profile quiet"
    assert planned.plan.disabled["recorder"] == "disabled by profile quiet"
    assert "compile" in planned.manager.names()  # loaded, not blocked
    assert recorder.calls_of("autotune_configure") == []
    assert recorder.hooks_called() == ["autotune_detect"]


# -- failure containment -------------------------------------------------------------


def _raising_configure(context):
    raise RuntimeError("boom in configure")


def test_plugin_that_raises_is_named_and_left_out():
    bad = plugin_module("flaky", autotune_configure=hookimpl(_raising_configure))
    with pytest.warns(PluginWarning, match="plugin 'flaky' failed in autotune_configure"):
        plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[bad])).plan
    assert "flaky" not in plan
    assert plan.disabled["flaky"] == "failed in autotune_configure: RuntimeError: boom in configure"
    assert set(plan.plugins()) == set(BUILTIN_PLUGINS) - {"daemon"}  # no daemon listens


def test_strict_mode_reraises():
    bad = plugin_module("flaky", autotune_configure=hookimpl(_raising_configure))
    with pytest.raises(PluginError, match="flaky") as info:
        make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[bad], strict=True))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_misspelled_hook_is_reported_and_plugin_dropped():
    typo = plugin_module("typo", autotune_configur=hookimpl(lambda context: {}))
    with pytest.warns(PluginWarning, match="plugin 'typo' failed validation.*autotune_configur"):
        manager = plugin_manager(plugins=[typo])
        assert "typo" not in manager.names()
    with pytest.raises(PluginError, match="typo"):
        plugin_manager(plugins=[typo], strict=True).load()


def test_multi_line_plugin_errors_become_one_line():
    # pluggy's PluginValidationError for an argument the hookspec lacks has three lines.
    def configure(context, bogus):
        return {}

    argy = plugin_module("argy", autotune_configure=hookimpl(configure))
    with pytest.warns(PluginWarning) as caught:
        manager = plugin_manager(plugins=[argy])
        assert "argy" not in manager.names()
    assert [str(w.message) for w in caught] == [
        "plugin 'argy' failed to load and was left out: PluginValidationError: Plugin 'argy' "
        "for hook 'autotune_configure'; hookimpl definition: configure(context, bogus); "
        "Argument(s) {'bogus'} are declared in the hookimpl but can not be found in the hookspec"]
    assert "\n" not in manager.not_loaded_reasons()["argy"]

    def configure_long(context):
        raise RuntimeError("first line\n\n   second    line\n" + "x" * 2000)

    long = plugin_module("long", autotune_configure=hookimpl(configure_long))
    with pytest.warns(PluginWarning) as caught:
        plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[long])).plan
    message = str(caught[0].message)
    assert message.startswith("plugin 'long' failed in autotune_configure and was left out: "
                              "RuntimeError: first line; second line; xxx")
    assert message.endswith("x...") and "\n" not in message and len(message) < 600
    assert plan.disabled["long"].startswith("failed in autotune_configure: RuntimeError: "
                                            "first line; second line; xxx")
    with pytest.raises(PluginError) as info:
        plugin_manager(plugins=[argy], strict=True).load()
    assert "\n" not in str(info.value) and "; hookimpl definition:" in str(info.value)

    def configure_picky(context):
        raise ProfileError("bad option\nHINT: use 2")

    picky = plugin_module("picky", autotune_configure=hookimpl(configure_picky))
    with pytest.raises(ProfileError) as info:
        make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[picky]))
    assert str(info.value).endswith("key 'plugins.picky': bad option; HINT: use 2")


def test_hook_without_marker_is_reported():
    plain = plugin_module("plain", autotune_configure=lambda context: {"x": default(1, "y")})
    with pytest.warns(PluginWarning, match="autotune_configure\\(\\) without @autotune.hookimpl"):
        plugin_manager(plugins=[plain]).load()


@pytest.mark.parametrize("result, message", [
    ({"dims": default((1, 2), "a tuple")}, "plain JSON data"),
    (["not", "a", "mapping"], "must return a mapping"),
])
def test_malformed_configure_result_is_a_plugin_failure(result, message):
    recorder = HookRecorder(returns={"autotune_configure": result})
    with pytest.warns(PluginWarning, match=message):
        plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[recorder])).plan
    assert "recorder" not in plan and "recorder" in plan.disabled


def test_plugin_object_needs_a_name():
    with pytest.raises(PluginError, match="has no NAME"):
        plugin_manager(plugins=[object()]).load()


# -- every hook, through the facade ----------------------------------------------------


def test_autotune_detect_adds_facts_without_changing_the_fingerprint():
    recorder = HookRecorder(returns={"autotune_detect": {"cluster": "dev", "nodes": 1}})
    manager = plugin_manager(plugins=[recorder])
    hardware = rtx5080_7950x()
    enriched = manager.detect(hardware)
    assert enriched.extra == {"recorder": {"cluster": "dev", "nodes": 1}}
    assert enriched.fingerprint == hardware.fingerprint
    assert recorder.calls_of("autotune_detect")[0].kwargs["hardware"] is hardware


def test_autotune_configure_sees_the_context():
    recorder = HookRecorder(returns={"autotune_configure": {"level": default(2, "why")}})
    planned = make_plan(hardware=rtx5080_7950x(), manager=plugin_manager(plugins=[recorder]))
    context = recorder.calls_of("autotune_configure")[0].kwargs["context"]
    assert context.profile.name == "rtx5080_7950x" and context.hardware.has_cuda
    assert planned.plan.setting("recorder", "level").reason == "why"


def test_autotune_candidates_are_checked_against_proposed_keys():
    recorder = HookRecorder(returns={"autotune_configure": {"level": default(2, "why")},
                                     "autotune_candidates": [{"level": 4}, {"level": 8}]})
    planned = make_plan(hardware=cpu_laptop(), manager=plugin_manager(plugins=[recorder]))
    assert planned.manager.candidates(planned.context, planned.plan)["recorder"] == [
        {"level": 4}, {"level": 8}]
    recorder.returns = {**recorder.returns, "autotune_candidates": [{"levle": 4}]}
    with pytest.warns(PluginWarning, match="did not propose"):
        assert "recorder" not in planned.manager.candidates(planned.context, planned.plan)


class Scale:
    """Multiplies the model's output: a visible, checkable transformation."""

    NAME = "scale"

    def __init__(self, factor: float) -> None:
        self.factor = factor

    @hookimpl
    def autotune_configure(self, context):
        return {"factor": default(self.factor, "test")}

    @hookimpl
    def autotune_apply_model(self, model, plan):
        return torch.nn.Sequential(model, _Mul(plan.get(self.NAME, "factor")))

    @hookimpl
    def autotune_apply_loader(self, loader, plan, context):
        return DataLoader(loader.dataset, batch_size=loader.batch_size * 2)


class _Mul(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _model_and_loader():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    loader = DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)), batch_size=4)
    return model, loader


def test_apply_model_and_loader_chain_through_plugins():
    model, loader = _model_and_loader()
    recorder = HookRecorder(returns={"autotune_configure": {"on": default(True, "t")}})
    planned = make_plan(hardware=cpu_laptop(), manager=plugin_manager(
        plugins=[Scale(3.0), recorder], disable=BUILTIN_PLUGINS))
    manager, plan, context = planned.manager, planned.plan, planned.context
    x = torch.randn(2, 3)
    new_model = manager.apply_model(model, plan, context)
    assert torch.allclose(new_model(x), model(x) * 3.0)
    # the recorder (registered after Scale) received Scale's result
    assert recorder.calls_of("autotune_apply_model")[0].kwargs["model"] is new_model
    new_loader = manager.apply_loader(loader, plan, context)
    assert new_loader.batch_size == 8 and len(list(new_loader)) == 2
    assert recorder.calls_of("autotune_apply_loader")[0].kwargs["loader"] is new_loader


def test_disabled_plugin_is_not_applied():
    model, loader = _model_and_loader()
    planned = make_plan(hardware=cpu_laptop(), manager=plugin_manager(
        plugins=[Scale(3.0)], disable=["scale", *BUILTIN_PLUGINS]))
    assert planned.manager.apply_model(model, planned.plan, planned.context) is model


def test_autotune_setup_engine_gets_engine_and_plan():
    recorder = HookRecorder(returns={"autotune_configure": {"on": default(True, "t")}})
    # built-ins left out: their setup_engine needs a real Engine
    planned = make_plan(hardware=cpu_laptop(), manager=plugin_manager(
        plugins=[recorder], disable=BUILTIN_PLUGINS))
    from torch import nn

    from autotune.engine.engine import Engine

    model = nn.Linear(2, 2)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss,
                    planned.plan, manager=planned.manager, progress=False)
    call = recorder.calls_of("autotune_setup_engine")[0]
    assert call.kwargs["engine"] is engine and call.kwargs["plan"] is planned.plan
    engine.close()


def test_a_failure_in_apply_is_contained():
    def broken(model):
        raise ValueError("cannot transform")

    bad = plugin_module("bad", autotune_configure=hookimpl(lambda: {"x": default(1, "t")}),
                        autotune_apply_model=hookimpl(broken))
    model, _ = _model_and_loader()
    planned = make_plan(hardware=cpu_laptop(), manager=plugin_manager(
        plugins=[bad], disable=BUILTIN_PLUGINS))
    with pytest.warns(PluginWarning, match="'bad' failed in autotune_apply_model"):
        assert planned.manager.apply_model(model, planned.plan, planned.context) is model


def test_context_options_for_strip_reserved_keys():
    profile = load_profiles()["rtx5080_7950x"]
    context = Context(hardware=rtx5080_7950x(), profile=profile)
    assert context.options_for("dataloader")["num_workers"] == [10, 18]
    assert "enabled" not in context.options_for("compile")


def test_a_plugin_not_autoloaded_does_not_hold_its_name(tmp_path, monkeypatch) -> None:
    """With autoload off, the same plugin passed as an object (a test, a
    notebook) takes the name of the installed one that was not loaded."""
    from importlib import metadata

    (tmp_path / "installed_knob.py").write_text(
        "from autotune import hookimpl\nNAME = 'knob'\n"
        "@hookimpl\ndef autotune_configure(context):\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = metadata.EntryPoint("knob", "installed_knob", "autotune")
    monkeypatch.setattr(registry, "entry_points", lambda: ({}, {"knob": installed}))
    import installed_knob

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "already taken" warning
        manager = PluginManager(autoload=False, plugins=[installed_knob]).load()
    info = next(i for i in manager.plugin_infos() if i.name == "knob")
    assert (info.origin, info.status) == ("object", "loaded")
    not_loaded = PluginManager(autoload=False).load()
    assert next(i for i in not_loaded.plugin_infos() if i.name == "knob").status == "not autoloaded"


# -- the contract: spec modules, generic calls, the order of the built-ins -----------------


def test_every_spec_module_is_part_of_the_contract():
    # The manager registers each module of autotune.plugin.specs: a phase is
    # a module, and a plugin may implement any hook of any of them.
    names = {name for module in specs.MODULES for name in vars(module)
             if hasattr(getattr(module, name), "autotune_spec")}
    assert names == set(specs.HOOK_NAMES)
    hooks = plugin_manager().load().registry
    assert all(hasattr(hooks._pm.hook, name) for name in names)
    engine_events = set(specs.step_hook_names())
    assert {"autotune_prepare_inputs", "autotune_epoch_end", "autotune_live_adapter",
            "autotune_describe_engine"} <= engine_events
    assert not engine_events & {"autotune_configure", "autotune_apply_model",
                                "autotune_resource_share"}


def test_a_new_hook_is_its_spec_and_its_caller(monkeypatch):
    """A hook added to the contract needs no new manager code: its spec
    names its check, the caller uses a generic call."""
    from autotune.plugin import answers
    from autotune.plugin.markers import checked_by, hookspec

    phase = types.ModuleType("autotune.plugin.specs.extra")

    @hookspec
    @checked_by(answers.micro_batches)
    def autotune_extra(plan):
        """:param plan: the plan. :return: an integer >= 1, or None."""

    autotune_extra.__module__ = phase.__name__
    phase.autotune_extra = autotune_extra
    monkeypatch.setattr(specs, "MODULES", (*specs.MODULES, phase))
    monkeypatch.setattr(specs, "SPECS", {**specs.SPECS, "autotune_extra": autotune_extra})
    good = plugin_module("good", autotune_extra=hookimpl(lambda plan: 3))
    bad = plugin_module("bad", autotune_extra=hookimpl(lambda: "three"))
    manager = plugin_manager(plugins=[good, bad], disable=BUILTIN_PLUGINS)
    with pytest.warns(PluginWarning, match="'bad' failed in autotune_extra.*integer >= 1"):
        assert manager.each("autotune_extra", {"plan": None}) == {"good": 3}
    assert manager.first("autotune_extra", {"plan": None}) == ("good", 3)


def test_builtins_order_themselves_on_the_hooks_where_order_matters():
    # Registration order is the order of the names; each plugin's own
    # markers put threads first and the fp16 scaler before the others.
    assert BUILTIN_PLUGINS == tuple(sorted(BUILTIN_PLUGINS))
    manager = plugin_manager()
    assert manager.names() == list(BUILTIN_PLUGINS)
    plan = make_plan(hardware=cpu_laptop(), manager=manager).plan
    assert plan.plugins()[0] == "threads"
    assert manager.implementers("autotune_setup_engine")[0] == "threads"
    assert manager.implementers("autotune_transform_loss") == ["mixed_precision", "accumulation"]
    assert manager.implementers("autotune_before_optimizer_step") == [
        "mixed_precision", "accumulation", "clipping"]
    assert manager.implementers("autotune_apply_model") == ["channels_last", "compile"]
