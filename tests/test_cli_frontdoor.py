"""The front door: what `autotune --version`, `--help` and the commands that
need no model import (no torch), refused flag combinations, values out of
range, `--set` values holding '=', `-v` after the subcommand, and the
daemon's `--pid` for a process that does not exist."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run_error
from autotune.cli import COMMANDS, build_parser, command, main
from autotune.cli.parsers import WORKLOAD_NAMES
from autotune.cli.core import parse_overrides

#: Runs ``autotune ARGV`` for each ARGV in turn in one fresh interpreter and
#: prints, for each, its exit code and whether torch had been imported by then.
HARNESS = """
import contextlib, io, json, sys
{preload}
from autotune.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    results.append([argv, code, "torch" in sys.modules])
print(json.dumps(results))
"""


def fresh_run(commands: list[list[str]], preload: str = "") -> list[tuple[list[str], int, bool]]:
    result = subprocess.run([sys.executable, "-c", HARNESS.format(preload=preload),
                             json.dumps(commands)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [tuple(r) for r in json.loads(result.stdout)]


def first_to_import_torch(results: list[tuple[list[str], int, bool]]) -> list[str] | None:
    return next((argv for argv, _, loaded in results if loaded), None)


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append([*prefix, name])
                out += subcommands(sub, (*prefix, name))
    return out


def cpu_only_torch() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


# -- no torch where none is needed --------------------------------------------------


def test_version_and_every_help_answer_without_importing_torch():
    commands = [["--version"], ["--help"], *([*c, "--help"] for c in subcommands(build_parser()))]
    assert ["bench", "--help"] in commands and ["profiles", "show", "--help"] in commands
    results = fresh_run(commands)
    assert [code for _, code, _ in results] == [0] * len(commands)
    assert first_to_import_torch(results) is None


@pytest.mark.skipif(not cpu_only_torch(),
                    reason="with a CUDA or ROCm build, detect asks torch whether it can use "
                           "the GPU")
def test_profiles_and_detect_answer_without_importing_torch(tmp_path):
    timeline = tmp_path / "t.jsonl"
    timeline.write_text("".join(json.dumps(sample(i)) + "\n" for i in range(3)))
    commands = [["profiles"], ["profiles", "--json"], ["profiles", "show", "generic_cpu"],
                ["detect"], ["detect", "--json"], ["report", str(timeline), "--json"]]
    results = fresh_run(commands)
    assert [code for _, code, _ in results] == [0] * len(commands)
    assert first_to_import_torch(results) is None


def test_the_check_sees_torch_when_a_command_module_imports_it():
    # The harness itself: an import of torch at the top of a command module
    # (bench once imported autotune.bench.workloads) is what it must catch.
    results = fresh_run([["--version"]], preload="import autotune.bench.workloads")
    assert first_to_import_torch(results) == ["--version"]


def test_every_command_has_the_function_that_runs_it():
    # The parser (argparse only) and the table of what runs each command are
    # written apart; a command in one and not the other would fail when run.
    top = {c[0] for c in subcommands(build_parser()) if len(c) == 1}
    assert top == set(COMMANDS)
    assert all(callable(command(name)) for name in COMMANDS)


def test_bench_offers_exactly_the_library_workloads():
    from autotune.bench.workloads import WORKLOADS

    assert WORKLOAD_NAMES == tuple(sorted(WORKLOADS))


# -- bad arguments: one line, exit 2 ------------------------------------------------




@pytest.mark.parametrize("argv, message", [
    (["plan", "--json", "--yaml"], "argument --yaml: not allowed with argument --json"),
    (["plan", "--yaml", "--json"], "argument --json: not allowed with argument --yaml"),
    (["daemon", "--json"], "--json is for 'autotune daemon status'"),
    (["daemon", "--pid", "0"], "argument --pid: must be a whole number >= 1, got 0"),
    (["daemon", "--pid", "me"], "argument --pid: must be a whole number >= 1, got me"),
    (["daemon", "--interval", "nan"], "argument --interval: must be a number of seconds > 0, "
                                      "got nan"),
    (["monitor", "--interval", "inf", "--", "true"], "argument --interval: must be a number "
                                                     "of seconds > 0, got inf"),
    (["monitor", "--interval", "-1", "--", "true"], "must be a number of seconds > 0, got -1"),
    (["bench", "--budget", "nan"], "argument --budget: must be a number of seconds > 0, got nan"),
    (["bench", "--budget", "0"], "argument --budget: must be a number of seconds > 0, got 0"),
    (["bench", "--chunk-s", "0"], "argument --chunk-s: must be a number of seconds > 0, got 0"),
    (["bench", "--rounds", "-1"], "argument --rounds: must be a whole number >= 0, got -1"),
])
def test_conflicting_or_out_of_range_arguments_are_one_line(capsys, argv, message):
    assert message in run_error(capsys, *argv)


def test_plot_paths_that_cannot_be_written_are_refused_before_the_run(capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    for plot, message in [(tmp_path, "is a directory"),
                          (tmp_path / "plot", "has no extension; e.g."),
                          (tmp_path / "a_file" / "p.png", "is not a directory")]:
        # bench is refused at parse time, before its minutes of measuring.
        assert message in run_error(capsys, "bench", "--plot", str(plot))
        assert message in run_error(capsys, "report", "t.jsonl", "--plot", str(plot))


# -- --set ----------------------------------------------------------------------------


def test_set_splits_on_the_first_equals_sign_only(capsys):
    assert parse_overrides(["compile.mode=a=b", "x.y=k=v=w"]) == {"compile": {"mode": "a=b"},
                                                                   "x": {"y": "k=v=w"}}
    # The whole value reaches the plugin's check, which repeats it.
    assert "--set compile.mode='a=b': compile.mode must be one of" in run_error(
        capsys, "plan", "--set", "compile.mode=a=b")


# -- -v after the subcommand ----------------------------------------------------------


@pytest.mark.parametrize("argv, level", [
    (["profiles", "show", "generic_cpu"], logging.WARNING),
    (["profiles", "show", "generic_cpu", "-v"], logging.INFO),
    (["profiles", "-v", "show", "generic_cpu"], logging.INFO),
    (["-v", "profiles", "show", "generic_cpu", "-v"], logging.DEBUG),
    (["plan", "--json", "-vv"], logging.DEBUG),
])
def test_v_after_the_subcommand_sets_the_log_level(capsys, monkeypatch, argv, level):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    assert main(argv) == 0
    assert levels == [level]


def test_v_after_the_subcommand_logs_in_a_real_process(tmp_path):
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "autotune", *argv], capture_output=True,
                              text=True, timeout=300)
    quiet, loud = run("plan", "--json"), run("plan", "--json", "-v")
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert "INFO autotune" not in quiet.stderr
    assert "INFO autotune.planner: plan made with profile" in loud.stderr


# -- the daemon's --pid ---------------------------------------------------------------


def test_daemon_pid_of_no_process_is_one_line_exit_2_not_a_wait(tmp_path):
    # Above the kernel's largest pid: no process can have it.
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1 \
        if Path("/proc/sys/kernel/pid_max").exists() else 2**22 + 1
    out = tmp_path / "d.jsonl"
    # The timeout only ends a daemon that waits instead of refusing.
    result = subprocess.run([sys.executable, "-m", "autotune", "daemon", "--no-coordinate",
                             "--out", str(out), "--pid", str(pid)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"autotune: error: --pid {pid}: no such process (has it exited?)\n"
    assert not out.exists()


def sample(i: int) -> dict:
    return {"type": "sample", "time": 1_700_000_000.0 + i, "cpu_percent": 50.0,
            "memory_used_bytes": 1e9, "memory_total_bytes": 8e9, "cores": 2}
