"""Hook specifications: the whole contract between autotune and its plugins.

A plugin is any module or object with functions named like these hooks and
decorated with ``@autotune.hookimpl``. It may implement any subset, and each
implementation may accept any subset of a hook's arguments (pluggy passes
them by keyword), so new arguments can be added here without breaking
existing plugins.

Built-in plugins are ordinary plugins: they register through the same
``autotune`` entry-point group as third-party ones.

Phases, in the order autotune calls them:

* discovery    -- ``autotune_detect``
* contribution -- ``autotune_configure``, ``autotune_knobs``,
  ``autotune_candidates``, ``autotune_follow_overrides``
* application  -- ``autotune_apply_model``, ``autotune_apply_optimizer``,
  ``autotune_apply_loader``, ``autotune_setup_engine``
* the step     -- ``autotune_prepare_inputs``, ``autotune_forward_context``,
  ``autotune_transform_loss``, ``autotune_window_size``,
  ``autotune_before_optimizer_step``, ``autotune_optimizer_step``,
  ``autotune_after_optimizer_step``, ``autotune_step_failed``,
  ``autotune_epoch_start``, ``autotune_epoch_end``,
  ``autotune_epoch_loader`` (and, for checkpoints and logs,
  ``autotune_engine_state``, ``autotune_load_engine_state``,
  ``autotune_describe_engine``)
* live changes -- ``autotune_live_candidate``, ``autotune_live_change``
  (at epoch boundaries of a job that shares the machine)
* search space -- ``autotune_search_prior``, ``autotune_prune_candidate``,
  ``autotune_micro_batches``, ``autotune_batch_size_found`` (measured
  tuning only, between contribution and application)
* resources    -- ``autotune_fold_schedule``, ``autotune_resource_share``,
  ``autotune_machine_share``, ``autotune_wrap_distributed`` (when folds,
  ranks or jobs share the machine)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import DataLoader

    from autotune.plugin.context import Context
    from autotune.machine.hardware import Hardware
    from autotune.plan.knobs import Knob
    from autotune.plan.plan import Plan, Setting
    from autotune.plan.report import Report
    from autotune.plan.resources import FoldPlan, Share

PROJECT_NAME = "autotune"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------


@hookspec
def autotune_detect(hardware: "Hardware") -> "Mapping[str, Any] | None":
    """Add facts to the detected hardware (custom accelerators, cluster info).

    Called once per :meth:`PluginManager.detect`, after built-in detection.

    :param hardware: what autotune detected by itself.
    :return: a JSON-serialisable mapping of facts, stored under
        ``hardware.extra[<plugin name>]``; ``None`` adds nothing.
    """


# ---------------------------------------------------------------------------
# contribution
# ---------------------------------------------------------------------------


@hookspec
def autotune_configure(context: "Context") -> "Mapping[str, Setting] | None":
    """Propose this plugin's settings for the hardware, profile and workload.

    Called once per plugin when a plan is made. autotune calls each
    implementation itself (not as one pluggy loop), so the result is filed
    under the plugin's registered name, and a plugin that raises is named in
    a warning and left out of the plan (re-raised in strict mode).

    Not called for a plugin whose profile section says ``enabled: false``.

    :param context: hardware, matched profile (``context.options_for(NAME)``
        gives this plugin's profile options) and workload summary.
    :return: ``{key: Setting}``; each :class:`~autotune.plan.plan.Setting` carries
        its value, its source (default or profile) and a one-line reason.
        ``None`` or ``{}`` contributes nothing.
    """


@hookspec
def autotune_knobs(context: "Context") -> "Mapping[str, Knob] | None":
    """Describe this plugin's settings: PyTorch's default and what a change changes.

    Called whenever a plan is made (after ``autotune_configure``) and when
    the tuner builds its baseline, once per plugin in the plan.

    :param context: as for ``autotune_configure``; the workload's live
        loader is there, for a default that depends on it.
    :return: ``{key: Knob}`` for keys this plugin proposes. A
        :class:`~autotune.plan.knobs.Knob` gives the ``off`` value (what
        PyTorch does without autotune: the tuner's baseline), its
        ``effect`` (``speed``; ``numerics``: applied only once measured or
        asked for; ``training``: changes what is trained, so only the user
        turns it on, and it is never searched), ``measure_first`` for a speed
        setting that is slower on some models, and the ``phase`` the tuner
        measures it in (``first_step_cost``, ``revisit_after_loader``: how);
        ``choices`` / ``check`` say what a user may set it to, and every
        override is checked against them when the plan is made. A key
        without a knob is a speed setting whose baseline is the planned
        value. ``None`` describes nothing.
    """


@hookspec
def autotune_candidates(context: "Context", plan: "Plan") -> "list[Mapping[str, Any]] | None":
    """Offer alternative settings worth a measured trial.

    Called before the tuner measures, once per plugin in the plan.

    :param context: as for ``autotune_configure``.
    :param plan: the plan made from defaults, profile and overrides.
    :return: a list of ``{key: value}`` alternatives for *this plugin's*
        settings, most promising first; ``None`` or ``[]`` for none. Keys
        must be ones the plugin proposed in ``autotune_configure``.
    """


@hookspec
def autotune_follow_overrides(context: "Context", plan: "Plan",
                              overrides: "Mapping[str, Any]") -> "Mapping[str, Setting] | None":
    """Re-derive the settings that follow from ones the user overrode
    (``prefetch_factor`` and ``persistent_workers`` follow ``num_workers``),
    so no value or reason in the plan still speaks of the planned value.

    Called when overrides are applied (``make_plan(overrides=...)``,
    ``--set``, ``cross_validate(plan=..., overrides=...)``), after they are
    in the plan, once per plugin with an overridden key.

    :param context: as for ``autotune_configure``.
    :param plan: the plan with the overrides in it.
    :param overrides: this plugin's overridden ``{key: value}``.
    :return: ``{key: Setting}`` for this plugin's other keys, recomputed
        from the overridden values; keys the user set are never replaced.
        ``None`` when nothing follows.
    """


# ---------------------------------------------------------------------------
# application
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# the training step (engine events)
#
# Called by every Engine step, in plugin order: ``tryfirst`` implementations
# first, then registration order, ``trylast`` ones last (pluggy's markers).
# Only plugins in the plan take part. An exception raised by an
# implementation is a TrainingError that names the plugin and the hook (in
# a measured trial: that trial is disqualified). The engine itself only
# runs forward, loss, backward and ``optimizer.step()``; one step is::
#
#     inputs = autotune_prepare_inputs(...)          # after the device copy
#     with every autotune_forward_context(...):
#         loss = loss_fn(model(inputs), targets)
#     autotune_transform_loss(...).backward()
#     when the window is full (autotune_window_size micro-batches):
#         autotune_before_optimizer_step(...)
#         autotune_optimizer_step(...) or optimizer.step()
#         optimizer.zero_grad(set_to_none=True)
#         autotune_after_optimizer_step(...)
# ---------------------------------------------------------------------------


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
    :return: metrics for the epoch's record (``grad_norm`` fills
        ``EpochMetrics.grad_norm``; other keys go to ``EpochMetrics.extra``),
        or ``None``.
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
    """Bring new values of this plugin's own settings into force now, at an
    epoch boundary (a live candidate, its revert, or a new share).

    Called only on the plugin whose settings changed; ``engine.plan`` already
    holds ``values``.

    :param engine: the engine.
    :param values: ``{key: new value}`` of this plugin's keys.
    :return: ``True`` when they are in force (or will be from the next
        epoch's loader); ``False``/``None`` when this plugin cannot change
        them during a run, and the plan keeps the old values.
    """


@hookspec
def autotune_engine_state(engine: Any) -> "Mapping[str, Any] | None":
    """This plugin's part of an engine checkpoint (a GradScaler's state).

    Called by ``Engine.state_dict`` (and so ``save``).

    :param engine: the engine.
    :return: a ``torch.save``-able mapping, stored under the plugin's name
        in the checkpoint's ``plugins``, or ``None``.
    """


@hookspec
def autotune_load_engine_state(engine: Any, state: "Mapping[str, Any]") -> None:
    """Restore what ``autotune_engine_state`` saved.

    Called by ``Engine.load_state_dict`` (and so ``load``), only for a
    plugin whose state the checkpoint holds.

    :param engine: the engine.
    :param state: what the plugin's ``autotune_engine_state`` returned.
    :return: ignored.
    """


@hookspec
def autotune_describe_engine(engine: Any) -> "Mapping[str, Any] | None":
    """Say what this plugin does in this engine.

    Called by ``Engine.describe()``; the answers are merged into one mapping.

    :param engine: the engine.
    :return: plain JSON data (``{"autocast_dtype": "torch.bfloat16"}``), or ``None``.
    """


# ---------------------------------------------------------------------------
# search space (measured tuning)
#
# Called by the tuner, never during a plain apply. The tuner reads only what
# plugins declare here and in ``autotune_knobs`` / ``autotune_candidates``,
# never a plugin's name.
# ---------------------------------------------------------------------------


@hookspec
def autotune_search_prior(context: "Context", device_type: str) -> "tuple[float, str] | None":
    """How much searching this plugin's settings is likely to pay here.

    Called once per search, for every plugin in the plan whose knobs are
    searchable, before anything is measured; the tuner searches groups in
    order of these priors (highest first) so that a short budget is spent
    where it pays. A prior orders and skips, it is never a result.

    :param context: hardware, profile and workload (``workload.has_conv2d``,
        the live loader...).
    :param device_type: the device trials run on (``"cuda"``, ``"cpu"``).
    :return: ``(gain, reason)``: the expected relative gain (a number >= 0;
        ``0`` means not worth a trial here, so the plugin is not searched)
        and a one-line reason for the search log. ``None``, or no
        implementation, gives the prior of a plugin that says nothing
        (``autotune.tuner.candidates.UNKNOWN_PRIOR``).
    """


@hookspec
def autotune_prune_candidate(context: "Context", values: "Mapping[str, Any]",
                             device_type: str) -> "str | None":
    """Say that one of this plugin's candidates cannot run well here.

    Called by the search (and ``autotune bench --grid``) for each candidate
    of this plugin's own, before it is measured; only this plugin's
    implementation is asked. A pruned candidate is listed in the tuning
    report's ``pruned`` with the reason, and never measured.

    :param context: hardware, profile and workload.
    :param values: this plugin's settings as the trial would run them: the
        incumbent's values with the candidate's laid over them.
    :param device_type: the device trials run on.
    :return: a one-line reason not to measure it ("fp16 autocast needs
        CUDA"), or ``None`` to measure it.
    """


@hookspec(firstresult=True)
def autotune_micro_batches(plan: "Plan") -> "int | None":
    """How many micro-batches make one optimizer step under ``plan``.

    Called by the batch-size search (for the effective batch it keeps:
    loader batch x micro-batches) and by measured trials (their timed chunks
    hold whole optimizer steps), for plugins in the plan; the first
    non-``None`` answer wins.

    :param plan: the plan to be trained with.
    :return: an integer >= 1, or ``None`` for no opinion (without any
        answer, one micro-batch per optimizer step).
    """


@hookspec
def autotune_batch_size_found(plan: "Plan", context: "Context", batch_size: int,
                              effective_batch: int,
                              largest_fitting: int) -> "Mapping[str, Setting] | None":
    """Keep the effective batch when the batch-size search changes the
    micro-batch (``apply(batch_size=True)``, ``find_batch_size``).

    Called once the search has chosen ``batch_size``, and also before it
    starts and before each probe (with the batch it would try) to learn
    which settings the plugin would write: it must only compute, never act.
    The settings returned are written into the plan with source
    ``measured`` (a user's override still wins: when a key returned is one
    the user set, the search is skipped, since another micro-batch would
    change the effective batch).

    :param plan: the plan so far.
    :param context: hardware, profile and workload.
    :param batch_size: the micro-batch the loader will yield.
    :param effective_batch: the samples per optimizer step to keep.
    :param largest_fitting: the largest micro-batch measured to fit (for the
        reason).
    :return: ``{key: Setting}`` for this plugin's own settings (e.g.
        accumulation ``steps = effective_batch // batch_size``), or
        ``None``.
    """


# ---------------------------------------------------------------------------
# resources
#
# How training shares the machine: cross-validation folds at once, ranks of
# a DDP job on one node, jobs of a daemon. The callers ask; the plugins that
# own threads, loader workers or a model wrapper answer, so no core module
# names a plugin. The typed answers live in autotune.plan.resources.
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def autotune_fold_schedule(context: "Context", plan: "Plan", folds: int,
                           backend: "str | None", max_concurrent: "int | None",
                           threads_per_fold: "int | None", device: str,
                           measure_fold_memory: "Callable[[str], int] | None",
                           estimate_fold_seconds: "Callable[[], float] | None",
                           dask_slots: "Callable[[], tuple[int, int, str]] | None"
                           ) -> "FoldPlan | None":
    """Decide how ``cross_validate``'s folds run: how many at once, on which
    backend and devices, with how many threads and loader workers each.

    Called once per ``cross_validate`` (and ``autotune.cv.schedule.decide``),
    before any fold trains, for every loaded plugin that the plan does not
    list as disabled. ``firstresult``: the first non-``None`` answer wins;
    plugins are asked latest-loaded first (``tryfirst`` / ``trylast`` aside),
    so a third-party plugin is asked before the built-ins. Without an
    answer the folds run one after another in this process.

    :param context: hardware, profile and workload.
    :param plan: the plan the folds train with.
    :param folds: folds left to run (0 when every fold is already stored).
    :param backend: the backend the user asked for (one of
        :data:`autotune.plan.resources.FOLD_BACKENDS`), or ``None`` to choose.
    :param max_concurrent: folds at once the user asked for, or ``None``.
    :param threads_per_fold: threads per fold the user asked for, or ``None``.
    :param device: the device the folds train on (``"cuda"``: spread them
        over every GPU; ``"cuda:1"``: that one; ``"cpu"``).
    :param measure_fold_memory: ``f(device) -> bytes``, the peak memory of a
        real training step of one fold on a CUDA device; ``None`` when no
        fold is left to measure.
    :param estimate_fold_seconds: ``f() -> seconds`` one fold takes alone
        here (timed training steps); ``None`` when no fold is left.
    :param dask_slots: ``f() -> (fold slots, threads per fold, why)`` of the
        current Dask cluster (connects to it on first call); for a schedule
        on ``dask``.
    :return: a :class:`~autotune.plan.resources.FoldPlan`; its ``settings`` (the
        plugin's own) and the share it implies (``autotune_resource_share``
        of every plugin) are written into the plan every fold trains with.
        ``None`` leaves the decision to the next plugin.
    """


@hookspec
def autotune_resource_share(plan: "Plan", context: "Context",
                            share: "Share") -> "Mapping[str, Setting] | None":
    """Say how this plugin's settings change when the process gets only a
    share of the machine.

    Called once per plugin in the plan whenever the machine is divided:
    for the plan every parallel fold trains with, for a fold in a worker
    that cannot start processes, for each rank of a DDP job on one node
    (``autotune.distributed.share_cores``), for a daemon's jobs.

    :param plan: the plan as planned (earlier plugins' answers are not in it).
    :param context: hardware, profile and workload.
    :param share: a :class:`~autotune.plan.resources.Share`: the threads and the
        most loader workers the share has, whether the shares run in one
        process, and why (put it in the reasons).
    :return: ``{key: Setting}`` for this plugin's own keys that change (the
        caller writes them over what the plan has, so keep a user's
        override yourself); ``None`` or ``{}`` when nothing changes.
    """


@hookspec(firstresult=True)
def autotune_machine_share(context: "Context", plan: "Plan") -> "Share | None":
    """The part of the machine this process is given when it shares it with
    other jobs (``autotune daemon``).

    Called once by ``make_plan`` after the overrides. The answer is written
    into the plan through every plugin's ``autotune_resource_share``, with
    source ``daemon``, and kept in ``context.share`` for the search space.

    :param context: hardware, profile and workload.
    :param plan: the plan so far.
    :return: a :class:`~autotune.plan.resources.Share`, or ``None`` for the whole
        machine. ``firstresult``.
    """


@hookspec
def autotune_wrap_distributed(model: "torch.nn.Module", plan: "Plan", context: "Context",
                              report: "Report") -> "torch.nn.Module | None":
    """Wrap the ``DistributedDataParallel`` module (``torch.compile`` goes
    over DDP, so its graph breaks fall at the gradient buckets).

    Called by ``autotune.distributed.prepare`` once the model is wrapped in
    DDP, once per plugin in the plan; each receives the previous result. A
    plugin that implements this hook is *not* asked for
    ``autotune_apply_model`` there (the other plugins' model hooks run first,
    on the plain module), so it transforms the model once.

    :param model: the DDP module, as wrapped so far.
    :param plan: the final plan.
    :param context: hardware, profile and workload.
    :param report: as for ``autotune_apply_model``.
    :return: the wrapped model, or ``None`` to leave it unchanged.
    """
