"""autotune.bridges without any trainer installed: what each bridge makes of
a plan, the lines for what it cannot apply, and that importing a bridge
imports no framework. The trainers' own runs are in test_bridges_<name>.py."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune.bridges import Change, changes, runtime
from autotune.bridges.translate import ANY_KEY, Row, lines, options
from autotune.bridges import accelerate as accelerate_bridge
from autotune.bridges import huggingface as hf_bridge
from autotune.bridges import lightning as lightning_bridge
from autotune.testing import h100_box

from bridge_helpers import planned

ASKED = {"mixed_precision": {"dtype": "bf16"}, "accumulation": {"steps": 2},
         "clipping": {"max_norm": 0.5}}


def test_importing_the_bridges_imports_no_framework():
    code = ("import sys, autotune, autotune.bridges.lightning as l, autotune.bridges.huggingface "
            "as h, autotune.bridges.accelerate as a\n"
            "t = __import__('bridge_helpers').planned({'accumulation': {'steps': 2}})\n"
            "l.trainer_kwargs(t); l.unsupported(t); a.accelerator_kwargs(t); a.unsupported(t)\n"
            "h.unsupported(t)\n"
            "print(sorted({'lightning', 'pytorch_lightning', 'transformers', 'accelerate'}"
            " & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(__import__("pathlib").Path(__file__).parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_default_plan_changes_nothing_a_bridge_must_report():
    tuned = planned()
    assert changes(tuned) == []
    assert lightning_bridge.unsupported(tuned) == []
    assert accelerate_bridge.unsupported(tuned) == []
    assert lightning_bridge.trainer_kwargs(tuned) == {"precision": "32-true",
                                                      "accumulate_grad_batches": 1}
    assert accelerate_bridge.accelerator_kwargs(tuned) == {"mixed_precision": "no",
                                                           "gradient_accumulation_steps": 1}


def test_changes_are_the_settings_off_pytorchs_behaviour():
    found = {c.name: c for c in changes(planned(ASKED))}
    assert found["mixed_precision.dtype"] == Change("mixed_precision", "dtype", "bf16", "fp32")
    assert found["accumulation.steps"].value == 2
    assert found["clipping.max_norm"].off is None
    assert "clipping.norm_type" not in found and "parallel_folds.max_concurrent" not in found
    assert str(found["accumulation.steps"]) == "accumulation.steps=2"


def test_lightning_kwargs_from_the_plan(caplog):
    with caplog.at_level(logging.INFO, logger="autotune.bridges.lightning"):
        kwargs = lightning_bridge.trainer_kwargs(planned(ASKED))
    assert kwargs == {"precision": "bf16-mixed", "accumulate_grad_batches": 2,
                      "gradient_clip_val": 0.5, "gradient_clip_algorithm": "norm"}
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "mixed_precision.dtype='bf16': precision='bf16-mixed'" in info
    assert "accumulation.steps=2: accumulate_grad_batches=2" in info
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    fp16 = lightning_bridge.trainer_kwargs(planned({"mixed_precision": {"dtype": "fp16"}},
                                                   hardware=h100_box()))
    assert fp16["precision"] == "16-mixed"
    by_value = lightning_bridge.trainer_kwargs(planned({"clipping": {"clip_value": 0.1}}))
    assert (by_value["gradient_clip_val"], by_value["gradient_clip_algorithm"]) == (0.1, "value")


def test_lightning_states_each_setting_it_cannot_apply(caplog):
    tuned = planned({"compile": {"mode": "max-autotune"}, "optimizer": {"implementation": "fused"},
                     "clipping": {"max_norm": 1.0, "norm_type": 1.0, "clip_value": 0.1},
                     "mixed_precision": {"tf32": False}}, hardware=h100_box(), optimizer="AdamW")
    with caplog.at_level(logging.INFO, logger="autotune.bridges.lightning"):
        lightning_bridge.trainer_kwargs(tuned)
    lines = lightning_bridge.unsupported(tuned)
    names = [line.split("=", 1)[0] for line in lines]
    # In plan order: the built-ins register by name (threads first).
    assert names == ["clipping.norm_type", "clipping.clip_value", "compile.mode",
                     "mixed_precision.tf32", "optimizer.implementation"]
    assert all("\n" not in line for line in lines)
    line = dict(zip(names, lines))
    assert "torch.compile(model, mode='max-autotune')" in line["compile.mode"]
    assert ("fused=True" in line["optimizer.implementation"]
            and "configure_optimizers" in line["optimizer.implementation"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == lines


def test_loader_settings_without_a_loader_are_stated():
    tuned = planned({"dataloader": {"num_workers": 2}})
    lines = lightning_bridge.unsupported(tuned)
    assert lines and lines[0].startswith("dataloader.num_workers=2: autotune.apply had no "
                                         "DataLoader")
    assert accelerate_bridge.unsupported(tuned)[0].startswith("dataloader.num_workers=2")


def test_accelerate_kwargs_and_what_the_loop_must_do(caplog):
    tuned = planned({**ASKED, "threads": {"intra_op": 1}})
    with caplog.at_level(logging.INFO, logger="autotune.bridges.accelerate"):
        kwargs = accelerate_bridge.accelerator_kwargs(tuned)
    assert kwargs == {"mixed_precision": "bf16", "gradient_accumulation_steps": 2}
    lines = accelerate_bridge.unsupported(tuned)
    assert [line.split("=", 1)[0] for line in lines] == ["threads.intra_op", "clipping.max_norm"]
    assert "autotune.bridges.runtime(tuned)" in lines[0]
    assert "accelerator.clip_grad_norm_(model.parameters(), 0.5)" in lines[1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == lines


def test_huggingface_arguments_from_the_plan():
    args = hf_bridge.training_arguments(planned(ASKED, optimizer="AdamW"))
    assert args["bf16"] is True and args["fp16"] is False
    assert args["gradient_accumulation_steps"] == 2 and args["max_grad_norm"] == 0.5
    assert args["torch_compile"] is False and "optim" not in args
    off = hf_bridge.training_arguments(planned())
    assert off["max_grad_norm"] == 0.0, "autotune's 'no clipping' is transformers' 0.0"
    assert off["dataloader_num_workers"] == 0 and off["dataloader_prefetch_factor"] is None
    assert off["dataloader_pin_memory"] is False, "the Trainer's default pins"
    workers = hf_bridge.training_arguments(planned({"dataloader": {"num_workers": 2}}))
    assert (workers["dataloader_num_workers"], workers["dataloader_prefetch_factor"],
            workers["dataloader_persistent_workers"]) == (2, 2, True)
    cuda = hf_bridge.training_arguments(planned({"compile": {"mode": "reduce-overhead"},
                                                 "mixed_precision": {"tf32": True},
                                                 "dataloader": {"num_workers": 0,
                                                                "pin_memory": True},
                                                 "optimizer": {"implementation": "fused"}},
                                                hardware=h100_box(), optimizer="AdamW"))
    assert cuda["tf32"] is True and cuda["dataloader_pin_memory"] is True
    assert (cuda["torch_compile"], cuda["torch_compile_mode"]) == (True, "reduce-overhead")
    assert cuda["optim"] == "adamw_torch_fused"


def test_huggingface_user_arguments_win(caplog):
    tuned = planned(ASKED)
    with caplog.at_level(logging.INFO, logger="autotune.bridges.huggingface"):
        args = hf_bridge.training_arguments(tuned, fp16=True, dataloader_num_workers=0,
                                            output_dir="out")
    assert args["fp16"] is True and "bf16" not in args
    assert args["dataloader_num_workers"] == 0 and "dataloader_prefetch_factor" not in args
    assert args["output_dir"] == "out"
    assert any("fp16=True: yours, kept" in r.getMessage() for r in caplog.records)


def test_huggingface_states_what_it_cannot_apply():
    lines = hf_bridge.unsupported(planned({"clipping": {"max_norm": 1.0, "clip_value": 0.5},
                                           "compile": {"mode": "default", "fullgraph": True},
                                           "optimizer": {"implementation": "foreach"}},
                                          optimizer="SGD"))
    assert [line.split("=", 1)[0] for line in lines] == [
        "clipping.clip_value", "compile.fullgraph", "optimizer.implementation"]
    assert "optimizers=(" in lines[2] and "SGD" in lines[2]


BRIDGES = (lightning_bridge, hf_bridge, accelerate_bridge)


def test_each_setting_has_one_row_in_a_bridges_table():
    for bridge in BRIDGES:
        names = [(row.plugin, row.key) for row in bridge.TABLE]
        assert len(names) == len(set(names)), bridge.__name__


def test_an_option_for_a_bridge_is_one_table_row(monkeypatch, caplog):
    tuned = planned({"mixed_precision": {"tf32": True}}, hardware=h100_box())
    assert lightning_bridge.unsupported(tuned)[0].startswith("mixed_precision.tf32=True: "
                                                             "Lightning has no Trainer option")
    row = Row("mixed_precision", "tf32", options=lambda value, tuned: {"tf32": bool(value)})
    monkeypatch.setattr(lightning_bridge, "TABLE", tuple(
        r for r in lightning_bridge.TABLE if (r.plugin, r.key) != (row.plugin, row.key)) + (row,))
    with caplog.at_level(logging.INFO, logger="autotune.bridges.lightning"):
        kwargs = lightning_bridge.trainer_kwargs(tuned)
    assert kwargs["tf32"] is True and lightning_bridge.unsupported(tuned) == []
    assert "mixed_precision.tf32=True: tf32=True" in [r.getMessage() for r in caplog.records]


def test_a_row_decides_between_its_two_lines():
    tuned = planned({"accumulation": {"steps": 4}, "clipping": {"max_norm": 1.0},
                     "channels_last": {"enabled": True}})
    table = (Row("accumulation", "steps", options=lambda value, tuned: {"steps": value},
                 says="{options} (from {key}={value})"),
             Row("clipping", ANY_KEY, instead="clip {key} to {value} yourself",
                 takes=lambda change, tuned: change.value > 5))
    assert options(table, tuned) == {"steps": 4}, "an any-key row sets no option"
    applied, missing = lines(table, tuned, "This trainer")
    assert applied == ["accumulation.steps=4: steps=4 (from steps=4)"]
    assert sorted(missing) == [
        "channels_last.enabled=True: applied by autotune's own engine (tuned.engine); This "
        "trainer has no equivalent, so it is not applied",        # a setting without a row
        "clipping.max_norm=1.0: clip max_norm to 1.0 yourself"]


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[bool, int]] = []

    def forward(self, x):
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last),
                          torch.get_num_threads()))
        return self.conv(x).mean()


def test_runtime_applies_threads_and_channels_last_inputs_then_restores():
    model = ConvNet()
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    tuned = planned({"channels_last": {"enabled": True}, "threads": {"intra_op": threads}},
                    model=model)
    x = torch.randn(2, 3, 8, 8)
    with runtime(tuned) as lines:
        model(x)
        model(x=x)                       # keyword inputs too
    model(x)
    assert model.seen == [(True, threads), (True, threads), (False, before)]
    assert torch.get_num_threads() == before
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(lines) == 2 and lines[1].startswith("channels_last.enabled=True")
