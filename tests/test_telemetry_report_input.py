"""`autotune report` on bad input: a corrupt line in the middle of a timeline
is named (file:line and why) on stderr and the report says it is partial;
a missing, empty or directory path and an unwritable plot are one line and
exit 2."""

from __future__ import annotations

import json

import pytest

from autotune.cli import main


def sample(i: int) -> dict:
    return {"type": "sample", "time": 1_700_000_000.0 + i, "cpu_percent": 50.0,
            "memory_used_bytes": 1e9, "memory_total_bytes": 8e9, "cores": 2}


def write(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def corrupt(tmp_path):
    """Six good samples; line 4 is cut in the middle of a number."""
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(sample(i)) for i in range(6)]
    lines[3] = '{"type": "sample", "time": 17000'
    write(path, lines)
    return path


def test_a_corrupt_middle_line_is_named_and_the_report_is_partial(capsys, corrupt):
    assert main(["report", str(corrupt)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"autotune: warning: {corrupt}:4: not a JSON line b'{{\"type\": \"sample\", \"time\": "
        "17000'",
        f"autotune: warning: {corrupt}: the report is partial (1 unreadable line)"]
    assert "Duration  5.0 s, 5 samples" in out
    assert "Partial   yes: the summary and diagnosis leave out what was skipped\n" in out


def test_json_report_says_partial_and_stderr_still_names_the_line(capsys, corrupt):
    assert main(["report", str(corrupt), "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["partial"] is True and data["skipped"]["lines"] == 1
    assert f"{corrupt}:4: not a JSON line" in err


def test_a_clean_timeline_is_not_partial_and_says_nothing_on_stderr(capsys, tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, [json.dumps(sample(i)) for i in range(3)])
    assert main(["report", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["partial"] is False and err == ""
    assert main(["report", str(path)]) == 0
    assert "Partial" not in capsys.readouterr().out


def test_problems_past_the_listed_ones_are_counted(capsys, tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, [json.dumps(sample(0)), *["garbage"] * 8, json.dumps(sample(9))])
    assert main(["report", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6  # five named lines, then the count
    assert err[-1] == (f"autotune: warning: {path}: the report is partial "
                       "(8 unreadable lines; 3 more not listed)")


def one_line_error(capsys, *argv: str) -> str:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_empty_or_directory_timelines_are_one_line_exit_2(capsys, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    assert one_line_error(capsys, "report", str(tmp_path / "nope.jsonl")) == (
        f"autotune: error: cannot read timeline {tmp_path / 'nope.jsonl'}: "
        "No such file or directory\n")
    for name in ("empty.jsonl", "blank.jsonl"):
        assert one_line_error(capsys, "report", str(tmp_path / name)) == (
            f"autotune: error: {tmp_path / name}: no usable samples or steps in this timeline\n")
    assert one_line_error(capsys, "report", str(tmp_path)) == (
        f"autotune: error: cannot read timeline {tmp_path}: Is a directory\n")


def test_a_plot_that_fails_to_write_is_one_line_exit_2(capsys, monkeypatch, corrupt, tmp_path):
    import autotune.telemetry.plot as plot

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plot, "plot_timeline", refuse)
    png = tmp_path / "p.png"
    try:
        code = main(["report", str(corrupt), "--plot", str(png)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[-1] == f"autotune: error: --plot {png}: cannot write it (Permission denied)"
