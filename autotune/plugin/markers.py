"""The markers of the plugin contract: pluggy's ``hookspec`` / ``hookimpl``
for the project ``autotune``, and :func:`checked_by`, with which a hook's
specification names the function that checks its answers.

Small and free of autotune imports on purpose: every spec module, the plugin
SDK (``autotune.sdk.hookimpl``) and the manager import it, and a plugin that
only needs ``hookimpl`` pays for nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import pluggy

PROJECT_NAME = "autotune"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The attribute :func:`checked_by` sets on a hook specification.
CHECK_ATTRIBUTE = f"{PROJECT_NAME}_check"

F = TypeVar("F", bound=Callable[..., Any])


def checked_by(check: Callable[..., Any]) -> Callable[[F], F]:
    """Name the function that checks each plugin's answer to this hook
    (``check(answer, asked) -> answer or None``, see
    :mod:`autotune.plugin.answers`). The manager's generic calls read it, so
    a new hook brings its own check and the manager needs no new code."""
    def mark(spec: F) -> F:
        setattr(spec, CHECK_ATTRIBUTE, check)
        return spec
    return mark
