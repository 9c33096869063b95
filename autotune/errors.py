"""Exceptions. Each says what was wrong and, where it helps, what to do."""

from __future__ import annotations


class AutotuneError(Exception):
    """Base class: every error autotune raises on bad input derives from it.
    The CLI turns these into a one-line message and exit code 2."""


class ProfileError(AutotuneError):
    """A profile file is malformed, or a profile name is unknown."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ""
        if file:
            where = f"{file}"
            if key:
                where += f": key '{key}'"
            where += ": "
        super().__init__(where + message)


class PluginError(AutotuneError):
    """An unknown plugin name, or a plugin that failed in strict mode."""


class PlanError(AutotuneError):
    """An override or a serialised plan does not fit the plan."""


class TrainingError(AutotuneError):
    """The training engine cannot go on: a malformed batch, a DataLoader
    worker that died, an engine used after close()."""


class NonFiniteLoss(ArithmeticError):
    """A loss became NaN or infinite while a setting was being measured or
    tried: that setting is disqualified (the user's weights are not
    touched by the step that saw it)."""
