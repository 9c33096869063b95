"""The example scripts run end to end and print per-epoch metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, argv", [
    ("train_cnn", ["--samples", "256", "--epochs", "2", "--no-progress"]),
    ("train_transformer", ["--samples", "128", "--epochs", "2", "--no-progress",
                           "--set", "accumulation.steps=2"]),
])
def test_example_prints_per_epoch_metrics(name, argv, capsys, tmp_path) -> None:
    import logging

    if name == "train_cnn":
        argv += ["--history", str(tmp_path)]
    engine_log = logging.getLogger("autotune.engine.engine")
    handlers = list(engine_log.handlers)
    try:
        load(name).main(argv)
    finally:  # the example sets up logging for itself; undo that for the other tests
        for handler in engine_log.handlers[:]:
            if handler not in handlers:
                engine_log.removeHandler(handler)
        engine_log.setLevel(logging.NOTSET)
        engine_log.propagate = True
    out = capsys.readouterr().out
    assert "epoch 1/2: train_loss" in out and "epoch 2/2: train_loss" in out
    assert "samples/s" in out and "effective batch" in out
    # Tuned online: the search's summary, with every step of the run counted.
    assert "winner:" in out and "steps trained" in out
    if name == "train_cnn":
        assert (tmp_path / "history.png").exists() and (tmp_path / "history.json").exists()
    else:
        assert "effective batch 128" in out  # 2 micro-batches of 64
