"""autotune's built-in plugins, one module each (installed as autotune.plugins).

They register through the ``autotune`` entry-point group like any
third-party plugin; see ``autotune.plugin.manager.BUILTIN_PLUGINS`` for the order.
"""
