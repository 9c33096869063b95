"""Argument types the commands share. A value out of range is refused by
argparse at parse time, as one line naming the option and what was passed
(``argument --interval: must be a number of seconds > 0, got nan``), before
a command imports anything heavy or starts sampling."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable


def seconds(text: str) -> float:
    """A finite number of seconds > 0 (``nan`` and ``inf`` are refused:
    ``inf`` overflowed the sampler's clock, ``nan`` never waited)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def at_least(low: int) -> Callable[[str], int]:
    """A whole number >= ``low``."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text}")
        return value
    whole.__name__ = f"whole number >= {low}"
    return whole


def output_file(text: str) -> str:
    """A file a command will write (``--plot PNG``): refused now, not after
    the run it plots, when it is a directory, has no extension (matplotlib
    would write ``NAME.png`` instead), or lies under a file or a directory
    this user cannot write; missing parent directories are created later."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name, "
                                         f"e.g. {path / 'plot.png'}")
    if not path.suffix:
        raise argparse.ArgumentTypeError(f"{text} has no extension; e.g. {text}.png")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: no permission in {parent}")
    return text
