"""The time budget of measured tuning, and trials that stop when it runs out.

A budget is a promise: everything :func:`autotune.apply` measures
(batch-size search, baseline, trials, rechecks, confirmation) ends within
``budget_s`` plus :data:`TOLERANCE_S`. Most trials are bounded in advance
(their cost is estimated from the trials so far), but some cannot be: the
first step of an unknown model, a ``torch.compile`` whose compilation time
nobody knows. So every trial runs in a worker thread under
:func:`run_bounded`:

* at each training step the trial checks the deadline itself
  (:meth:`Budget.check`) and stops with :class:`BudgetStop`;
* a step that is still running at the deadline (compilation, a long first
  step) gets :class:`BudgetStop` raised inside the worker thread
  asynchronously (``PyThreadState_SetAsyncExc``), at the next Python
  bytecode it runs -- inside dynamo/inductor that is within a fraction of a
  second; a native call (one long convolution, one C++ compiler run) is
  waited for. The exception is re-sent every second until the thread ends,
  in case something swallowed it.

The caller's thread only waits, so Ctrl-C reaches it at once; it is passed
on to the trial the same way, and re-raised once the trial has cleaned up.
The trial's own ``finally`` blocks (engine close, loader shutdown) run in
either case, and the caller restores the snapshot afterwards.
"""

from __future__ import annotations

import ctypes
import importlib._bootstrap as bootstrap
import logging
import math
import threading
import time
from typing import Any, Callable, TypeVar

from autotune.errors import AutotuneError

log = logging.getLogger("autotune.tuner")

#: The stated tolerance: apply(budget_s=B) returns within B + this, plus
#: the time a native call in flight at the deadline takes to return.
TOLERANCE_S = 5.0
#: How often the waiting thread looks at the deadline.
POLL_S = 0.1
#: How often BudgetStop is sent again to a trial that has not stopped.
RESEND_S = 1.0

T = TypeVar("T")


class BudgetStop(BaseException):
    """The budget ran out during a trial. A ``BaseException``, like
    ``KeyboardInterrupt``, so ``except Exception`` in user or library code
    does not swallow it."""


class Budget:
    """Seconds left of a budget (``None``: unlimited), on a monotonic clock."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds is not None and (not isinstance(seconds, (int, float))
                                    or isinstance(seconds, bool)
                                    or not math.isfinite(seconds) or seconds <= 0):
            raise AutotuneError(f"budget_s must be a number of seconds > 0 (or None for no "
                                f"limit), got {seconds!r}")
        self.seconds = None if seconds is None else float(seconds)
        self.clock = clock
        self.started = clock()
        self.exhausted = False

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    @property
    def deadline(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        """Raise :class:`BudgetStop` once the deadline has passed."""
        if self.expired():
            self.exhausted = True
            raise BudgetStop


def _importing() -> bool:
    """True while some thread is importing a module. An exception raised into
    an import leaves a half-initialised module behind (torch imports much of
    its compiler lazily, during the first compile), so a stop waits for it."""
    locks = getattr(bootstrap, "_module_locks", None)
    return bool(locks)


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> bool:
    if thread.ident is None:
        return False
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                      ctypes.py_object(exc_type))
    return done == 1


def run_bounded(fn: Callable[[], T], budget: Budget | None, *, name: str = "autotune-trial",
                stop_at: float | None = None,
                stoppable: Callable[[], bool] = lambda: True) -> T:
    """Run ``fn()`` in a worker thread; stop it with :class:`BudgetStop` at
    ``stop_at`` (a ``budget.clock`` time; default: the budget's deadline)
    unless ``stoppable()`` says it is past the point of stopping (cleaning
    up). Returns what ``fn`` returned; re-raises what it raised
    (``BudgetStop`` when stopped), and ``KeyboardInterrupt`` after passing
    Ctrl-C on."""
    deadline = stop_at if stop_at is not None else (budget.deadline if budget else None)
    clock = budget.clock if budget is not None else time.monotonic
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    interrupted = False
    last_sent: float | None = None
    while worker.is_alive():
        try:
            worker.join(POLL_S)
        except KeyboardInterrupt:
            interrupted = True
            if stoppable():
                _raise_in(worker, KeyboardInterrupt)
            continue
        if not worker.is_alive() or deadline is None:
            continue
        now = clock()
        if (now >= deadline and (last_sent is None or now - last_sent >= RESEND_S)
                and stoppable() and not _importing()):
            if last_sent is None:
                log.info("budget ran out during %s: stopping it", name)
            elif now - last_sent > 10 * RESEND_S:
                log.warning("%s has not stopped %.0f s after its deadline (a native call in "
                            "flight?); waiting for it", name, now - deadline)
            if budget is not None:
                budget.exhausted = True
            _raise_in(worker, BudgetStop)
            last_sent = now
    if interrupted:
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
