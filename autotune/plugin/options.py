"""Helpers every plugin uses to read its profile options."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, TypeVar

from autotune.errors import ProfileError

T = TypeVar("T")


def parse_options(plugin: str, cls: type[T], values: Mapping[str, Any]) -> T:
    """Build a plugin's frozen ``Options`` from profile values.

    An unknown key is an error that names the plugin and the known keys, so
    a typo in a profile is never silently ignored.
    """
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ProfileError(f"unknown option(s) {unknown} for plugin {plugin!r}; "
                           f"known options: {sorted(fields)}")
    return cls(**values)


def clamp_to(value: int, bounds: int | Sequence[int] | None) -> int:
    """Clamp ``value`` into a profile hint: an exact int or ``[min, max]``."""
    if bounds is None:
        return value
    if isinstance(bounds, int):
        return bounds
    lo, hi = bounds
    return max(lo, min(hi, value))


def describe_bounds(bounds: int | Sequence[int]) -> str:
    return str(bounds) if isinstance(bounds, int) else f"{bounds[0]}-{bounds[1]}"
