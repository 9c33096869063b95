"""Profiles: loading, schema errors, extends, matching and user overrides."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from autotune import make_plan
from autotune.errors import ProfileError
from autotune.plugin.options import option_schemas
from autotune.profile import builtin_profile_dir, explain, load_file, load_profiles, recommend
from autotune.testing import (a100_box, cpu_laptop, fake_gpu, fake_hardware, h100_box,
                              plugin_manager, rtx4090_box, rtx5080_7950x)

BUILTINS = {"generic_cpu", "generic_cuda", "rtx5080_7950x", "h100", "a100", "rtx4090"}


def write_profile(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


# -- built-ins ---------------------------------------------------------------------


def test_builtin_profiles_load_and_describe_themselves():
    profiles = load_profiles()
    assert BUILTINS <= set(profiles)
    for profile in profiles.values():
        assert profile.origin == "builtin"
        assert profile.description, profile.name
        assert Path(profile.path).parent == builtin_profile_dir()


@pytest.mark.parametrize("make, expected", [
    (rtx5080_7950x, "rtx5080_7950x"),
    (h100_box, "h100"),
    (a100_box, "a100"),
    (rtx4090_box, "rtx4090"),
    (cpu_laptop, "generic_cpu"),
])
def test_each_machine_matches_its_profile(make, expected):
    rec = recommend(make(), load_profiles().values())
    assert rec.profile.name == expected
    assert rec.why


def test_rtx5080_7950x_wins_by_specificity_and_says_why():
    rec = recommend(rtx5080_7950x(), load_profiles().values())
    assert "gpu_name" in rec.why and "cpu_brand" in rec.why
    # generic_cuda and generic_cpu match too, but have fewer rules
    matched = [r.profile.name for r in rec.results if r.matched]
    assert matched == ["rtx5080_7950x", "generic_cuda", "generic_cpu"]
    assert "most specific of 3 matching profiles" in rec.why
    # extends: cuda: true and pin_memory come from generic_cuda
    profile = rec.profile
    assert profile.match["cuda"] is True
    assert profile.plugins["dataloader"]["pin_memory"] is True
    assert profile.plugins["dataloader"]["num_workers"] == [10, 18]
    assert profile.plugins["clipping"]["max_norm"] == 1.0


def test_rejected_profiles_name_the_failing_rule():
    rec = recommend(cpu_laptop(), load_profiles().values())
    h100 = rec.result_for("h100")
    assert h100 is not None and not h100.matched
    assert "gpu_name: wanted 'H100', have []" in h100.reason
    assert {r.profile.name for r in rec.rejected()} == BUILTINS - {"generic_cpu"}


def test_rtx5080_with_another_cpu_falls_back_to_generic_cuda():
    hw = fake_hardware(gpus=[fake_gpu("NVIDIA GeForce RTX 5080", 16, (12, 0))])
    rec = recommend(hw, load_profiles().values())
    assert rec.profile.name == "generic_cuda"
    assert "cpu_brand" in rec.result_for("rtx5080_7950x").reason


def test_gpu_that_torch_cannot_use_gets_the_cpu_profile():
    hw = fake_hardware(gpus=[fake_gpu("NVIDIA H100 80GB HBM3", 80, (9, 0))], cuda_available=False)
    assert recommend(hw, load_profiles().values()).profile.name == "generic_cpu"


def test_forced_profile_says_it_was_chosen_by_name():
    planned = make_plan(hardware=cpu_laptop(), profile="h100", manager=plugin_manager())
    assert planned.plan.profile == "h100"
    assert "chosen by name" in planned.recommendation.why
    assert "does not match" in planned.recommendation.why


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(ProfileError, match="known profiles: a100, generic_cpu"):
        make_plan(hardware=cpu_laptop(), profile="h200", manager=plugin_manager())


def test_no_fallback_is_an_error():
    profiles = load_profiles()
    with pytest.raises(ProfileError, match="no profile matches"):
        recommend(cpu_laptop(), [profiles["h100"]])


def test_range_rules(tmp_path):
    write_profile(tmp_path, "big_gpu", "name: big_gpu\nmatch:\n  gpu_memory_gb: {min: 40}\n"
                  "  compute_capability: {min: 8.0}\n  gpu_count: 1\n")
    profiles = load_profiles([tmp_path])
    assert explain(profiles["big_gpu"], h100_box()).matched
    verdict = explain(profiles["big_gpu"], rtx5080_7950x())
    assert not verdict.matched and "gpu_memory_gb" in verdict.reason
    assert "compute_capability" not in verdict.reason  # sm_120 >= 8.0 holds


# -- user profiles -----------------------------------------------------------------


def test_user_profile_overrides_builtin_of_same_name(tmp_path):
    write_profile(tmp_path, "generic_cpu", "name: generic_cpu\ndescription: mine\n"
                  "plugins:\n  dataloader: {num_workers: 1}\n")
    profiles = load_profiles([tmp_path])
    assert profiles["generic_cpu"].origin == "user"
    assert profiles["generic_cpu"].path == str(tmp_path / "generic_cpu.yaml")
    plan = make_plan(hardware=cpu_laptop(), profile_dirs=[tmp_path], manager=plugin_manager()).plan
    assert plan.get("dataloader", "num_workers") == 1
    assert plan.setting("dataloader", "num_workers").source.value == "profile"


def test_profile_path_env_var_is_searched(tmp_path, monkeypatch):
    write_profile(tmp_path, "generic_cpu", "name: generic_cpu\nplugins:\n"
                  "  dataloader: {num_workers: 3}\n")
    monkeypatch.setenv("AUTOTUNE_PROFILE_PATH", str(tmp_path))
    plan = make_plan(hardware=cpu_laptop(), manager=plugin_manager()).plan
    assert plan.get("dataloader", "num_workers") == 3


def test_profile_dir_flag_beats_env_var(tmp_path, monkeypatch):
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    write_profile(env_dir, "generic_cpu", "name: generic_cpu\ndescription: from env\n")
    write_profile(flag_dir, "generic_cpu", "name: generic_cpu\ndescription: from flag\n")
    monkeypatch.setenv("AUTOTUNE_PROFILE_PATH", str(env_dir))
    assert load_profiles([flag_dir])["generic_cpu"].description == "from flag"


def test_overriding_a_parent_changes_its_children(tmp_path):
    write_profile(tmp_path, "generic_cuda", "name: generic_cuda\nextends: generic_cpu\n"
                  "match: {cuda: true}\nplugins:\n  clipping: {max_norm: 0.5}\n")
    rtx4090 = load_profiles([tmp_path])["rtx4090"]
    assert rtx4090.plugins["clipping"]["max_norm"] == 0.5
    assert "pin_memory" not in rtx4090.plugins["dataloader"]  # the user's parent has none


def test_more_specific_user_profile_wins(tmp_path):
    write_profile(tmp_path, "my_laptop", "name: my_laptop\nextends: generic_cpu\n"
                  "match:\n  cpu_brand: i7-1165G7\n  cpu_flags: [avx512f]\n")
    rec = recommend(cpu_laptop(), load_profiles([tmp_path]).values())
    assert rec.profile.name == "my_laptop" and rec.profile.origin == "user"


def test_priority_breaks_ties(tmp_path):
    write_profile(tmp_path, "low", "name: low\nmatch: {arch: x86_64}\n")
    write_profile(tmp_path, "high", "name: high\npriority: 5\nmatch: {os: Linux}\n")
    assert recommend(cpu_laptop(), load_profiles([tmp_path]).values()).profile.name == "high"


def test_extends_several_parents_later_wins(tmp_path):
    write_profile(tmp_path, "a", "name: a\nplugins:\n  clipping: {max_norm: 2.0, norm_type: 1.0}\n")
    write_profile(tmp_path, "b", "name: b\nplugins:\n  clipping: {max_norm: 3.0}\n")
    write_profile(tmp_path, "c", "name: c\nextends: [a, b]\nmatch: {cuda: false}\n")
    c = load_profiles([tmp_path])["c"]
    assert c.plugins["clipping"] == {"max_norm": 3.0, "norm_type": 1.0}
    assert c.extends == ("a", "b")


def test_missing_profile_dir_flag_is_an_error(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles([tmp_path / "nope"])


def test_missing_env_dir_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AUTOTUNE_PROFILE_PATH", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="autotune.profile"):
        assert "generic_cpu" in load_profiles()
    assert "does not exist" in caplog.text


# -- malformed profiles: file, key and reason ------------------------------------------


BAD_PROFILES = {
    "invalid_yaml": ("name: invalid_yaml\nmatch:\n  cuda: [true\n", None, "invalid YAML at line 4"),
    "top_key": ("name: top_key\nmatches: {}\n", "matches", "unknown key; allowed here"),
    "bad_rule": ("name: bad_rule\nmatch:\n  gpu_nam: RTX\n", "match.gpu_nam", "unknown key"),
    "bad_option": ("name: bad_option\nplugins:\n  dataloader:\n    num_wrkers: 4\n",
                   "plugins.dataloader.num_wrkers", "allowed here: enabled, num_workers"),
    "wrong_type": ("name: wrong_type\nplugins:\n  dataloader:\n    num_workers: ten\n",
                   "plugins.dataloader.num_workers", "expected an integer >= 0"),
    "wrong_enabled": ("name: wrong_enabled\nplugins:\n  compile: {enabled: maybe}\n",
                      "plugins.compile.enabled", "is not of type 'boolean'"),
    "bad_range": ("name: bad_range\nmatch:\n  gpu_memory_gb: {min: big}\n",
                  "match.gpu_memory_gb.min", "is not of type 'number'"),
    "bad_enum": ("name: bad_enum\nplugins:\n  mixed_precision: {dtype: fp8}\n",
                 "plugins.mixed_precision.dtype", "is not one of"),
    "stem_differs": ("name: another_name\n", "name", "differs from the file name"),
    "code_tag": ("name: code_tag\ndescription: !!python/object/apply:os.system ['echo hi']\n",
                 None, "could not determine a constructor"),
    "not_mapping": ("- just\n- a list\n", None, "must be a mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_PROFILES))
def test_malformed_profile_names_file_key_and_reason(tmp_path, name):
    text, key, reason = BAD_PROFILES[name]
    path = write_profile(tmp_path, name, text)
    # The built-ins' sections are checked against their own Options, as
    # make_plan and the CLI load profiles: through the installed plugins.
    options = option_schemas(plugin_manager().each("autotune_options", {}))
    with pytest.raises(ProfileError) as info:
        load_file(path, options=options)
    message = str(info.value)
    assert str(path) in message
    assert info.value.file == str(path)
    if key:
        assert f"key '{key}'" in message and info.value.key == key
    assert reason in message
    assert "\n" not in message


def test_python_tag_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write_profile(tmp_path, "evil", f"name: evil\ndescription: !!python/object/apply:"
                         f"os.system ['touch {marker}']\n")
    with pytest.raises(ProfileError):
        load_file(path)
    assert not marker.exists()


def test_circular_extends(tmp_path):
    write_profile(tmp_path, "ping", "name: ping\nextends: pong\n")
    write_profile(tmp_path, "pong", "name: pong\nextends: ping\n")
    with pytest.raises(ProfileError, match=r"circular extends: ping -> pong -> ping") as info:
        load_profiles([tmp_path])
    assert info.value.key == "extends" and info.value.file.endswith(".yaml")


def test_unknown_extends(tmp_path):
    write_profile(tmp_path, "orphan", "name: orphan\nextends: generic_gpu\n")
    with pytest.raises(ProfileError, match="extends unknown profile 'generic_gpu'; known: a100"):
        load_profiles([tmp_path])


def test_bad_profile_in_a_user_dir_fails_the_whole_load(tmp_path):
    write_profile(tmp_path, "broken", "name: broken\nmatch: {cuda: sometimes}\n")
    with pytest.raises(ProfileError, match="broken.yaml: key 'match.cuda'"):
        make_plan(hardware=cpu_laptop(), profile_dirs=[tmp_path], manager=plugin_manager())
