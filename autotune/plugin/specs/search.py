"""The search space (measured tuning): how much searching a plugin's
settings is likely to pay, which candidates cannot run well here, and the
micro-batches that make one optimizer step.

Called by the tuner, never during a plain apply, between contribution and
application. The tuner reads only what plugins declare here and in
``autotune_knobs`` / ``autotune_candidates``, never a plugin's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from autotune.plugin import answers
from autotune.plugin.markers import checked_by, hookspec

if TYPE_CHECKING:  # pragma: no cover
    from autotune.plan.plan import Plan, Setting
    from autotune.plugin.context import Context


@hookspec
@checked_by(answers.prior)
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
@checked_by(answers.reason)
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
@checked_by(answers.micro_batches)
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
@checked_by(answers.own_settings)
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
