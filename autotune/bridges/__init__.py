"""Bridges from an autotune plan to the trainers users already have.

``autotune.apply(model, loader)`` makes the plan and rebuilds the loader;
a bridge turns the rest of the plan into what a trainer takes natively,
and states in one line each planned setting it cannot apply:

* :mod:`autotune.bridges.lightning` -- ``trainer_kwargs(tuned)`` for
  ``lightning.Trainer`` and ``AutotuneCallback(tuned)``;
* :mod:`autotune.bridges.huggingface` -- ``training_arguments(tuned)`` for
  ``transformers.TrainingArguments`` and ``AutotuneTrainerCallback(tuned)``;
* :mod:`autotune.bridges.accelerate` -- ``accelerator_kwargs(tuned)`` for
  ``accelerate.Accelerator``.

Each imports its framework only when it needs it, so ``import autotune``
(and this package) never does. Each logs, on ``autotune.bridges.<name>``,
one INFO line per setting it applies and one WARNING line per setting it
cannot; nothing is printed.

This module holds what they share: which planned settings differ from
PyTorch's behaviour (:func:`changes`), and :class:`Runtime`, the part no
trainer option covers -- thread counts and channels_last inputs -- which
the callbacks start and stop, and :func:`runtime` offers as a ``with``
block for a loop of one's own (Accelerate).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = ["Change", "Runtime", "changes", "describe", "device_type", "report", "runtime"]


@dataclass(frozen=True)
class Change:
    """One planned setting whose value is not PyTorch's behaviour."""

    plugin: str
    key: str
    value: Any
    #: What PyTorch does without autotune (the plugin's knob ``off``).
    off: Any = None

    @property
    def name(self) -> str:
        return f"{self.plugin}.{self.key}"

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}"


def changes(tuned: Any) -> list[Change]:
    """The settings of ``tuned.plan`` that differ from PyTorch's behaviour,
    in plan order: a bridge applies these or says it cannot.

    "PyTorch's behaviour" is each plugin's own declaration (its knobs'
    ``off``; for loader settings, the loader the user gave
    ``autotune.apply``). Settings of a whole process (cross-validation's
    fold schedule) are not a trainer's business and are left out. A key
    without a knob counts as a change when its value is set (not None or
    False)."""
    from autotune.plan.knobs import PROCESS

    plan = tuned.plan
    try:
        knobs = tuned.manager.knobs(tuned.context, plan)
    except Exception:  # noqa: BLE001 - a plan without its manager still bridges
        knobs = {}
    out: list[Change] = []
    for plugin, key, setting in plan.rows():
        knob = knobs.get(plugin, {}).get(key)
        if knob is None:
            if setting.value not in (None, False):
                out.append(Change(plugin, key, setting.value))
            continue
        if knob.phase == PROCESS or setting.value == knob.off:
            continue
        out.append(Change(plugin, key, setting.value, knob.off))
    return out


def device_type(tuned: Any) -> str | None:
    """``"cpu"``, ``"cuda"``...: the device ``autotune.apply`` planned for
    (None when unknown)."""
    device = getattr(tuned, "device", None)
    return getattr(device, "type", None)


def describe(change: Change, how: str) -> str:
    """One line: the setting, then what happens to it."""
    return f"{change}: {how}"


def report(log: logging.Logger, applied: Iterable[str], unsupported: Iterable[str]) -> None:
    """One INFO line per applied setting, one WARNING line per setting not applied."""
    for line in applied:
        log.info("%s", line)
    for line in unsupported:
        log.warning("%s", line)


def split_lines(tuned: Any,
                line: Callable[[Change, Any], tuple[bool, str]]) -> tuple[list[str], list[str]]:
    """``(applied, unsupported)``: each planned change's line, sorted by
    whether the bridge's ``line(change, tuned)`` says it applies."""
    applied: list[str] = []
    missing: list[str] = []
    for change in changes(tuned):
        ok, text = line(change, tuned)
        (applied if ok else missing).append(text)
    return applied, missing


def generic_hint(change: Change, trainer: str) -> str:
    """The line for a setting no bridge knows (a third-party plugin's)."""
    return describe(change, f"applied by autotune's own engine (tuned.engine); {trainer} has no "
                            "equivalent, so it is not applied")


# -- what the callbacks apply: threads, channels_last inputs -----------------------


def _to_channels_last(obj: Any) -> Any:
    import torch

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
        from autotune.plan.report import Kind
        from autotune.plan.resources import set_threads

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
        import torch

        from autotune.workload.batches import has_conv2d, unwrap_model

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
