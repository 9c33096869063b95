"""What the engine's step events exchange with plugins: the monitor
protocol :meth:`Engine.fit` reports to, and :class:`Recovery`, the answer
to ``autotune_step_failed``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


class Monitor(Protocol):
    """What :meth:`Engine.fit` calls on ``monitor=`` (built by autotune's
    monitor; any object with these methods works)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None: ...


@dataclass(frozen=True)
class Recovery:
    """A plugin changed the engine so a failed step can run again (the
    compile plugin swaps in the eager model). The engine retries the step:
    when the retry raises too, it calls :attr:`undo` (the failure was not
    the plugin's to fix) and the retry's error propagates; when it works, it
    calls :attr:`done` with a one-line reason for the report and plan."""

    undo: Callable[[], None]
    done: Callable[[str], None]
