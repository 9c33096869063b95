"""The training step: the engine events that change one step.

Called by every Engine step, in plugin order: ``tryfirst`` implementations
first, then registration order, ``trylast`` ones last (pluggy's markers).
Only plugins in the plan take part. An exception raised by an
implementation is a TrainingError that names the plugin and the hook (in a
measured trial: that trial is disqualified). The engine itself only runs
forward, loss, backward and ``optimizer.step()``; one step is::

    inputs = autotune_prepare_inputs(...)          # after the device copy
    with every autotune_forward_context(...):
        loss = loss_fn(model(inputs), targets)
    autotune_transform_loss(...).backward()
    when the window is full (autotune_window_size micro-batches):
        autotune_before_optimizer_step(...)
        autotune_optimizer_step(...) or optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        autotune_after_optimizer_step(...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotune.plugin.markers import hookspec

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The engine calls these hooks itself, once per step or epoch, without
#: pluggy's loop (see :func:`autotune.plugin.specs.step_hook_names`).
CALLED_BY_ENGINE = True


@hookspec
def autotune_prepare_inputs(engine: Any, inputs: Any) -> Any:
    """Transform a batch's inputs once they are on the engine's device.

    Called for every training and evaluation batch; each plugin receives
    the previous plugin's result.

    :param engine: the engine.
    :param inputs: the inputs (a tensor, or a structure of tensors).
    :return: the new inputs, or ``None`` to keep them.
    """


@hookspec
def autotune_forward_context(engine: Any, training: bool) -> "Any":
    """A context manager to enter around the forward pass and the loss.

    Called for every batch (training and evaluation); every result is
    entered, in plugin order (the first plugin's is outermost).

    :param engine: the engine.
    :param training: False during ``Engine.evaluate``.
    :return: a context manager (``torch.autocast(...)``), or ``None``.
    """


@hookspec
def autotune_transform_loss(engine: Any, loss: "torch.Tensor") -> "torch.Tensor | None":
    """Transform the loss that ``backward()`` is called on.

    Called for every training micro-batch; each plugin receives the
    previous result (``engine.window_size`` is the size of the current
    window of micro-batches). The loss the engine reports is the
    untransformed one.

    :param engine: the engine.
    :param loss: the loss so far (first: ``loss_fn``'s result).
    :return: the tensor to differentiate, or ``None`` to keep it.
    """


@hookspec(firstresult=True)
def autotune_window_size(engine: Any, remaining: "int | None") -> "int | None":
    """How many micro-batches the optimizer step starting now accumulates.

    Called at the first micro-batch of each window; the first non-``None``
    answer wins; without one the window is 1 micro-batch (one optimizer
    step per batch). Also called with ``remaining=None`` to ask for a full
    window (``engine.micro_batches_per_step``).

    :param engine: the engine.
    :param remaining: batches left in this epoch (``None``: not known).
    :return: an integer >= 1, or ``None``.
    """


@hookspec
def autotune_before_optimizer_step(engine: Any, optimizer: "torch.optim.Optimizer",
                                   micro_batches: int) -> None:
    """Act on the gradients of a finished window before the optimizer steps.

    Called once per optimizer step, after the window's last backward (use
    ``tryfirst`` to run before others: the fp16 scaler unscales first, so
    later plugins see true gradients).

    :param engine: the engine.
    :param optimizer: the optimizer about to step.
    :param micro_batches: how many micro-batches the window really had
        (fewer than ``engine.window_size`` when an epoch ended early).
    :return: ignored.
    """


@hookspec(firstresult=True)
def autotune_optimizer_step(engine: Any, optimizer: "torch.optim.Optimizer") -> "bool | None":
    """Perform the optimizer step instead of ``optimizer.step()``.

    Called once per optimizer step; the first non-``None`` answer wins.

    :param engine: the engine.
    :param optimizer: the optimizer to step.
    :return: ``True`` when the step ran, ``False`` when it was skipped on
        purpose (non-finite gradients: the scheduler does not step either),
        ``None`` to leave it to the next plugin or the engine.
    """


@hookspec
def autotune_after_optimizer_step(engine: Any, optimizer: "torch.optim.Optimizer",
                                  skipped: bool) -> None:
    """Act after each optimizer step, e.g. update an average of the weights.

    Called once per optimizer step, after ``zero_grad``.

    :param engine: the engine.
    :param optimizer: the optimizer that stepped.
    :param skipped: True when ``autotune_optimizer_step`` skipped the step.
    :return: ignored.
    """


@hookspec(firstresult=True)
def autotune_step_failed(engine: Any, error: BaseException, phase: str) -> Any:
    """Recover from an exception raised by a forward or backward.

    Called when a training or evaluation step raises (not for loader worker
    failures); the first non-``None`` answer wins. The engine then runs the
    step again; if that run raises too, it calls ``undo()`` and the new
    error propagates; if it succeeds, it calls ``done(reason)``.

    :param engine: the engine.
    :param error: what the step raised.
    :param phase: ``"training"`` or ``"evaluation"``.
    :return: a :class:`autotune.engine.step.Recovery` (``undo`` and ``done``
        callables) after changing the engine (``engine.model = ...``), or
        ``None`` to let the error propagate.
    """
