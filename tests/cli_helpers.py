"""Shared by the command-line tests."""

from __future__ import annotations

from autotune.cli import main


def run_error(capsys, *argv: str) -> str:
    """Run a command that must fail with exit 2 and exactly one line on stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors exit directly
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err
