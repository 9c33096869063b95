"""Shared by tests/test_bridges*.py: the README's bridge snippets, and a
``Tuned``-like object made from a plan alone (no model is transformed, so
nothing compiles)."""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Mapping

import torch

from autotune import Workload, make_plan
from autotune.testing import cpu_laptop

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Lightning, Hugging Face Trainer, Accelerate"


def readme_snippet(module: str) -> str:
    """The README's python block for ``autotune.bridges.<module>``."""
    text = README.read_text()
    assert SECTION in text, f"README lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)
              if f"autotune.bridges.{module}" in b]
    assert len(blocks) == 1, f"expected one README snippet for autotune.bridges.{module}"
    return blocks[0]


def planned(overrides: Mapping[str, Mapping[str, Any]] | None = None, *, hardware: Any = None,
            optimizer: str | None = None, loader: Any = None, model: Any = None) -> Any:
    """What the bridges read from a ``Tuned``: plan, context, manager, loader,
    model. Unless the overrides say otherwise, the plan keeps this process's
    thread count and, without a loader, loading in the main process (there
    is no loader to rebuild): what is left are the settings a test asks for."""
    workload = Workload.inspect(model, loader)
    if optimizer is not None:
        workload = dataclasses.replace(workload, optimizer=optimizer)
    overrides = dict(overrides or {})
    if loader is None:
        overrides.setdefault("dataloader", {"num_workers": 0, "pin_memory": False})
    overrides.setdefault("threads", {"intra_op": torch.get_num_threads()})
    made = make_plan(hardware=hardware or cpu_laptop(), workload=workload, overrides=overrides)
    return types.SimpleNamespace(plan=made.plan, context=made.context, manager=made.manager,
                                 loader=loader, model=model)
