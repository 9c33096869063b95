"""The pieces of a training step the engine composes: what plugins install
(:class:`Clipping`, :class:`EagerFallback`), what happens to gradients
between ``backward()`` and ``optimizer.step()``, and the monitor protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch


class Monitor(Protocol):
    """What :meth:`Engine.fit` calls on ``monitor=`` (built by autotune's
    monitor; any object with these methods works)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def record_step(self, step: int, data_wait_s: float, step_s: float, samples: int) -> None: ...


@dataclass(frozen=True)
class Clipping:
    #: Clip the global norm to this; ``None`` records the norm, clips nothing.
    max_norm: float | None = 1.0
    norm_type: float = 2.0
    #: Also clamp each gradient element to ``[-clip_value, clip_value]``.
    clip_value: float | None = None


@dataclass(frozen=True)
class EagerFallback:
    """Installed by the compile plugin: the eager module to train when the
    compiled one fails, and who to tell (with the reason) when that happens."""

    model: torch.nn.Module
    on_fallback: Callable[[str], None]


def total_norm(grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    """The norm ``clip_grad_norm_`` would clip, without clipping."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads, norm_type)
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), norm_type) for g in grads])
    return torch.linalg.vector_norm(norms, norm_type)


def clip_gradients(params: Iterable[torch.Tensor], clipping: Clipping) -> torch.Tensor | None:
    """Clip as ``clipping`` says; returns the pre-clip global norm (None
    when no parameter has a gradient). Gradients must be unscaled already."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return None
    if clipping.max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clipping.max_norm, clipping.norm_type)
    else:
        norm = total_norm([p.grad for p in params], clipping.norm_type)
    if clipping.clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clipping.clip_value)
    return norm


def scale_gradients(params: Iterable[torch.Tensor], factor: float) -> None:
    """Multiply every gradient by ``factor`` (a window that ended early was
    divided by more micro-batches than it had)."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)
