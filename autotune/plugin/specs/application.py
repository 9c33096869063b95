"""Application: the hooks that change the user's objects according to the
final plan -- the model, the DataLoader, the optimizer -- and get a plugin
ready to take part in an engine's steps.

``autotune_apply_model`` and ``autotune_apply_loader`` run on apply; each
plugin receives the previous plugin's result. ``autotune_apply_optimizer``
then ``autotune_setup_engine`` run whenever an
:class:`~autotune.engine.engine.Engine` is built (the final engine and every
measured trial).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotune.plugin import answers
from autotune.plugin.markers import checked_by, hookspec

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import DataLoader

    from autotune.plan.plan import Plan
    from autotune.plan.report import Report
    from autotune.plugin.context import Context


@hookspec
def autotune_apply_model(model: "torch.nn.Module", plan: "Plan", context: "Context",
                         report: "Report") -> "torch.nn.Module | None":
    """Transform the model according to the plan (memory format, compile...).

    Called on apply, once per plugin in the plan, in plugin order
    (``tryfirst`` implementations first, ``trylast`` ones last, registration
    order otherwise: a transform marked ``tryfirst`` runs before compile);
    each plugin receives the model returned by the previous one.

    :param model: the model as transformed so far.
    :param plan: the final plan; read your own settings with
        ``plan.values(NAME)`` (empty when disabled).
    :param context: hardware, profile and workload.
    :param report: record what was done (or why not) with
        ``report.add(NAME, kind, message)``; shared with the engine.
    :return: the transformed model, or ``None`` to leave it unchanged.
    """


@hookspec
def autotune_apply_loader(loader: "DataLoader", plan: "Plan", context: "Context",
                          report: "Report") -> "DataLoader | None":
    """Rebuild the DataLoader according to the plan.

    Called on apply, once per plugin; each receives the previous result.

    :param loader: the DataLoader as rebuilt so far.
    :param plan: the final plan.
    :param context: hardware, profile and workload.
    :param report: as for ``autotune_apply_model``.
    :return: the new DataLoader, or ``None`` to leave it unchanged.
    """


@hookspec
@checked_by(answers.optimizer)
def autotune_apply_optimizer(optimizer: "torch.optim.Optimizer", engine: Any,
                             plan: "Plan") -> "torch.optim.Optimizer | None":
    """Change or replace the optimizer according to the plan (fused kernels,
    a wrapper such as Lookahead).

    Called when an :class:`~autotune.engine.engine.Engine` is built (for the final
    engine and for every measured trial), before ``autotune_setup_engine``,
    once per plugin in the plan; each receives the previous result. A change
    made in place must be undone with ``engine.on_close`` (the tuner reuses
    the user's optimizer across trials); a replacement must train the same
    parameters with the same hyper-parameters, param groups and state.

    :param optimizer: the optimizer as changed so far (first: the user's).
    :param engine: the engine being built (``engine.module``, ``engine.device``).
    :param plan: the final plan.
    :return: a new optimizer for the engine to step, or ``None`` to keep it.
    """


@hookspec
def autotune_setup_engine(engine: Any, plan: "Plan") -> None:
    """Get ready to take part in this engine's steps (global flags, state).

    Called when :class:`autotune.engine.engine.Engine` is built, once per plugin in
    the plan, before any step. Keep per-engine objects (a GradScaler, the
    eager model to fall back to) in ``engine.plugin_state(NAME)``, never in
    module globals: one process builds many engines (one per measured
    trial). Global state changed here must be restorable: register an undo
    with ``engine.on_close(callback)``. Record what was done with
    ``engine.note(NAME, kind, message)``.

    A plugin that raises here is left out of *this* engine (named in its
    report as a fallback, its settings revised to their ``off`` values in
    ``engine.plan``); it still takes part in the next one.

    :param engine: the engine being built.
    :param plan: the final plan.
    :return: ignored.
    """
