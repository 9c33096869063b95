"""Options: how a plugin says what its profile section accepts.

Called whenever profiles are loaded for plugins that are installed (a plan,
``autotune detect``, ``autotune profiles``): each answer closes that
plugin's section (``plugins: <name>: {...}``) to the options its dataclass
declares, so a misspelt or out-of-range option is refused when the file is
read, naming the file, the key and the reason. The same answers make the
documentation of the options (:func:`autotune.plugin.options.options_docs`).
"""

from __future__ import annotations

from autotune.plugin.markers import checked_by, hookspec
from autotune.plugin.options import options_answer


@hookspec
@checked_by(options_answer)
def autotune_options() -> "type | None":
    """Declare this plugin's profile options: its ``Options`` dataclass.

    Each field is one option: its annotation the type, its default the
    default, and :func:`autotune.sdk.option` its bounds, choices and a
    one-line help (``max_norm: float | None = option(None, "clip to this",
    above=0, null=True)``). Deriving the class from
    :class:`autotune.sdk.PluginOptions` checks values built in code the
    same way. Read it with ``parse_options(NAME, Options, values)``.

    :param: none; called once per loaded plugin when profiles are loaded.
    :return: the ``Options`` dataclass; ``None`` (or no implementation)
        leaves the section free-form, for the plugin to check itself when it
        reads it (``enabled`` is checked either way).
    """
