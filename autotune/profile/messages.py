"""How a value or a key appears in a one-line error: short and escaped."""

from __future__ import annotations

import reprlib
from typing import Any

#: Shows a long value as its start: "[1, 1, 1, 1, 1, 1, ...]".
SHORT = reprlib.Repr()
SHORT.maxstring = SHORT.maxother = 60


def clip(value: Any, limit: int = 80) -> str:
    """A value or key as it may appear in a one-line message: short, escaped."""
    text = value if isinstance(value, str) else SHORT.repr(value)
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[:limit - 3] + "..."
