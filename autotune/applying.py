"""Apply a plan that is already made: the model moved to its device, the
plugins' ``autotune_apply_model`` / ``autotune_apply_loader`` hooks, and
the :class:`Tuned` result whose :meth:`Tuned.engine` trains with it.

The third stage of :func:`autotune.apply`, on its own: the tuner applies
each candidate plan here, ``cross_validate`` each fold's, and
``autotune.distributed.prepare`` each rank's. It depends on the plan, the
plugin manager and the engine, never on the facade (:mod:`autotune.api`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from autotune.engine.engine import Engine
from autotune.workload.batches import model_device
from autotune.plugin.context import Context
from autotune.errors import AutotuneError
from autotune.plugin.manager import PluginManager
from autotune.plan.plan import Plan
from autotune.profile import Recommendation
from autotune.plan.report import Kind, Report

log = logging.getLogger("autotune.api")


@dataclass(frozen=True)
class Tuned:
    """What :func:`autotune.apply` returns: the transformed model and loader, the plan
    they were made with, and a report of what each plugin did."""

    #: The model to train: the user's module (moved to :attr:`device`, maybe
    #: converted to channels_last in place), maybe wrapped by torch.compile.
    model: torch.nn.Module
    #: The rebuilt DataLoader (or the user's, when nothing changed); None
    #: when no loader was given.
    loader: Any
    plan: Plan
    report: Report
    context: Context
    manager: PluginManager
    device: torch.device
    #: Which profile matched and why; None when the plan was given directly.
    recommendation: Recommendation | None = None
    #: The measured-tuning report (trials, winner, break-even); None when
    #: nothing was measured; with ``tune="online"``, the online search
    #: (``OnlineTuning``: its table fills while the engine trains). See
    #: docs/tuning.md.
    tuning: Any = None

    #: How a batch becomes a loss (``loss_fn``, ``step_fn``, ``batch_size_fn``
    #: given to apply); :meth:`engine` uses it unless given others.
    contract: Any = None

    def engine(self, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
               **kwargs: Any) -> Engine:
        """The training engine with this plan applied. ``kwargs`` go to
        :class:`~autotune.engine.engine.Engine` (``step_fn``, ``batch_size_fn``,
        ``scheduler``, ``progress``...); without ``loss_fn`` and ``step_fn``,
        the ones given to :func:`autotune.apply` (else the model's own loss).
        Close it (or use ``with``) to undo the global settings it made."""
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("report", self.report)
        attach = getattr(self.tuning, "attach", None)
        if attach is not None:
            # Online tuning (apply(tune="online")): its search runs in this engine.
            kwargs.setdefault("tuners", (attach,))
        if loss_fn is None and kwargs.get("step_fn") is None and self.contract is not None:
            loss_fn = self.contract
            if kwargs.get("batch_size_fn") is not None:
                loss_fn = type(self.contract).of(self.contract,
                                                 batch_size_fn=kwargs.pop("batch_size_fn"))
        return Engine(self.model, optimizer, loss_fn, self.plan, manager=self.manager,
                      context=self.context, **kwargs)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> the first CUDA GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise AutotuneError(f"device={device!r} is not a torch device: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AutotuneError(f"device={device!r} was asked for, but CUDA is not available "
                            "(torch.cuda.is_available() is False)")
    return resolved


def apply_plan(model: torch.nn.Module, loader: Any, plan: Plan, *, context: Context,
               manager: PluginManager, device: str | torch.device | None = None,
               recommendation: Recommendation | None = None,
               report: Report | None = None,
               skip_model_hooks: Iterable[str] = ()) -> Tuned:
    """Apply an existing plan: move the model to ``device`` (in place, so
    an optimizer built on its parameters stays valid), then run the
    plugins' apply hooks. The tuner calls this for each candidate plan.

    :param skip_model_hooks: plugins whose ``autotune_apply_model`` is not
        called (``distributed.prepare``: those that wrap the DDP module)."""
    _check_model(model)
    target = resolve_device(device)
    report = report if report is not None else Report()
    if model_device(model) != target:
        model.to(target)
    failed_before = set(manager.not_loaded_reasons())
    transformed = manager.apply_model(model, plan, context, report, skip=skip_model_hooks)
    new_loader = manager.apply_loader(loader, plan, context, report) if loader is not None else None
    for name, why in manager.not_loaded_reasons().items():
        if name not in failed_before and name in plan:
            report.add(name, Kind.FALLBACK, f"left out: {why}; its part stays PyTorch's default")
    for name, why in plan.disabled.items():
        report.add(name, Kind.SKIPPED, f"{why}: its part stays PyTorch's default")
    log.info("applied plan (profile %s) on %s: %d events", plan.profile, target, len(report))
    return Tuned(model=transformed, loader=new_loader, plan=plan, report=report, context=context,
                 manager=manager, device=target, recommendation=recommendation)


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise AutotuneError(f"apply: model must be a torch.nn.Module, got {type(model).__name__}")
