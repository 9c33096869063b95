"""``autotune bench`` end to end on the smallest built-in workload: the
table, the JSON and the plot (numbers themselves belong in benchmarks/)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from autotune.cli import main
from autotune.bench.runner import BenchResult, plot_bench
from autotune.tuner.report import TuningReport
from autotune.bench.workloads import WORKLOADS, get_workload

QUICK = ["bench", "--workload", "mlp", "--budget", "3", "--rounds", "1", "--chunk-s", "0.05",
         "--no-progress"]


def test_bench_prints_defaults_vs_tuned_and_writes_the_plot(tmp_path, capsys) -> None:
    plot = tmp_path / "bench.png"
    assert main([*QUICK, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "winner: #" in out
    # Saved with `> file.txt`, the table says how, where and when it was made.
    head = out.splitlines()[:6]
    assert head[0] == "# command: autotune " + " ".join([*QUICK, "--plot", str(plot)])
    assert head[1].startswith("# date: 20") and head[2].startswith("# cpu: ")
    assert any(line.startswith("# torch ") for line in head)
    assert "confirmation" in out and "defaults" in out and "tuned" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_json(capsys, tmp_path) -> None:
    assert main([*QUICK, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["workload"] == "mlp" and data["tuning"]["trials"][0]["role"] == "baseline"
    names = [h["name"] for h in data["headlines"]]
    assert names == ["defaults", "tuned"] and data["tuned_vs_defaults"] > 0
    # Where and when it was measured, for a saved result to be judged.
    machine = data["machine"]
    assert machine["torch"] and machine["cpu"] and isinstance(machine["cpu_flags"], list)
    assert "cpu_id" in machine
    assert isinstance(machine["gpus"], list) and "cuda" in machine
    assert datetime.fromisoformat(data["date"]).utcoffset().total_seconds() == 0
    for key in ("loadavg_before", "loadavg_after"):
        assert data[key] is None or len(data[key]) == 3
    # A saved result reads back whole, so a committed benchmark can be plotted again.
    again = BenchResult.from_dict(data)
    assert json.loads(json.dumps(again.to_dict())) == data
    assert plot_bench(again, tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_header_names_the_command_the_machine_and_the_load() -> None:
    result = BenchResult(
        "mlp", "an MLP", "cuda:0", TuningReport(budget_s=1.0),
        machine={"cpu": "Some CPU", "cpu_id": {"family": "25", "model": "1"},
                 "usable_cores": 2.0, "cpu_flags": ["avx2", "amx_bf16"],
                 "gpus": [{"name": "H100", "driver": "550.54"}], "cuda": "12.4",
                 "torch": "2.13.0", "python": "3.11.7", "os": "Linux"},
        wall_s=12.5, date="2026-12-03T10:00:00+00:00", loadavg_before=[0.5, 0.4, 0.3],
        loadavg_after=[1.5, 0.6, 0.4])
    header = result.header("autotune bench --workload mlp")
    lines = header.splitlines()
    assert all(line.startswith("# ") for line in lines)
    for part in ("autotune bench --workload mlp", "2026-12-03T10:00:00+00:00",
                 "Some CPU (family 25, model 1)",
                 "avx2 amx_bf16", "H100 (driver 550.54)", "CUDA 12.4", "cuda:0", "torch 2.13.0",
                 "before 0.50", "after 1.50", "12.5 s"):
        assert part in header, part
    assert "command" not in result.header()


def test_bench_rejects_bad_input(capsys) -> None:
    try:  # an error line and exit code 2, from argparse or from the command
        code = main(["bench", "--budget", "0"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert "--budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--workload", "nope"])


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_builds_and_trains_one_step(name) -> None:
    spec = get_workload(name)
    model, loader, optimizer = spec.build(batch_size=2)
    inputs, targets = next(iter(loader))
    loss = spec.loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    assert loss.isfinite()


def test_plot_labels_keep_what_tells_trials_apart() -> None:
    from autotune.bench.runner import short_label

    assert short_label({}) == "PyTorch defaults"
    assert short_label({"mixed_precision": {"dtype": "bf16"}, "compile": {"mode": "default"},
                        "channels_last": {"enabled": True}}) == \
        "dtype=bf16, compile=default, channels_last"
    # Two trials that differ only in their last setting keep different labels.
    common = {"mixed_precision": {"dtype": "bf16"}, "channels_last": {"enabled": True},
              "threads": {"set_env": True}}
    one, two = (short_label({**common, "dataloader": {"num_workers": n, "pin_memory": False}})
                for n in (1, 2))
    assert one != two and "num_workers=1" in one and "no pin_memory" in one


@pytest.mark.slow
def test_ctrl_c_in_bench_stops_within_seconds_with_exit_130(tmp_path) -> None:
    """A real SIGINT to ``autotune bench`` in the middle of a trial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    # SIGINT back to its default in the child: a test run started in the
    # background by a shell (nohup ... &) ignores SIGINT, children inherit
    # that, and Python then never turns Ctrl-C into KeyboardInterrupt.
    child = subprocess.Popen([sys.executable, "-m", "autotune", "-v", "bench", "--workload",
                              "mlp", "--budget", "300", "--no-progress"],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    import threading

    try:
        deadline = time.monotonic() + 240
        for line in child.stderr:  # wait until trials are running
            if "trial #0" in line or time.monotonic() > deadline:
                break
        # Keep reading: with -v the child logs on after the signal, and a
        # full pipe nobody reads would block it (not the tuner) forever.
        drain = threading.Thread(target=lambda: [None for _ in child.stderr], daemon=True)
        drain.start()
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        rc = child.wait(timeout=180)
        took = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    assert rc == 130
    # Far less than the rest of a 300 s search, with room for a loaded machine.
    assert took < 60, f"bench took {took:.1f} s to stop after Ctrl-C"
