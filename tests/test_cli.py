"""The command line: detect, profiles, plugins, plan; exit codes; --json,
--version and -v in either place."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

import autotune
from autotune import detect
from cli_helpers import run_error
from autotune.cli import build_parser, main, verbosity
from autotune.cli.output import table, warnings_as_lines
from autotune.machine.hardware import Hardware
from autotune.plugin.manager import PluginWarning
from autotune.plan.plan import Plan
from autotune.testing import BUILTIN_PLUGINS

BUILTIN_PROFILES = {"a100", "generic_cpu", "generic_cuda", "h100", "rtx4090", "rtx5080_7950x"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err




# -- detect ------------------------------------------------------------------------


def test_detect_shows_the_machine_and_the_profile(capsys):
    code, out, err = run(capsys, "detect")
    assert code == 0 and err == ""
    hw = detect()
    assert hw.cpu.brand in out
    assert (f"{hw.cpu.physical_cores} physical, {hw.cpu.logical_cores} logical, "
            f"{hw.cpu.usable_cores:g} usable") in out
    assert " ".join(hw.cpu.flags) in out
    assert "GiB total" in out and hw.torch_version in out
    if not hw.gpus:
        gpu_line = next(line for line in out.splitlines() if line.startswith("GPU"))
        assert "no GPU (" in gpu_line and "CPU-only build" in out
    profile_line = next(line for line in out.splitlines() if line.startswith("Profile"))
    assert ("generic_cuda" if hw.has_cuda else "generic_cpu") in profile_line
    assert "Why" in out and "Other profiles:" in out
    assert "h100" in out and "gpu_name: wanted 'H100'" in out


def test_detect_json_has_the_documented_keys(capsys):
    code, out, _ = run(capsys, "detect", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"version", "hardware", "profile", "profiles"}
    assert set(data["profile"]) == {"name", "origin", "path", "why"}
    assert {p["name"] for p in data["profiles"]} == BUILTIN_PROFILES
    assert set(data["profiles"][0]) == {"name", "matched", "rules", "reason"}
    hw = data["hardware"]
    assert {"cpu", "memory", "gpus", "os", "torch_version", "cuda_version", "cuda_available",
            "notes", "extra", "fingerprint"} <= set(hw)
    assert {"brand", "physical_cores", "logical_cores", "usable_cores", "flags",
            "has_bf16"} <= set(hw["cpu"])
    assert Hardware.from_dict(hw).fingerprint == detect().fingerprint


def test_detect_with_a_user_profile_dir(capsys, tmp_path):
    (tmp_path / "this_box.yaml").write_text(
        f"name: this_box\ndescription: mine\nmatch:\n  arch: {detect().cpu.arch}\n")
    code, out, _ = run(capsys, "detect", "--json", "--profile-dir", str(tmp_path))
    profile = json.loads(out)["profile"]
    assert (profile["name"], profile["origin"]) == ("this_box", "user")
    assert "arch" in profile["why"]


# -- profiles ----------------------------------------------------------------------


def test_profiles_lists_builtins(capsys):
    code, out, _ = run(capsys, "profiles")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ORIGIN", "EXTENDS", "RULES", "MATCHES", "DESCRIPTION"]
    assert {line.split()[0] for line in lines[1:]} == BUILTIN_PROFILES
    chosen = [line.split()[0] for line in lines[1:] if " chosen " in line]
    assert len(chosen) == 1


def test_profiles_show_merges_extends(capsys):
    code, out, _ = run(capsys, "profiles", "show", "rtx5080_7950x")
    assert code == 0
    assert "pin_memory: true" in out and "num_workers: [10, 18]" in out  # from generic_cuda
    code, out, _ = run(capsys, "profiles", "--json", "show", "h100")
    data = json.loads(out)
    assert data["name"] == "h100" and data["plugins"]["compile"] == {"mode": "reduce-overhead"}
    assert set(data["this_machine"]) == {"matched", "chosen", "reason"}


def test_profiles_show_unknown_name(capsys):
    assert "unknown profile 'h200'; known profiles: a100" in run_error(capsys, "profiles", "show",
                                                                      "h200")


def test_profiles_json(capsys):
    data = json.loads(run(capsys, "profiles", "--json")[1])
    assert {p["name"] for p in data["profiles"]} == BUILTIN_PROFILES
    assert sum(p["chosen"] for p in data["profiles"]) == 1


# -- plugins -----------------------------------------------------------------------


def test_plugins_lists_every_builtin(capsys):
    code, out, _ = run(capsys, "plugins", "--disable", "compile")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(BUILTIN_PLUGINS) <= set(rows)
    assert "blocked" in rows["compile"] and "disabled by --disable" in rows["compile"]
    assert "enabled" in rows["dataloader"] and "configure" in rows["dataloader"]


def test_plugins_json(capsys):
    data = json.loads(run(capsys, "plugins", "--json")[1])
    rows = {r["name"]: r for r in data["plugins"]}
    assert set(rows["threads"]) == {"name", "origin", "status", "reason", "hooks"}
    assert rows["threads"]["status"] == "enabled" and rows["threads"]["origin"] == "builtin"
    assert "autotune_configure" in rows["threads"]["hooks"]


def test_plugins_shows_profile_disabled(capsys, tmp_path):
    (tmp_path / "generic_cpu.yaml").write_text(
        "name: generic_cpu\nplugins:\n  compile: {enabled: false}\n")
    data = json.loads(run(capsys, "plugins", "--json", "--profile", "generic_cpu",
                          "--profile-dir", str(tmp_path))[1])
    compile_row = next(r for r in data["plugins"] if r["name"] == "compile")
    assert compile_row["status"] == "disabled"
    assert compile_row["reason"] == "disabled by profile generic_cpu"


# -- plan --------------------------------------------------------------------------


def test_plan_table(capsys):
    code, out, err = run(capsys, "plan")
    assert code == 0 and err == ""
    header = next(line for line in out.splitlines() if line.startswith("PLUGIN"))
    assert header.split() == ["PLUGIN", "KEY", "VALUE", "SOURCE", "EFFECT", "REASON"]
    assert any(line.startswith("clipping") and "changes training" in line
               for line in out.splitlines())
    assert "Nothing here was measured" in out
    start = header.index("SOURCE")
    rows = [line for line in out.splitlines() if line.startswith("dataloader ")]
    assert rows and all(line[start:].split()[0] in ("default", "profile") for line in rows)


def test_plan_json_round_trips_and_honours_flags(capsys):
    code, out, _ = run(capsys, "plan", "--json", "--disable", "compile,threads",
                       "--set", "dataloader.num_workers=3", "--set", "clipping.max_norm=null")
    assert code == 0
    data = json.loads(out)
    plan = Plan.from_dict(data)
    assert plan.to_dict() == data
    assert "compile" not in plan and plan.disabled["threads"] == "disabled by --disable"
    assert data["plugins"]["dataloader"]["num_workers"] == {
        "value": 3, "source": "override", "reason": "set by the user", "effect": "speed"}
    assert plan.get("clipping", "max_norm") is None


def test_plan_yaml(capsys):
    out = run(capsys, "plan", "--yaml", "--profile", "h100")[1]
    plan = Plan.from_yaml(out)
    assert plan.profile == "h100"


def test_set_keeps_yaml_words_as_strings(capsys):
    out = run(capsys, "plan", "--json", "--set", "compile.mode=off")[1]
    assert json.loads(out)["plugins"]["compile"]["mode"]["value"] == "off"


def test_forced_profile_says_so(capsys):
    out = run(capsys, "plan", "--profile", "rtx5080_7950x")[1]
    assert "chosen by name" in out


@pytest.mark.parametrize("argv, message", [
    (["plan", "--disable", "compil"], "known plugins: accumulation, channels_last, clipping"),
    (["plan", "--set", "dataloader"], "expected PLUGIN.KEY=VALUE"),
    (["plan", "--set", "dataloader.num_workers=[1"], "not valid YAML"),
    (["plan", "--set", "dataloader.pin_memory=yes"], "proposes true/false"),
    (["plan", "--set", "accumulation.steps=0"],
     "--set accumulation.steps=0: accumulation.steps must be a whole number >= 1"),
    (["plan", "--set", "dataloader.num_workers=-1"], "must be a whole number >= 0"),
    (["plan", "--set", "clipping.max_norm=-1.0"], "clipping.max_norm must be a number > 0 or null"),
    (["plan", "--profile", "h200"], "unknown profile 'h200'"),
    (["plan", "--profile-dir", "/nonexistent/profiles"], "does not exist"),
    (["plan", "--bogus"], "unrecognized arguments: --bogus"),
    (["plan", "--json", "extra"], "unrecognized arguments: extra"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required: COMMAND"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    assert message in run_error(capsys, *argv)


def test_an_override_its_plugin_refuses_is_one_line_at_plan_time(capsys):
    # The plugin's knob says what compile.mode may be: checked when the plan
    # is made, not deep in training.
    err = run_error(capsys, "plan", "--set", "compile.mode=bogus")
    assert err == ("autotune: error: --set compile.mode='bogus': compile.mode must be one of "
                   "off, default, reduce-overhead, max-autotune\n")
    assert "compile.fullgraph must be true or false" in run_error(capsys, "plan", "--set",
                                                                  "compile.fullgraph=null")
    assert run(capsys, "plan", "--set", "compile.mode=max-autotune")[0] == 0


def test_bad_profile_exits_2_naming_file_and_key(capsys, tmp_path):
    (tmp_path / "oops.yaml").write_text("name: oops\nplugins:\n  dataloader: {num_wrkers: 2}\n")
    for command in ("detect", "profiles", "plugins", "plan"):
        err = run_error(capsys, command, "--profile-dir", str(tmp_path))
        assert "oops.yaml: key 'plugins.dataloader.num_wrkers': unknown key" in err


# -- output helpers and the installed entry points ------------------------------------


def test_table_aligns_columns():
    text = table([("a", "long value", "x"), ("bbbb", "v", "reason")], headers=("k", "val", "why"))
    lines = text.splitlines()
    assert lines[0] == "K     VAL         WHY"
    assert lines[1].index("long") == lines[2].index("v") == lines[0].index("VAL")


def test_plugin_warnings_become_one_line(capsys):
    with warnings_as_lines():
        warnings.warn("plugin 'x' failed in autotune_configure and was left out", PluginWarning)
    assert capsys.readouterr().err == (
        "autotune: warning: plugin 'x' failed in autotune_configure and was left out\n")


def test_console_script_and_module_entry_point():
    scripts = metadata.entry_points(group="console_scripts", name="autotune")
    assert [ep.value for ep in scripts] == ["autotune.cli:run"]
    result = subprocess.run([sys.executable, "-m", "autotune", "plan", "--disable", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("autotune: error: unknown plugin name(s) to disable: nope")


# -- --version, -v, --json everywhere ------------------------------------------------


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = metadata.version("torch-autotune")
    assert capsys.readouterr().out == f"autotune {version}\n"
    assert version == autotune.__version__


@pytest.mark.parametrize("argv, count", [
    (["detect"], 0),
    (["-v", "detect"], 1),
    (["detect", "-v"], 1),
    (["-vv", "plan"], 2),
    (["plan", "-vv", "--json"], 2),
    (["-v", "plugins", "-v"], 2),
    (["profiles", "show", "h100", "-v"], 1),
    (["cv", "-v", "runs/cv"], 1),
    (["report", "t.jsonl", "--verbose"], 1),
])
def test_verbose_before_or_after_the_command(argv, count):
    assert verbosity(build_parser().parse_args(argv)) == count


@pytest.mark.parametrize("argv", [["-v", "detect", "--json"], ["detect", "--json", "-v"]])
def test_both_places_of_v_log_at_info(capsys, monkeypatch, argv):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    assert main(argv) == 0
    assert levels == [logging.INFO]


def _commands(parser: argparse.ArgumentParser,
              prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its full name: ``{"profiles show": ...}``."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"{prefix}{name}"] = sub
                out.update(_commands(sub, f"{prefix}{name} "))
    return out


def test_every_command_takes_json_as_the_readme_says():
    commands = _commands(build_parser())
    with_json = {name for name, p in commands.items()
                 if any("--json" in a.option_strings for a in p._actions)}
    # The daemon's --json is for its status action (the daemon itself prints
    # no report: its samples already go to --out as JSON lines).
    assert set(commands) == with_json
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    listed = re.search(r"is taken by(.*?)\.\s", section, re.S)
    assert listed, "the README's Command line section no longer says which commands take --json"
    named = set(re.findall(r"`([a-z][a-z ]*)`", listed.group(1)))
    assert named == (with_json - {"daemon"}) | {"daemon status"}, listed.group(1)


def test_plan_reasons_follow_an_overridden_loader_worker_count(capsys):
    code, out, _ = run(capsys, "plan", "--set", "dataloader.num_workers=1", "--json")
    assert code == 0
    loader = json.loads(out)["plugins"]["dataloader"]
    assert loader["num_workers"]["value"] == 1 and loader["num_workers"]["source"] == "override"
    assert not any("no workers" in s["reason"] for s in loader.values()), loader
    assert loader["persistent_workers"]["value"] is True
    assert loader["prefetch_factor"]["value"] == 2
    assert "num_workers=1, set by the user" in loader["persistent_workers"]["reason"]
