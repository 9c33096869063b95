"""The README's "Use it with your code" snippets run as written (the
framework ones are run by tests/test_bridges_*.py where those are installed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"### {title}\n")
    end = README.index("\n### ", start + 1)
    return README[start:end]


@pytest.mark.parametrize("title", ["The engine", "Your own loop"])
def test_the_snippet_runs(title: str, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    blocks = re.findall(r"```python\n(.*?)```", _section(title), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], f"README: {title}", "exec"), {})
    out = capsys.readouterr().out
    if title == "Your own loop":
        assert out.strip() == "4 optimizer steps"
    else:
        assert "epoch 2" in out
