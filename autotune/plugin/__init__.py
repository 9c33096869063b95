"""The plugin system: what a plugin sees (context, options), the hook
specifications, and the manager that loads plugins and calls their hooks.
Plugins themselves import only :mod:`autotune.sdk`."""
