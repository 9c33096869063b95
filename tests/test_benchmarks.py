"""The benchmark scripts: ``--help`` answers without measuring anything, no
script writes over a committed result unless told to (``--out``), every
result file records where and how it was measured (common.provenance), and
a missed target is exit code 1, naming the target and the figure.

Nothing here depends on timing or load: where a script measures for real,
the target it is given cannot be met (or cannot be missed), and where a
real run would take minutes the measurement itself is replaced."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")
QUIET = ["--max-load", "99", "--max-wait", "0"]  # measure at once, whatever the load


def script(name: str) -> ModuleType:
    """A benchmark script as a module (its ``main(argv)`` runs in-process)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def assert_provenance(record: dict, script_name: str) -> None:
    """What every result file records at its top level."""
    common = script("common")
    for key in common.PROVENANCE_KEYS:
        assert key in record, key
    assert record["command"].startswith(f"python benchmarks/{script_name}")
    assert datetime.fromisoformat(record["date"]).utcoffset().total_seconds() == 0
    machine = record["machine"]
    for key in ("cpu", "cpu_id", "cpu_flags", "usable_cores", "gpus", "cuda", "torch", "python",
                "os"):
        assert key in machine, key
    assert machine["cpu"] and machine["torch"]
    assert isinstance(machine["cpu_flags"], list) and isinstance(machine["gpus"], list)
    for gpu in machine["gpus"]:
        assert {"name", "driver"} <= set(gpu)
    for key in ("loadavg_before", "loadavg_after"):
        assert record[key] is None or len(record[key]) == 3


def assert_missed(output: str, target: str) -> None:
    assert re.search(rf"target {re.escape(target)} \S+ \S+: \S+ \(NOT met\)", output), output
    assert "targets missed" in output and target in output.split("targets missed")[-1]


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_help_answers_and_the_default_output_is_not_a_committed_result(path: Path) -> None:
    run = run_script(path.name, "--help", timeout=120)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split("options:")[-1].split())
    out_help = re.search(r"--out \S+ (.*?)(?= --[a-z]|$)", text)
    assert out_help, run.stdout
    default = re.search(r"\(default ([^;)]+)", out_help.group(1))
    assert default, out_help.group(1)
    assert "benchmarks/results" not in default.group(1).replace("\\", "/")


# -- run_cpu (and run_one, which run_gpu shares) ------------------------------------------


def test_run_cpu_exit_code_follows_the_targets(monkeypatch, tmp_path) -> None:
    run_cpu = script("run_cpu")

    def fake_run_one(workload, name, prefix, **kwargs):  # a result, as run_one writes it
        assert kwargs["out_dir"] == tmp_path
        met = name != "mlp"
        return {"targets": {"tuned_vs_defaults": {"target": 0.97, "measured": 0.5, "met": met}}}

    monkeypatch.setattr(run_cpu, "run_one", fake_run_one)
    assert run_cpu.main(["--workload", "transformer", "--no-grid", "--out", str(tmp_path)]) == 0
    assert run_cpu.main(["--workload", "mlp", "--no-grid", "--out", str(tmp_path)]) == 1


def test_run_cpu_target_option(monkeypatch, tmp_path) -> None:
    run_cpu = script("run_cpu")
    seen = {}
    monkeypatch.setattr(run_cpu, "run_one", lambda *a, **kw: seen.update(kw) or {"targets": {}})
    run_cpu.main(["--workload", "mlp", "--no-grid", "--target", "tuned_vs_defaults=5",
                  "--name", "mine", "--out", str(tmp_path)])
    assert seen["targets"] == {"tuned_vs_defaults": 5.0} and seen["file_name"] == "mine"
    assert seen["argv"][1:] == ["--workload", "mlp", "--no-grid", "--target",
                                "tuned_vs_defaults=5", "--name", "mine", "--out", str(tmp_path)]
    for bad in (["--target", "nope=1"], ["--target", "tuned_vs_defaults=x"],
                ["--target", "tuned_vs_grid_best=1", "--no-grid"],
                ["--workload", "cnn", "--workload", "mlp", "--name", "x"]):
        with pytest.raises(SystemExit):
            run_cpu.main(["--out", str(tmp_path), *bad])


@pytest.mark.slow
def test_run_cpu_tiny_real_run_records_provenance_and_a_missed_target_exits_1(tmp_path) -> None:
    run = run_script("run_cpu.py", "--workload", "mlp", "--no-grid", "--budget", "3",
                     "--rounds", "1", "--chunk-s", "0.05", *QUIET, "--attempts", "1",
                     "--max-foreign", "1", "--out", str(tmp_path), "--name", "tiny",
                     "--target", "tuned_vs_defaults=1e9")
    assert run.returncode == 1, run.stdout + run.stderr
    assert_missed(run.stdout, "tuned_vs_defaults")
    record = json.loads((tmp_path / "tiny.json").read_text())
    assert_provenance(record, "run_cpu.py")
    assert record["foreign_cpu_share"] is not None
    assert record["targets"]["tuned_vs_defaults"]["met"] is False
    assert (tmp_path / "tiny.png").read_bytes()[:4] == b"\x89PNG"


# -- monitor_overhead ----------------------------------------------------------------------


@pytest.mark.parametrize("target, code", [("-1e9", 1), ("1e9", 0)])
def test_monitor_overhead_tiny_real_run(tmp_path, target, code) -> None:
    out = tmp_path / "overhead.json"
    run = run_script("monitor_overhead.py", "--seconds", "0.2", "--samples", "3", "--steps",
                     "50", *QUIET, "--out", str(out), "--target", f"percent_of_one_core={target}")
    assert run.returncode == code, run.stdout + run.stderr
    record = json.loads(out.read_text())
    assert_provenance(record, "monitor_overhead.py")
    assert record["targets"]["percent_of_one_core"]["met"] is (code == 0)
    if code:
        assert_missed(run.stdout, "percent_of_one_core")


# -- bf16_probe: no target; its bf16 matmul takes a minute where bf16 has no kernels -------


def test_bf16_probe_records_provenance(monkeypatch, tmp_path) -> None:
    bf16_probe = script("bf16_probe")
    monkeypatch.setattr(bf16_probe, "median_ms", lambda fn, repeats: 1.5)
    out = tmp_path / "probe.json"
    assert bf16_probe.main(["--out", str(out), *QUIET, "--repeats", "1"]) == 0
    record = json.loads(out.read_text())
    assert_provenance(record, "bf16_probe.py")
    assert record["repeats"] == 1 and set(record["median_ms"].values()) == {1.5}


# -- budget_buys: the children (fresh processes, real searches) are replaced ---------------


def fake_budget_children(rates: dict[str, float], wall_s: float):
    def run_child(args, env):
        if args[0] == "--child-search":
            _, _, budget, out = args
            Path(out).write_text(json.dumps({
                "budget_s": float(budget), "apply_wall_s": wall_s, "winner_settings": {},
                "winner_label": "PyTorch defaults", "report": {}}))
        else:
            out = args[-1]
            Path(out).write_text(json.dumps([
                {"name": name, "label": "PyTorch defaults", "samples_per_s": rate,
                 "step_ms": 1.0, "rounds": [rate]} for name, rate in rates.items()]))
    return run_child


@pytest.mark.parametrize("extra, code", [([], 0), (["--target", "short_vs_long=1e9"], 1)])
def test_budget_buys_records_provenance_and_exit_code(monkeypatch, tmp_path, capsys,
                                                      extra, code) -> None:
    budget_buys = script("budget_buys")
    monkeypatch.setattr(budget_buys, "run_child", fake_budget_children(
        {"defaults": 10.0, "5 s pick": 10.0, "9 s pick": 10.0}, wall_s=1.0))
    out = tmp_path / "budget.json"
    argv = ["--workload", "mlp", "--budget", "5", "--budget", "9", *QUIET, "--out", str(out)]
    assert budget_buys.main([*argv, *extra]) == code
    record = json.loads(out.read_text())
    assert_provenance(record, "budget_buys.py")
    assert record["foreign_cpu_share"] is not None
    assert set(record["targets"]) == {"short_vs_long", "apply_within_5s", "apply_within_9s"}
    if code:
        assert_missed(capsys.readouterr().out, "short_vs_long")


def test_budget_buys_an_apply_over_its_budget_exits_1(monkeypatch, tmp_path, capsys) -> None:
    budget_buys = script("budget_buys")
    monkeypatch.setattr(budget_buys, "run_child", fake_budget_children(
        {"defaults": 10.0, "5 s pick": 10.0}, wall_s=1e9))
    out = tmp_path / "budget.json"
    assert budget_buys.main(["--budget", "5", *QUIET, "--out", str(out)]) == 1
    assert_missed(capsys.readouterr().out, "apply_within_5s")


# -- upfront_vs_grid: the children (fresh processes, real searches, the grid) are replaced --


def fake_grid_children(rates: dict[str, float], wall_s: float):
    def run_child(args, env):
        if args[0] == "--child-search":
            _, _, mode, budget, out = args
            Path(out).write_text(json.dumps({
                "mode": mode, "budget_s": float(budget), "apply_wall_s": wall_s,
                "winner_settings": {}, "winner_label": "PyTorch defaults", "summary": "",
                "report": {}}))
        else:
            Path(args[-1]).write_text(json.dumps({
                "grid": [{"label": "PyTorch defaults", "status": "ok", "samples_per_s": 10.0,
                          "spread": 0.0, "reason": "", "wall_s": 1.0}],
                "headlines": [{"name": name, "label": "PyTorch defaults", "samples_per_s": rate,
                               "step_ms": 1.0, "rounds": [rate]}
                              for name, rate in rates.items()]}))
    return run_child


@pytest.mark.parametrize("rehearsed, wall_s, missed", [
    (9.8, 1.0, None), (9.0, 1.0, "rehearse_vs_grid_best"), (9.8, 1e9, "search_within_5s")])
def test_upfront_vs_grid_records_each_figure_against_its_target(monkeypatch, tmp_path, capsys,
                                                               rehearsed, wall_s,
                                                               missed) -> None:
    harness = script("upfront_vs_grid")
    monkeypatch.setattr(harness, "run_child", fake_grid_children(
        {"defaults": 8.0, "search pick": 8.0, "rehearse pick": rehearsed, "grid best": 10.0},
        wall_s))
    out = tmp_path / "grid.json"
    code = harness.main(["--workload", "mlp", "--budget", "5", *QUIET, "--out", str(out)])
    record = json.loads(out.read_text())
    assert_provenance(record, "upfront_vs_grid.py")
    assert set(record["targets"]) == {"rehearse_vs_grid_best", "search_within_5s",
                                      "rehearse_within_5s"}
    assert record["targets"]["rehearse_vs_grid_best"]["measured"] == pytest.approx(
        rehearsed / 10.0)
    assert record["search_vs_grid_best"] == pytest.approx(0.8)
    assert [s["mode"] for s in record["searches"]] == ["search", "rehearse"]
    assert code == (1 if missed else 0)
    if missed:
        assert_missed(capsys.readouterr().out, missed)


# -- cv_folds: each measurement (a fresh process running cross_validate) is replaced ------


def fake_fold_runs(seconds: dict[str, float]):
    def measure(mode, workload, k, workers):
        return {"wall_time_s": seconds[mode], "backend": "loky", "concurrency": 2,
                "threads_per_fold": 1, "reason": "fake", "ok": True}
    return measure


@pytest.mark.parametrize("extra, code", [([], 0),
                                         (["--target", "plugin_time_vs_sequential=1e-9"], 1)])
def test_cv_folds_records_provenance_and_exit_code(monkeypatch, tmp_path, capsys,
                                                   extra, code) -> None:
    cv_folds = script("cv_folds")
    monkeypatch.setattr(cv_folds, "measure", fake_fold_runs(
        {"sequential": 4.0, "loky": 3.0, "threading": 3.5, "plugin": 3.0}))
    monkeypatch.setattr(cv_folds, "wait_until_idle", lambda *a, **kw: 0.0)
    out = tmp_path / "cv.json"
    assert cv_folds.main(["--workloads", "tiny", "--rounds", "1", *QUIET, "--out", str(out),
                          *extra]) == code
    record = json.loads(out.read_text())
    assert_provenance(record, "cv_folds.py")
    check = record["targets"]["tiny: plugin_time_vs_sequential"]
    assert check["measured"] == pytest.approx(0.75) and check["met"] is (code == 0)
    if code:
        assert_missed(capsys.readouterr().out, "tiny: plugin_time_vs_sequential")


def test_cv_folds_a_plugin_slower_than_sequential_exits_1(monkeypatch, tmp_path) -> None:
    cv_folds = script("cv_folds")
    monkeypatch.setattr(cv_folds, "measure", fake_fold_runs(
        {"sequential": 4.0, "loky": 3.0, "threading": 3.5, "plugin": 8.0}))
    monkeypatch.setattr(cv_folds, "wait_until_idle", lambda *a, **kw: 0.0)
    assert cv_folds.main(["--workloads", "tiny", "--rounds", "1", *QUIET,
                          "--out", str(tmp_path / "cv.json")]) == 1


# -- daemon_jobs: the arms (training processes, a daemon) are replaced ----------------------


def fake_arms(seconds: dict[str, float]):
    def run_arm(arm, cores, workdir, epochs):
        return {"arm": arm, "total_s": seconds[arm], "jobs": [
            {"job": name, "arm": arm, "time_s": seconds[arm] * 0.9, "threads_per_epoch": [1],
             "plan_threads": 1, "plan_threads_source": "fake"} for name in epochs]}
    return run_arm


@pytest.mark.parametrize("times, extra, code", [
    ({"alone": 90.0, "static": 30.0, "daemon": 29.0}, [], 0),
    ({"alone": 90.0, "static": 30.0, "daemon": 29.0}, ["--target", "speedup_vs_alone=1e9"], 1),
    ({"alone": 60.0, "static": 30.0, "daemon": 29.0}, [], 1),   # 2.07x < 3x
    ({"alone": 900.0, "static": 30.0, "daemon": 40.0}, [], 1),  # 1.33x the static split
])
def test_daemon_jobs_records_provenance_and_exit_code(monkeypatch, tmp_path, capsys,
                                                      times, extra, code) -> None:
    daemon_jobs = script("daemon_jobs")
    monkeypatch.setattr(daemon_jobs, "run_arm", fake_arms(times))
    assert daemon_jobs.main(["--rounds", "1", *QUIET, "--out", str(tmp_path), "--name", "two",
                             *extra]) == code
    record = json.loads((tmp_path / "two.json").read_text())
    assert_provenance(record, "daemon_jobs.py")
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
    assert set(record["targets"]) == {"speedup_vs_alone", "daemon_vs_static"}
    assert all(c["met"] for c in record["targets"].values()) is (code == 0)
    if code:
        assert "targets missed" in capsys.readouterr().out


# -- the README names, for every committed result, the command that writes it -------------


def readme_rows() -> list[tuple[set[str], str]]:
    """(files, command) for each row of the README's table of committed files."""
    text = (BENCHMARKS / "README.md").read_text()
    section = text.split("## Every committed file and the command that writes it")[1]
    section = section.split("\n## ")[0].split("\n### ")[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = line.split(" | ")
        files = set(re.findall(r"`([^`]+\.(?:json|png|txt))`", cells[0]))
        commands = [c for c in re.findall(r"`([^`]+)`", cells[1])
                    if c.startswith(("python benchmarks/", "autotune "))]
        assert len(commands) == 1, line
        rows.append((files, commands[0]))
    return rows


def written_by(command: str) -> tuple[str, set[str]]:
    """The script (or ``autotune <command>``) a README command runs, and the
    files under benchmarks/results/ it writes, as its arguments say."""
    import shlex

    words = shlex.split(command)
    redirect = words.index(">") if ">" in words else None
    args = words[2:redirect] if redirect is not None else words[2:]
    options: dict[str, list[str]] = {}
    for flag, value in zip(args, [*args[1:], ""]):
        if flag.startswith("--"):
            options.setdefault(flag, []).append("" if value.startswith("--") else value)
    out = options.get("--out", [""])[-1]
    if words[0] == "autotune":
        files = {options["--plot"][-1], words[redirect + 1]}
        return f"autotune {words[1]}", files
    name = Path(words[1]).name
    if name == "run_cpu.py":
        workloads = options.get("--workload", ["cnn", "transformer"])
        prefix = options.get("--prefix", ["cpu"])[-1]
        stems = options.get("--name") or [f"{prefix}_{w}" for w in workloads]
        files = {f"{out}/{stem}.{ext}" for stem in stems for ext in ("json", "png")}
    elif name == "daemon_jobs.py":
        stem = options.get("--name", ["daemon_jobs"])[-1]
        files = {f"{out}/{stem}.json", f"{out}/{stem}.png"}
    else:
        files = {out}
    return name, files


def test_the_readme_gives_the_command_that_writes_each_committed_result() -> None:
    rows = readme_rows()
    listed = set().union(*(files for files, _ in rows))
    committed = {p.name for p in (BENCHMARKS / "results").iterdir()}
    assert listed == committed
    helps: dict[str, str] = {}
    for files, command in rows:
        target, writes = written_by(command)
        assert writes == {f"benchmarks/results/{f}" for f in files}, command
        if target not in helps:
            argv = ([sys.executable, "-m", "autotune", *target.split()[1:], "--help"]
                    if target.startswith("autotune ") else
                    [sys.executable, str(BENCHMARKS / target), "--help"])
            run = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
            assert run.returncode == 0, run.stderr
            helps[target] = run.stdout
        for flag in re.findall(r"(?<!\S)--[a-z][a-z-]*", command):
            assert re.search(rf"{flag}\b", helps[target]), f"{target} has no {flag}"


# -- time_to_train: the children (calibration, the four arms) are replaced ----------------


def fake_time_to_train_children(times: dict[str, float], last_half: dict[str, float],
                                upfront_winner: str, seen: list | None = None):
    """Children that write chosen figures; ``seen`` collects (kind, job, env)."""
    def run_child(args, env):
        kind, job = args[0], json.loads(Path(args[1]).read_text())
        if seen is not None:
            seen.append((kind, job, env))
        if kind == "--child-calibrate":
            result = {"dataset_size": job["dataset_size"], "batch_size": 32,
                      "batches_per_epoch": 10, "warmup_steps": job["warmup_steps"],
                      "timed_steps": job["timed_steps"], "step_s": 0.01, "epoch_s": 0.1}
        else:
            arm = job["arm"]
            searched = 1.0 if arm in ("upfront", "rehearse") else 0.0
            result = {"arm": arm, "workload": job["workload"],
                      "time_to_train_s": times.get(arm, 11.0), "apply_s": searched,
                      "train_s": times.get(arm, 11.0) - searched,
                      "epochs": job["epochs"], "steps": 10 * job["epochs"],
                      "samples": 320 * job["epochs"], "samples_per_s": 50.0,
                      "last_half_epochs": (job["epochs"] + 1) // 2,
                      "last_half_samples_per_s": last_half.get(arm, 98.0),
                      "winner": upfront_winner if arm == "upfront" else "PyTorch defaults"}
        Path(job["out"]).write_text(json.dumps(result))
    return run_child


TTT_CASES = ["--workload", "mlp", "--workload", "input", "--length", "short", "--length", "long"]


@pytest.mark.parametrize("times, extra, missed", [
    ({"defaults": 10.0, "online": 10.2, "upfront": 12.0}, [], None),
    ({"defaults": 10.0, "online": 10.5, "upfront": 12.0}, [], "online_vs_defaults_mlp_short"),
    ({"defaults": 10.0, "online": 10.2, "upfront": 12.0}, ["--target", "online_vs_upfront=0.5"],
     "online_vs_upfront_input_long"),
    ({"defaults": 10.0, "online": 10.2, "upfront": 12.0},
     ["--target", "online_last_half_vs_upfront=1e9"], "online_last_half_vs_upfront_mlp"),
])
def test_time_to_train_records_provenance_and_exit_code(monkeypatch, tmp_path, capsys, times,
                                                        extra, missed) -> None:
    time_to_train = script("time_to_train")
    seen: list = []
    monkeypatch.setattr(time_to_train, "run_child", fake_time_to_train_children(
        times, {"defaults": 50.0, "online": 99.0, "upfront": 100.0},
        "optimizer.implementation=fused", seen))
    out = tmp_path / "ttt.json"
    code = time_to_train.main([*TTT_CASES, *QUIET, "--out", str(out), *extra])
    assert code == (1 if missed else 0)
    record = json.loads(out.read_text())
    assert_provenance(record, "time_to_train.py")
    assert record["foreign_cpu_share"] is not None
    assert set(record["calibration"]) == {"mlp", "input"}
    assert [(c["workload"], c["length"]) for c in record["cases"]] == [
        ("mlp", "short"), ("mlp", "long"), ("input", "short"), ("input", "long")]
    for case in record["cases"]:
        assert [r["arm"] for r in case["runs"]] == ["defaults", "online", "upfront", "rehearse"]
        assert all(r["epochs"] == case["plan"]["epochs"] for r in case["runs"])
        for arm, seconds in times.items():
            assert case["summary"][arm]["time_to_train_s"] == seconds
    # 0.1 s an epoch: 60 s -> 600 epochs, 300 s -> 3000, the dataset as it was
    assert [c["plan"]["epochs"] for c in record["cases"]] == [600, 3000, 600, 3000]
    assert set(record["targets"]) == {
        f"{name}_{w}_{length}" for name in ("online_vs_defaults", "online_vs_upfront")
        for w in ("mlp", "input") for length in ("short", "long")} | {
        "online_last_half_vs_upfront_mlp", "online_last_half_vs_upfront_input"}
    assert record["targets"]["online_vs_defaults_mlp_short"]["rule"] == "<="
    assert record["targets"]["online_last_half_vs_upfront_mlp"]["measured"] == pytest.approx(0.99)
    # every child a fresh process with its own empty caches
    caches = [env["AUTOTUNE_CACHE_DIR"] for _, _, env in seen]
    assert len(seen) == 2 + 4 * 4 and len(set(caches)) == len(caches)
    assert all(env["AUTOTUNE_PROGRESS"] == "0" and env["TORCHINDUCTOR_CACHE_DIR"]
               for _, _, env in seen)
    if missed:
        assert_missed(capsys.readouterr().out, missed)


def test_time_to_train_repeats_rotate_the_order_and_report_medians(monkeypatch,
                                                                   tmp_path) -> None:
    time_to_train = script("time_to_train")
    seen: list = []
    monkeypatch.setattr(time_to_train, "run_child", fake_time_to_train_children(
        {"defaults": 10.0, "online": 9.0, "upfront": 12.0},
        {"defaults": 50.0, "online": 99.0, "upfront": 100.0}, "PyTorch defaults", seen))
    out, png = tmp_path / "ttt.json", tmp_path / "ttt.png"
    assert time_to_train.main(["--workload", "input", "--length", "long", "--repeats", "3",
                               "--order", "upfront,defaults,rehearse,online", *QUIET, "--out",
                               str(out), "--plot", str(png)]) == 0
    arms = [job["arm"] for kind, job, _ in seen if kind == "--child-arm"]
    assert arms == ["upfront", "defaults", "rehearse", "online",
                    "defaults", "rehearse", "online", "upfront",
                    "rehearse", "online", "upfront", "defaults"]
    plots = [job["plot"] for kind, job, _ in seen if job.get("arm") == "online"]
    assert [Path(p).name for p in plots] == [f"ttt_online_input_long_r{r}.png" for r in (1, 2, 3)]
    record = json.loads(out.read_text())
    assert record["settings"]["order"] == ["upfront", "defaults", "rehearse", "online"]
    assert record["cases"][0]["summary"]["online"]["time_to_train_s"] == 9.0
    # upfront shipped the defaults: no last-half target
    assert set(record["targets"]) == {"online_vs_defaults_input_long",
                                      "online_vs_upfront_input_long"}
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_time_to_train_cuts_the_dataset_when_an_epoch_is_long() -> None:
    time_to_train = script("time_to_train")
    calibration = {"step_s": 1.0, "batches_per_epoch": 32, "batch_size": 64,
                   "dataset_size": 2048}
    short = time_to_train.plan_length(calibration, 60.0)
    assert short["batches_per_epoch"] == 15 and short["dataset_size"] == 15 * 64
    assert short["epochs"] == 4
    long = time_to_train.plan_length(calibration, 300.0)
    assert long["dataset_size"] == 2048 and long["epochs"] == 9  # 32 s epochs <= 75 s
    one_step = time_to_train.plan_length(calibration, 1.0)  # a step longer than target / 4
    assert one_step["batches_per_epoch"] == 1 and one_step["epochs"] == 2


def test_time_to_train_rejects_a_bad_order(tmp_path) -> None:
    time_to_train = script("time_to_train")
    for bad in (["--order", "defaults,online,upfront"],
                ["--order", "defaults,online,online,rehearse"],
                ["--target", "online_vs_defaults_mlp_short=1"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            time_to_train.main([*QUIET, "--out", str(tmp_path / "x.json"), *bad])


@pytest.mark.slow
def test_time_to_train_smoke_runs_every_arm_for_real(tmp_path) -> None:
    out = tmp_path / "ttt.json"
    run = run_script("time_to_train.py", "--smoke", *QUIET, "--out", str(out),
                     "--target", "online_vs_defaults=1000", "--target", "online_vs_upfront=1000",
                     "--target", "online_last_half_vs_upfront=0")
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads(out.read_text())
    assert_provenance(record, "time_to_train.py")
    assert record["cases"] and all(t["met"] for t in record["targets"].values())
    for case in record["cases"]:
        assert case["workload"] in record["calibration"]
        runs = {r["arm"]: r for r in case["runs"]}
        assert set(runs) == {"defaults", "online", "upfront", "rehearse"}
        for arm, r in runs.items():
            assert r["time_to_train_s"] > 0 and r["steps"] > 0, arm
            assert r["epochs"] == case["plan"]["epochs"] >= 2
        assert runs["defaults"]["apply_s"] == 0 and runs["upfront"]["tuning"]["search_s"] > 0
        for paired in ("online", "rehearse"):
            assert "chunks" not in runs[paired]["tuning"] and runs[paired]["summary"]
        assert runs["rehearse"]["apply_s"] > 0 and runs["rehearse"]["tuning"]["mode"] == "rehearsal"
