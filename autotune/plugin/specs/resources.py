"""Resources: how training shares the machine -- cross-validation folds at
once, ranks of a DDP job on one node, jobs of a daemon.

The callers ask; the plugins that own threads, loader workers or a model
wrapper answer, so no core module names a plugin. The typed answers live in
:mod:`autotune.plan.resources`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from autotune.plugin import answers
from autotune.plugin.markers import checked_by, hookspec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from autotune.plan.plan import Plan, Setting
    from autotune.plan.report import Report
    from autotune.plan.resources import FoldPlan, Share
    from autotune.plugin.context import Context


@hookspec(firstresult=True)
@checked_by(answers.fold_plan)
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
@checked_by(answers.own_settings)
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
@checked_by(answers.share)
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
