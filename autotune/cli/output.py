"""What every subcommand prints: aligned tables for people, JSON for tools,
and plugin warnings as one line each."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from typing import Any, Iterator, TextIO

# The tables are library code (the tuner prints them too); re-exported here.
from autotune.display.tables import key_values, table, wrapped_table


def print_json(data: Any, out: TextIO | None = None) -> None:
    json.dump(data, out or sys.stdout, indent=2, sort_keys=False)
    (out or sys.stdout).write("\n")


@contextlib.contextmanager
def warnings_as_lines(err: TextIO | None = None) -> Iterator[None]:
    """Print each warning raised inside as ``autotune: warning: ...``, one
    line, instead of Python's two-line file:line form."""
    with warnings.catch_warnings(record=True) as caught:
        # Plugin warnings every time (a second make_plan in one process
        # would otherwise stay silent); other categories keep their filters.
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                line = str(w.message).replace("\n", " ")
                if line not in seen:
                    seen.add(line)
                    print(f"autotune: warning: {line}", file=err or sys.stderr)


__all__ = ["key_values", "print_json", "table", "warnings_as_lines", "wrapped_table"]
