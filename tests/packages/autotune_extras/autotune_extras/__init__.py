"""autotune-extras: two third-party autotune plugins, ``sdpa`` (the step)
and ``collate`` (the loader), each registered through the ``autotune``
entry-point group (see ``pyproject.toml``)."""

__version__ = "0.1.0"
