"""Engine state: what a plugin keeps in an engine checkpoint, and what it
says it does in ``Engine.describe()`` (for checkpoints and logs).
"""

from __future__ import annotations

from typing import Any, Mapping

from autotune.plugin.markers import hookspec

#: The engine calls these hooks itself, once per step or epoch, without
#: pluggy's loop (see :func:`autotune.plugin.specs.step_hook_names`).
CALLED_BY_ENGINE = True


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
