"""``autotune monitor`` and ``report`` on real commands, and TrainingMonitor
inside a real Engine.fit with a slow DataLoader."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import autotune
from autotune.cli import main
from autotune.telemetry import TrainingMonitor, read_timeline

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_monitor_runs_the_example_and_forwards_its_exit_code(tmp_path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "autotune", "monitor", "--interval", "0.2", "--out", str(out),
         "--", sys.executable, str(ROOT / "examples" / "train_cnn.py"), "--epochs", "1",
         "--samples", "128", "--no-progress"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "validation accuracy" in result.stdout  # the command's own output passes through
    assert "Diagnosis: " in result.stderr and "command exited with 0" in result.stderr
    assert (out / "timeline.png").read_bytes()[:8] == PNG
    timeline = read_timeline(out / "timeline.jsonl")
    assert timeline.meta["command"][-1] == "--no-progress"
    # The example's python process was watched: its RSS includes torch.
    assert max(s.process_rss_bytes or 0 for s in timeline.samples) > 100 * 1024**2


def test_monitor_returns_a_non_zero_exit_code_and_report_reads_the_timeline(
        tmp_path, capsys) -> None:
    out = tmp_path / "fail"
    code = main(["monitor", "--interval", "0.1", "--out", str(out), "--",
                 sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"])
    assert code == 3
    assert "command exited with 3" in capsys.readouterr().err

    assert main(["report", str(out / "timeline.jsonl"), "--json",
                 "--plot", str(tmp_path / "r.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["sample_count"] >= 2
    assert data["diagnosis"]["kind"] in ("none", "compute-bound", "cpu-oversubscribed")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG


def test_monitor_without_a_command_or_with_a_missing_one_is_exit_2(tmp_path, capsys) -> None:
    assert main(["monitor", "--out", str(tmp_path)]) == 2
    assert main(["monitor", "--out", str(tmp_path), "--", "no-such-command-xyz"]) == 2
    err = capsys.readouterr().err
    assert "no command to monitor" in err and "cannot run 'no-such-command-xyz'" in err


class SlowDataset(Dataset):
    """Each item takes ~20 ms to "load", like a slow disk or decoder."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.02)
        return torch.full((8,), float(index)), torch.tensor(index % 2)


def test_training_monitor_in_engine_fit_diagnoses_a_slow_loader_as_input_bound(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    loader = DataLoader(SlowDataset(), batch_size=4, num_workers=1)  # a real worker process
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    tuned = autotune.apply(model, loader, optimizer=optimizer,
                           overrides={"dataloader": {"num_workers": 1}},
                           disable=["compile", "mixed_precision"])
    monitor = TrainingMonitor(interval_s=0.1, out=tmp_path / "mon")
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        engine.fit(tuned.loader, epochs=1, monitor=monitor)
    timeline = monitor.timeline()
    assert timeline.totals.count == 12  # 48 items / batch 4
    diagnosis = monitor.diagnose()
    assert diagnosis.kind == "input-bound", diagnosis
    assert diagnosis.sentence.startswith("data wait ")
    assert "raise dataloader.num_workers" in diagnosis.sentence
    # The file has the same steps, and samples beside them; the plot was written at stop().
    from_file = read_timeline(tmp_path / "mon" / "timeline.jsonl")
    assert len(from_file.steps) == 12 and len(from_file.samples) >= 2
    assert (tmp_path / "mon" / "timeline.png").read_bytes()[:8] == PNG
    # The DataLoader worker was part of the watched tree while it ran.
    assert max(s.process_count or 0 for s in timeline.samples) >= 2
