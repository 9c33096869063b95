"""autotune's built-in plugins, one module each (installed as autotune.plugins).

They register through the ``autotune`` entry-point group like any
third-party plugin, and nothing in autotune's core names them. Where the
order of plugins matters to a hook, each says so on its own implementation
(``@hookimpl(tryfirst=True)`` / ``trylast``); otherwise they register, and
are called, in the order of their names.
"""
