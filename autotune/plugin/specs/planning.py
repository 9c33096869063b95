"""Planning: the hooks through which plugins add facts about the machine and
propose settings, called when a plan is made (``make_plan``, ``apply``),
before anything is applied.

* discovery    -- ``autotune_detect``
* contribution -- ``autotune_configure``, ``autotune_knobs``,
  ``autotune_candidates``, ``autotune_follow_overrides``

autotune calls each implementation itself (not as one pluggy loop), so every
answer is filed under the plugin that gave it, checked (the function named
by ``@checked_by``), and a plugin whose answer is malformed or that raises is
named in a warning and left out of the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from autotune.plugin import answers
from autotune.plugin.markers import checked_by, hookspec

if TYPE_CHECKING:  # pragma: no cover
    from autotune.machine.hardware import Hardware
    from autotune.plan.knobs import Knob
    from autotune.plan.plan import Plan, Setting
    from autotune.plugin.context import Context


# -- discovery ---------------------------------------------------------------------


@hookspec
@checked_by(answers.facts)
def autotune_detect(hardware: "Hardware") -> "Mapping[str, Any] | None":
    """Add facts to the detected hardware (custom accelerators, cluster info).

    Called once per :meth:`PluginManager.detect`, after built-in detection.

    :param hardware: what autotune detected by itself.
    :return: a JSON-serialisable mapping of facts, stored under
        ``hardware.extra[<plugin name>]``; ``None`` adds nothing.
    """


# -- contribution ------------------------------------------------------------------


@hookspec
@checked_by(answers.settings)
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
@checked_by(answers.knobs)
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
@checked_by(answers.candidates)
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
@checked_by(answers.own_settings)
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
