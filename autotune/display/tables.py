"""Plain-text tables: columns padded to their widest cell, long cells
wrapped. Library code (the tuner's report, ``autotune bench``) and the CLI
print with these; :mod:`autotune.cli.output` re-exports them."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None,
          indent: str = "") -> str:
    """Columns padded to their widest cell; the last column is not padded,
    so a long reason does not push every line out to its width."""
    text_rows = [[("-" if cell is None else str(cell)) for cell in row] for row in rows]
    if headers:
        text_rows.insert(0, [h.upper() for h in headers])
    if not text_rows:
        return ""
    ncols = max(len(r) for r in text_rows)
    widths = [max((len(r[i]) for r in text_rows if i < len(r)), default=0) for i in range(ncols)]
    lines = []
    for row in text_rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def wrapped_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, width: int = 120,
                  wrap: Sequence[int] = (), indent: str = "") -> str:
    """Like :func:`table`, but at most ``width`` columns wide: the columns
    numbered in ``wrap`` (long text: settings, reasons) are narrowed and their
    cells wrapped onto continuation lines, the other columns kept whole."""
    text_rows = [[("-" if cell is None else str(cell)) for cell in row] for row in rows]
    header = [h.upper() for h in headers]
    ncols = len(header)
    widths = [max([len(header[i])] + [len(r[i]) for r in text_rows if i < len(r)])
              for i in range(ncols)]
    wrap = [i % ncols for i in wrap]
    fixed = sum(w for i, w in enumerate(widths) if i not in wrap) + 2 * (ncols - 1) + len(indent)
    room = width - fixed
    natural = sum(widths[i] for i in wrap)
    if wrap and natural > room:
        floor = 12
        share = max(room, floor * len(wrap))
        for i in wrap:  # each wrapped column gets room in proportion to its text
            widths[i] = max(floor, min(widths[i], share * widths[i] // max(natural, 1)))
    lines = []
    for row in [header, *text_rows]:
        cells = [textwrap.wrap(cell, widths[i], break_long_words=True) or [""]
                 if i in wrap else [cell] for i, cell in enumerate(row)]
        for n in range(max(len(c) for c in cells)):
            parts = [(c[n] if n < len(c) else "").ljust(widths[i]) if i < len(cells) - 1
                     else (c[n] if n < len(c) else "") for i, c in enumerate(cells)]
            lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, Any]], indent: str = "") -> str:
    """``label  value`` lines with the labels aligned."""
    return table([(f"{label}", value) for label, value in pairs], indent=indent)
