"""The README's python snippets run as written: "Tune and train" and "Your
own loop" here, the framework ones in tests/test_bridges_*.py (where those
frameworks are installed). A python block added to the README must be run
by one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge_helpers import readme_snippet

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

#: Headings whose one python block this module runs.
RUN_HERE = ("Tune and train", "Your own loop")
#: ``autotune.bridges.<module>`` whose README block tests/test_bridges_<module>.py runs.
BRIDGES = ("lightning", "huggingface", "accelerate")


def _section(title: str) -> str:
    """From the heading ``title`` (any level) to the next heading of the same
    or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", README, re.M)
    assert match, f"README lost its section {title!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(README, match.end())
    return README[match.start():end.start() if end else len(README)]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("title", RUN_HERE)
def test_the_snippet_runs(title: str, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    blocks = _python_blocks(_section(title))
    assert len(blocks) == 1
    exec(compile(blocks[0], f"README: {title}", "exec"), {})
    out = capsys.readouterr().out
    if title == "Your own loop":
        assert out.strip() == "4 optimizer steps"
    else:
        # The online tuning table (its header, the winner, every step of the
        # run counted), then the last epoch's summary.
        assert "GROUP" in out and "winner:" in out and "16 steps trained" in out, out
        assert "epoch 2" in out, out


def test_every_readme_python_block_is_run_by_a_test() -> None:
    run = [_python_blocks(_section(title))[0] for title in RUN_HERE]
    run += [readme_snippet(module) for module in BRIDGES]
    missing = [block for block in _python_blocks(README) if block not in run]
    assert not missing, f"README python blocks no test runs: {missing}"
