"""What the engine's events exchange with the objects around it: the
monitor protocol :meth:`Engine.fit` reports to, :class:`Recovery` (the
answer to ``autotune_step_failed``) and :class:`LiveHook`, what changes an
engine's settings during its run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


class Monitor(Protocol):
    """What :meth:`Engine.fit` calls on ``monitor=`` (built by autotune's
    monitor; any object with these methods works)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None: ...


class LiveHook(Protocol):
    """What an engine calls on each of its live adapters (see
    :mod:`autotune.live.adapter`): at the start of every epoch of
    :meth:`Engine.fit`, after the plugins' ``autotune_epoch_start``, and
    after every optimizer step, after ``autotune_after_optimizer_step``.
    Whoever builds the engine decides which it has (``Engine(live=...)``):
    by default each plugin's ``autotune_live_adapter``; a tuner's trial
    passes none, so what it measures runs as planned.

    An adapter may also have (the engine looks for them by name):
    ``mid_epoch = True`` -- it changes settings between any two steps, so
    the loader is made switchable mid-epoch; ``recover(error, phase) ->
    bool`` -- a step or batch failed: take back the change being tried and
    say True, so it runs once more; ``watches_loss() -> bool`` -- True
    while it tries a change it may take back: each loss is then checked and
    a NaN is such a failure, raised before backward
    (:mod:`autotune.engine.guard`); ``status() -> str`` -- what it is doing,
    for the progress bar."""

    def at_epoch_start(self, epoch: int) -> None: ...
    def at_step(self) -> None: ...


@dataclass(frozen=True)
class Recovery:
    """A plugin changed the engine so a failed step can run again (the
    compile plugin swaps in the eager model). The engine retries the step:
    when the retry raises too, it calls :attr:`undo` (the failure was not
    the plugin's to fix) and the retry's error propagates; when it works, it
    calls :attr:`done` with a one-line reason for the report and plan."""

    undo: Callable[[], None]
    done: Callable[[str], None]
