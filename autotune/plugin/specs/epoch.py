"""Epochs: the engine events at an epoch's start and end, and the live
changes a job that shares the machine makes at an epoch boundary.

* the epoch    -- ``autotune_epoch_start``, ``autotune_epoch_end``,
  ``autotune_epoch_loader`` (called by ``Engine.fit``)
* live changes -- ``autotune_live_adapter`` (what changes settings during a
  run), ``autotune_live_candidate``, ``autotune_live_change`` (at epoch
  boundaries of a job that shares the machine)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from autotune.plugin.markers import hookspec

if TYPE_CHECKING:  # pragma: no cover
    from autotune.plan.plan import Plan
    from autotune.plan.resources import Share

#: The engine calls these hooks itself, once per step or epoch, without
#: pluggy's loop (see :func:`autotune.plugin.specs.step_hook_names`).
CALLED_BY_ENGINE = True


@hookspec
def autotune_epoch_start(engine: Any, epoch: int) -> None:
    """Get ready for an epoch (reset per-epoch sums).

    Called by ``Engine.fit`` before each epoch's first batch.

    :param engine: the engine.
    :param epoch: the epoch's number (from 1, counting earlier ``fit`` calls).
    :return: ignored.
    """


@hookspec
def autotune_epoch_end(engine: Any, epoch: int) -> "Mapping[str, float] | None":
    """Report per-epoch metrics.

    Called by ``Engine.fit`` after each epoch's last optimizer step.

    :param engine: the engine.
    :param epoch: as for ``autotune_epoch_start``.
    :return: metrics for the epoch's record (``EpochMetrics.extra``), under
        keys that name the plugin (``{"clipping.grad_norm": 0.8}``: the
        engine knows none of them), or ``None``.
    """


@hookspec(firstresult=True)
def autotune_epoch_loader(engine: Any, loader: Any, epoch: int) -> Any:
    """The loader to iterate this epoch instead of ``loader``.

    Called by ``Engine.fit`` at the start of each epoch, after
    ``autotune_epoch_start``: a plugin whose loader settings changed during
    the run (``autotune_live_change``) rebuilds the loader here, since
    workers can change only between epochs.

    :param engine: the engine.
    :param loader: the loader given to ``fit``.
    :param epoch: as for ``autotune_epoch_start``.
    :return: a loader over the same samples in the same order, or ``None``
        to iterate ``loader``. ``firstresult``.
    """


@hookspec
def autotune_live_adapter(engine: Any, plan: "Plan") -> Any:
    """What changes this engine's settings during its run: an object with
    ``at_epoch_start(epoch)`` and ``at_step()`` (an
    :class:`autotune.engine.step.LiveHook`, such as the
    :class:`autotune.live.adapter.LiveAdapter` of a job that shares the
    machine through ``autotune daemon``).

    Called once per engine, after ``autotune_setup_engine``, for every plugin
    in the plan, unless whoever builds the engine names its live adapters
    (``Engine(live=...)``: a tuner's trial passes none, so what it measures
    runs as planned). The engine calls ``at_epoch_start`` after
    ``autotune_epoch_start`` and ``at_step`` after
    ``autotune_after_optimizer_step``.

    :param engine: the engine being built.
    :param plan: the engine's plan.
    :return: the adapter, or ``None`` for none.
    """


@hookspec
def autotune_live_candidate(engine: Any, metrics: Any,
                            share: "Share | None") -> "Mapping[str, Any] | None":
    """Propose one change of this plugin's own speed settings for the next
    epoch, given how the last one ran.

    Called at an epoch boundary of a job that shares the machine through
    ``autotune daemon`` (autotune.live.adapter), when no other change is being
    measured. The change runs for one epoch and is kept only if that epoch
    is not slower (see ``autotune.live.adapter.SLOWER_MARGIN``); otherwise it is
    reverted and not proposed again. Keys whose knob changes the numerics or
    what is trained are refused: only speed knobs change live.

    :param engine: the engine (``engine.plan`` is in force).
    :param metrics: the last epoch's ``autotune.engine.history.EpochMetrics``
        (samples/s, data wait).
    :param share: the job's :class:`~autotune.plan.resources.Share`, or ``None``.
    :return: ``{key: value}`` of this plugin's keys, or ``None``.
    """


@hookspec
def autotune_live_change(engine: Any, values: "Mapping[str, Any]") -> "bool | None":
    """Bring new values of this plugin's own settings into force now: at an
    epoch boundary (a live candidate, its revert, or a new share), or, under
    online tuning (``engine.changes_mid_epoch``), between any two optimizer
    steps, from the next step on.

    Called only on the plugin whose settings changed; ``engine.plan`` already
    holds ``values``.

    :param engine: the engine.
    :param values: ``{key: new value}`` of this plugin's keys.
    :return: ``True`` when they are in force (or will be from the next
        epoch's loader); ``False``/``None`` when this plugin cannot change
        them during a run, and the plan keeps the old values.
    """
