"""The part of a plan no trainer option covers -- thread counts and
channels_last inputs -- as :class:`Runtime`, which the bridges' callbacks
start and stop and :func:`runtime` offers as a ``with`` block for a loop of
one's own (Accelerate); and :func:`lazy_callback`, which makes a bridge's
callback class on top of its framework's the first time it is asked for.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from autotune.plan.report import Kind
from autotune.plan.resources import set_threads
from autotune.workload.batches import has_conv2d, unwrap_model

__all__ = ["Runtime", "RuntimeCallback", "lazy_callback", "runtime"]


def _to_channels_last(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 4 and obj.is_floating_point():
            return obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_to_channels_last(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_channels_last(x) for x in obj)
    if isinstance(obj, Mapping):
        try:
            return type(obj)({k: _to_channels_last(v) for k, v in obj.items()})
        except TypeError:  # a mapping type that cannot be built from a dict
            return {k: _to_channels_last(v) for k, v in obj.items()}
    return obj


def _channels_last_pre_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _to_channels_last(args), _to_channels_last(kwargs)


class Runtime:
    """What no trainer option covers, applied around training and undone
    after it: the threads plugin's thread counts (``torch.set_num_threads``,
    the inter-op pool, OMP/MKL for children) and channels_last (the
    module's weights, and 4-D floating-point tensors passed to its forward,
    through a forward pre-hook).

    ``start(module)`` applies and returns one line per applied setting;
    ``stop()`` restores the thread counts and removes the hook (weights stay
    channels_last, as ``autotune.apply`` leaves them). Starting again
    stops first."""

    def __init__(self, tuned: Any, log: logging.Logger, when: str = "at the end") -> None:
        self.tuned = tuned
        self.log = log
        self.when = when
        self._undo: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        return bool(self._undo)

    def start(self, module: Any = None) -> list[str]:
        self.stop()
        lines = self._threads() + self._channels_last(module)
        for line in lines:
            self.log.info("%s", line)
        return lines

    def stop(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _threads(self) -> list[str]:
        values = self.tuned.plan.values("threads")
        intra, inter = values.get("intra_op"), values.get("inter_op")
        set_env = bool(values.get("set_env"))
        if intra is None and inter is None:
            return []
        lines: list[str] = []

        def note(kind: Any, message: str) -> None:
            if kind is Kind.WARNING:
                self.log.warning("threads: %s", message)
            else:
                lines.append(f"threads: {message}")

        undo = set_threads(intra, inter, set_env, note)
        self._undo.append(undo)
        return [line.replace("(restored at close)", f"(restored {self.when})") for line in lines]

    def _channels_last(self, module: Any) -> list[str]:
        if not self.tuned.plan.get("channels_last", "enabled", False):
            return []
        module = unwrap_model(self.tuned.model if module is None else module)
        if not has_conv2d(module):
            return ["channels_last.enabled=True: the model has no Conv2d, memory format left as is"]
        module.to(memory_format=torch.channels_last)
        handle = module.register_forward_pre_hook(_channels_last_pre_hook, with_kwargs=True)
        self._undo.append(handle.remove)
        return ["channels_last.enabled=True: weights channels_last; 4-D floating-point inputs to "
                f"{type(module).__name__}.forward converted by a forward pre-hook "
                f"(removed {self.when})"]


@contextmanager
def runtime(tuned: Any, module: Any = None,
            log: logging.Logger | None = None) -> Iterator[list[str]]:
    """``with runtime(tuned):`` around a training loop of your own: the
    planned thread counts and channels_last inputs of ``module`` (default:
    ``tuned.model``) inside the block, restored after it. Yields the lines
    of what was applied (also logged at INFO)."""
    state = Runtime(tuned, log or logging.getLogger("autotune.bridges"),
                    when="when the with block ends")
    try:
        yield state.start(module)
    finally:
        state.stop()


# -- the bridges' callbacks --------------------------------------------------------


class RuntimeCallback:
    """What a bridge's callback is, whatever its framework: it holds
    ``tuned`` and a :class:`Runtime`, and from the framework's start hook to
    its end hook (``begin`` and ``end``, called by the subclass's hooks)
    applies the runtime, after one WARNING line per way the framework's
    arguments differ from the plan. A subclass names its ``logger`` and
    ``when`` (how the lines say the runtime is undone)."""

    logger: logging.Logger = logging.getLogger("autotune.bridges")
    when: str = "at the end"

    def __init__(self, tuned: Any) -> None:
        super().__init__()
        self.tuned = tuned
        self.runtime = Runtime(tuned, self.logger, when=self.when)

    def begin(self, module: Any, differences: Iterable[str]) -> None:
        for line in differences:
            self.logger.warning("%s", line)
        self.runtime.start(module)

    def end(self) -> None:
        self.runtime.stop()


def lazy_callback(module: str, name: str, base: Callable[[], type],
                  body: type) -> Callable[[str], Any]:
    """The ``__getattr__`` of bridge ``module``, whose attribute ``name`` is
    the class ``body`` on top of the framework's callback class ``base()``.

    The class is made -- and the framework imported -- on first use, then
    kept, so the rest of the bridge works without the framework; it is named
    as the module attribute it is, so pickle finds it there."""

    @functools.lru_cache(maxsize=None)
    def make() -> type:
        return type(name, (body, base()), {"__module__": module, "__qualname__": name,
                                           "__doc__": body.__doc__})

    def __getattr__(attribute: str) -> Any:
        if attribute == name:
            return make()
        raise AttributeError(f"module {module!r} has no attribute {attribute!r}")

    return __getattr__
