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
  ``autotune_candidates``
* application  -- ``autotune_apply_model``, ``autotune_apply_loader``,
  ``autotune_setup_engine``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import DataLoader

    from autotune.context import Context
    from autotune.hardware import Hardware
    from autotune.knobs import Knob
    from autotune.plan import Plan, Setting
    from autotune.report import Report

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
    :return: ``{key: Setting}``; each :class:`~autotune.plan.Setting` carries
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
        :class:`~autotune.knobs.Knob` gives the ``off`` value (what
        PyTorch does without autotune: the tuner's baseline), its
        ``effect`` (``speed``; ``numerics``: applied only once measured or
        asked for; ``training``: changes what is trained, so only the user
        turns it on, and it is never searched), ``measure_first`` for a speed
        setting that is slower on some models, and the ``phase`` the tuner
        measures it in. A key without a knob is a speed setting whose baseline
        is the planned value. ``None`` describes nothing.
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


# ---------------------------------------------------------------------------
# application
# ---------------------------------------------------------------------------


@hookspec
def autotune_apply_model(model: "torch.nn.Module", plan: "Plan", context: "Context",
                         report: "Report") -> "torch.nn.Module | None":
    """Transform the model according to the plan (memory format, compile...).

    Called on apply, once per plugin in registration order; each plugin
    receives the model returned by the previous one.

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
def autotune_setup_engine(engine: Any, plan: "Plan") -> None:
    """Install step behaviour on the training engine (hooks, global flags).

    Called when :class:`autotune.engine.Engine` is built, once per plugin.
    Global state changed here must be restorable: register an undo with
    ``engine.on_close(callback)``. The engine's slots for plugins
    (``set_precision``, ``accumulation_steps``, ``set_clipping``,
    ``input_memory_format``, ``set_eager_fallback``, ``note``) are
    described in docs/engine.md.

    :param engine: the engine being built.
    :param plan: the final plan.
    :return: ignored.
    """
