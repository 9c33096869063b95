"""The plugin system: what a plugin sees (:mod:`~autotune.plugin.context`,
:mod:`~autotune.plugin.options`), the contract (:mod:`~autotune.plugin.specs`,
one module per phase, with the markers in :mod:`~autotune.plugin.markers`),
the checks of plugins' answers (:mod:`~autotune.plugin.answers`), the
registry that finds and loads plugins (:mod:`~autotune.plugin.registry`) and
the manager that calls them (:mod:`~autotune.plugin.manager`). Plugins
themselves import only :mod:`autotune.sdk`."""
