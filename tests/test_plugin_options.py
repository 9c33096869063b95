"""A plugin's options are defined once, in its ``Options`` dataclass: the
check of a profile's section, the check of values built in code and the
documentation are all made from it, the same way for built-in and
third-party plugins (``autotune_options``)."""

from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from autotune import make_plan
from autotune.errors import ProfileError
from autotune.plugin.manager import PluginWarning
from autotune.plugin.options import (PluginOptions, option, option_schemas, option_specs,
                                     options_answer, options_docs, options_table, parse_options)
from autotune.plugins import compile as compile_plugin
from autotune.profile import load_file, load_profiles, profile_schema, schema_path
from autotune.sdk import Setting, default, from_profile, hookimpl
from autotune.testing import cpu_laptop, plugin_manager

REPO = Path(__file__).resolve().parents[1]
BEGIN = ("<!-- begin: generated from each plugin's Options "
         "(autotune.plugin.options.options_docs) -->")
END = "<!-- end: generated -->"


def write_profile(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def load_error(path: Path, options) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_file(path, options=options)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return info.value


def declared(manager) -> dict[str, type]:
    """``{plugin: its Options}``: each loaded plugin's ``autotune_options`` answer."""
    return manager.each("autotune_options", {})


def builtin_options() -> dict[str, type]:
    return declared(plugin_manager())


# -- one definition ----------------------------------------------------------------


def test_every_builtin_declares_its_options_dataclass():
    classes = builtin_options()
    assert {"threads", "mixed_precision", "clipping", "dataloader", "compile"} <= set(classes)
    for name, cls in classes.items():
        module = __import__(f"autotune.plugins.{name}", fromlist=["Options"])
        assert cls is module.Options and issubclass(cls, PluginOptions), name
        for spec in option_specs(cls):
            assert spec.help, f"{name}.{spec.name} has no help"


def test_each_section_is_closed_to_the_plugins_own_fields():
    schema = profile_schema(option_schemas(builtin_options()))
    for name, cls in builtin_options().items():
        section = schema["properties"]["plugins"]["properties"][name]
        assert set(section["properties"]) == {f.name for f in dataclasses.fields(cls)} | {"enabled"}
        assert section["additionalProperties"] is False


def test_the_schema_file_holds_the_envelope_only():
    """No plugin's name or option is written in the schema file: each is its
    plugin's, and the file checks only ``enabled`` in any section."""
    text = schema_path().read_text()
    for name, cls in builtin_options().items():
        assert f'"{name}"' not in text, name
        for f in dataclasses.fields(cls):
            assert f'"{f.name}"' not in text, f"{name}.{f.name}"
    plugins = profile_schema()["properties"]["plugins"]
    assert "properties" not in plugins
    assert plugins["additionalProperties"]["properties"]["enabled"] == {
        "type": "boolean", "description": "false: the plugin loads but proposes nothing"}


def test_without_the_plugins_sections_are_free_form_but_enabled_is_checked(tmp_path):
    path = write_profile(tmp_path, "loose",
                         "name: loose\nplugins:\n  dataloader: {num_wrkers: 4}\n")
    assert load_file(path).plugins["dataloader"] == {"num_wrkers": 4}
    bad = write_profile(tmp_path, "maybe", "name: maybe\nplugins:\n  someone: {enabled: maybe}\n")
    error = load_error(bad, None)
    assert error.key == "plugins.someone.enabled" and "is not of type 'boolean'" in str(error)


@pytest.mark.parametrize("text, key, reason", [
    ("clipping: {max_norm: 0}", "plugins.clipping.max_norm",
     "less than or equal to the minimum of 0"),
    ("clipping: {max_norm: null, norm_type: null}", "plugins.clipping.norm_type",
     "None is not of type 'number'"),
    ("threads: {intra_op: 0}", "plugins.threads.intra_op", "0 is less than the minimum of 1"),
    ("threads: {intra_op: null}", "plugins.threads.intra_op", "None is not of type 'integer'"),
    ("dataloader: {num_workers: [1, 2, 3]}", "plugins.dataloader.num_workers",
     "[1, 2, 3] is too long"),
    ("dataloader: {prefetch_factor: many}", "plugins.dataloader.prefetch_factor",
     "expected an integer >= 1 or a list of 2 (an integer >= 1)"),
    ("compile: {mode: fastest}", "plugins.compile.mode", "'fastest' is not one of ['off',"),
    ("daemon: {wait_s: -1}", "plugins.daemon.wait_s", "-1 is less than the minimum of 0"),
    ("channels_last: {fast: true}", "plugins.channels_last.fast", "allowed here: enabled"),
])
def test_a_bad_builtin_option_names_file_key_and_reason(tmp_path, text, key, reason):
    path = write_profile(tmp_path, "bad", f"name: bad\nplugins:\n  {text}\n")
    error = load_error(path, option_schemas(builtin_options()))
    assert error.key == key and reason in str(error), str(error)


def test_values_built_in_code_are_checked_as_a_profile_is():
    clipping = __import__("autotune.plugins.clipping", fromlist=["Options"])
    with pytest.raises(ValueError, match="max_norm must be > 0 or null, got -1"):
        clipping.Options(max_norm=-1)
    with pytest.raises(ValueError, match=r"mode='fastest' is not one of off, default"):
        compile_plugin.Options(mode="fastest")
    assert clipping.Options(max_norm=1.0).max_norm == 1.0


def test_an_answer_that_is_not_a_dataclass_is_refused():
    asked = types.SimpleNamespace(hook="autotune_options", plugin="odd")
    with pytest.raises(TypeError, match="autotune_options must return a dataclass"):
        options_answer({"max_norm": float}, asked)
    assert options_answer(None, asked) is None
    assert options_answer(compile_plugin.Options, asked) is compile_plugin.Options


# -- the documentation -------------------------------------------------------------


def test_docs_list_what_the_builtins_options_say():
    text = (REPO / "docs" / "profiles.md").read_text()
    committed = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()
    expected = options_docs(builtin_options()).strip()
    assert committed == expected, ("docs/profiles.md's plugin options are stale; replace the "
                                   f"generated block with:\n{expected}")


def test_a_table_row_says_type_bounds_default_and_help():
    table = options_table(builtin_options()["dataloader"])
    assert ("| `num_workers` | integer >= 0, or a list of 2 of them | — | worker processes; an "
            "int or [min, max] for the rule to pick within |") in table
    clipping = options_table(builtin_options()["clipping"])
    assert "| `max_norm` | number > 0, or `null` | `null` |" in clipping


# -- acceptance: a new option touches its plugin's file only ---------------------------


@dataclass(frozen=True)
class FasterCompile(compile_plugin.Options):
    """compile's Options with one speed knob more: all the change there is."""

    dynamic: bool | None = option(None, "torch.compile(dynamic=...): shapes that vary "
                                  "without a recompile")


def test_an_option_added_to_a_builtin_is_checked_and_documented(tmp_path, monkeypatch):
    """The one edit a new option needs, made in the plugin's module (its
    ``Options``): the profile check, the plugin's own parse and the docs
    follow, with the schema file and every other module as they are."""
    schema_before = schema_path().read_text()
    monkeypatch.setattr(compile_plugin, "Options", FasterCompile)
    options = option_schemas(declared(plugin_manager()))

    bad = write_profile(tmp_path / "bad", "generic_cpu",
                        "name: generic_cpu\nplugins:\n  compile: {dynamic: sometimes}\n")
    error = load_error(bad, options)
    assert error.key == "plugins.compile.dynamic"
    assert "'sometimes' is not of type 'boolean'" in str(error)
    with pytest.raises(ProfileError, match=r"generic_cpu.yaml: key 'plugins.compile.dynamic'"):
        make_plan(hardware=cpu_laptop(), profile_dirs=[tmp_path / "bad"],
                  manager=plugin_manager())

    good = write_profile(tmp_path / "good", "generic_cpu",
                         "name: generic_cpu\nplugins:\n  compile: {dynamic: true}\n")
    assert load_file(good, options=options).options_for("compile") == {"dynamic": True}
    assert parse_options("compile", compile_plugin.Options, {"dynamic": True}).dynamic is True
    make_plan(hardware=cpu_laptop(), profile_dirs=[tmp_path / "good"], manager=plugin_manager())

    table = options_docs(declared(plugin_manager()))
    assert re.search(r"\| `dynamic` \| true/false \| — \| torch.compile\(dynamic=\.\.\.\)", table)
    assert schema_path().read_text() == schema_before


# -- a third-party plugin: the same path --------------------------------------------


@dataclass(frozen=True)
class CacheOptions(PluginOptions):
    size_mb: int = option(64, "cache size in MiB", minimum=1)
    policy: str = option("lru", "what to evict first", choices=("lru", "fifo"))


def _cache_plugin() -> types.ModuleType:
    plugin = types.ModuleType("autotune_cache")
    plugin.NAME = "cache"

    @hookimpl
    def autotune_options() -> type:
        return CacheOptions

    @hookimpl
    def autotune_configure(context) -> dict[str, Setting]:
        given = context.options_for("cache")
        options = parse_options("cache", CacheOptions, given)
        return {"size_mb": from_profile(options.size_mb, "profile") if "size_mb" in given
                else default(options.size_mb, "the default")}

    plugin.autotune_options = autotune_options
    plugin.autotune_configure = autotune_configure
    return plugin


def test_a_third_party_plugins_options_are_checked_like_a_builtins(tmp_path):
    manager = plugin_manager(plugins=[_cache_plugin()])
    options = option_schemas(declared(manager))
    assert "cache" in options and "compile" in options
    typo = write_profile(tmp_path, "typo", "name: typo\nplugins:\n  cache: {size: 3}\n")
    assert str(load_error(typo, options)).endswith(
        "typo.yaml: key 'plugins.cache.size': unknown key; allowed here: enabled, policy, size_mb")
    small = write_profile(tmp_path, "small", "name: small\nplugins:\n  cache: {size_mb: 0}\n")
    assert "key 'plugins.cache.size_mb': 0 is less than the minimum of 1" in str(
        load_error(small, options))
    policy = write_profile(tmp_path, "policy", "name: policy\nplugins:\n  cache: {policy: mru}\n")
    assert "'mru' is not one of ['lru', 'fifo']" in str(load_error(policy, options))

    profile_dir = tmp_path / "user"
    write_profile(profile_dir, "generic_cpu",
                  "name: generic_cpu\nplugins:\n  cache: {size_mb: 8}\n")
    plan = make_plan(hardware=cpu_laptop(), profile_dirs=[profile_dir], manager=manager).plan
    assert plan.get("cache", "size_mb") == 8
    assert "| `policy` | one of `lru`, `fifo` | `lru` | what to evict first |" in options_docs(
        {"cache": CacheOptions})


def test_a_malformed_answer_leaves_the_plugin_out_and_none_leaves_its_section_free(tmp_path):
    odd = types.ModuleType("odd")
    odd.NAME = "odd"
    odd.autotune_options = hookimpl(lambda: {"size": int})
    free = types.ModuleType("free")
    free.NAME = "free"
    free.autotune_options = hookimpl(lambda: None)
    manager = plugin_manager(plugins=[odd, free])
    with pytest.warns(PluginWarning, match="plugin 'odd' failed in autotune_options"):
        answers = declared(manager)
    assert "odd" not in answers and "free" not in answers and "compile" in answers
    path = write_profile(tmp_path, "any", "name: any\nplugins:\n  free: {whatever: [1]}\n")
    assert load_file(path, options=option_schemas(answers)).plugins["free"] == {"whatever": [1]}


def test_loading_the_profiles_for_the_plugins_refuses_what_one_does_not_accept(tmp_path):
    write_profile(tmp_path, "generic_cpu",
                  "name: generic_cpu\nplugins:\n  dataloader: {num_wrkers: 4}\n")
    assert "generic_cpu" in load_profiles([tmp_path])  # no plugins named: free-form
    with pytest.raises(ProfileError, match=r"key 'plugins.dataloader.num_wrkers': unknown key; "
                                           r"allowed here: enabled, num_workers"):
        load_profiles([tmp_path], options=option_schemas(builtin_options()))


# -- a speed knob added to a built-in: that plugin's module only ---------------------


def test_a_speed_knob_added_to_a_builtin_is_planned_declared_checked_and_searched(monkeypatch):
    """What adding ``compile.dynamic`` takes: three hook answers of the
    compile module. The plan shows it, the knob declares it speed-only, a
    bad override of it is refused, and the search offers it -- with no other
    module changed."""
    from autotune.errors import PlanError
    from autotune.sdk import Effect, Knob, Workload, true_or_false

    knobs_before = compile_plugin.autotune_knobs
    configure_before = compile_plugin.autotune_configure
    candidates_before = compile_plugin.autotune_candidates

    @hookimpl
    def autotune_knobs():
        return {**knobs_before(), "dynamic": Knob(off=False, check=true_or_false())}

    @hookimpl
    def autotune_configure(context):
        return {**configure_before(context), "dynamic": default(False, "static shapes")}

    @hookimpl
    def autotune_candidates(context, plan):
        return [*candidates_before(context, plan), {"mode": "default", "dynamic": True}]

    for hook in (autotune_knobs, autotune_configure, autotune_candidates):
        monkeypatch.setattr(compile_plugin, hook.__name__, hook)
    from torch import nn

    workload = Workload.inspect(nn.Linear(2, 2))
    planned = make_plan(hardware=cpu_laptop(), workload=workload, manager=plugin_manager())
    assert planned.plan.setting("compile", "dynamic").value is False
    knob = planned.manager.knobs(planned.context, planned.plan)["compile"]["dynamic"]
    assert knob.effect is Effect.SPEED and not knob.needs_asking
    offered = planned.manager.candidates(planned.context, planned.plan)["compile"]
    assert {"mode": "default", "dynamic": True} in offered
    with pytest.raises(PlanError, match=r"compile\.dynamic"):
        make_plan(hardware=cpu_laptop(), workload=workload, manager=plugin_manager(),
                  overrides={"compile": {"dynamic": "sometimes"}})
