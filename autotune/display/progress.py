"""Progress bars for training loops: tqdm, throttled, and easy to silence."""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm.auto import tqdm

#: Redraw at most this often (seconds): a bar updated every micro-step of a
#: fast model would otherwise cost more than the step itself.
MIN_INTERVAL_S = 0.5
#: Environment variables CI systems set; no bar is drawn there.
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")
#: ``AUTOTUNE_PROGRESS=0`` silences bars; ``=1`` forces them even without a TTY.
PROGRESS_ENV = "AUTOTUNE_PROGRESS"


def progress_enabled(requested: bool = True, stream: IO[str] | None = None) -> bool:
    """Whether to draw bars: asked for, not in CI, and writing to a terminal.

    ``$AUTOTUNE_PROGRESS`` overrides the detection both ways.
    """
    if not requested:
        return False
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if any(os.environ.get(name) for name in CI_VARIABLES):
        return False
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar(total: int | None, desc: str, *, enabled: bool, leave: bool = False,
        unit: str = "batch", file: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar with the redraw rate bounded; a no-op object when disabled."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=leave, unit=unit,
                mininterval=MIN_INTERVAL_S, dynamic_ncols=True, file=file, **kwargs)
