"""Hook specifications: the whole contract between autotune and its plugins,
one module per phase.

A plugin is any module or object with functions named like these hooks and
decorated with ``@hookimpl`` (``from autotune.sdk import hookimpl``). It may
implement any subset, and each implementation may accept any subset of a
hook's arguments (pluggy passes them by keyword), so new arguments can be
added here without breaking existing plugins.

Built-in plugins are ordinary plugins: they register through the same
``autotune`` entry-point group as third-party ones.

The phases, in the order autotune calls them (one module each):

* :mod:`~autotune.plugin.specs.planning` -- discovery and contribution:
  facts, settings, knobs, candidates, settings that follow overrides
* :mod:`~autotune.plugin.specs.search` -- the search space of measured
  tuning (between contribution and application)
* :mod:`~autotune.plugin.specs.application` -- model, loader and optimizer
  changed, the engine set up
* :mod:`~autotune.plugin.specs.step` -- the training step (engine events)
* :mod:`~autotune.plugin.specs.epoch` -- epoch start and end, live changes
* :mod:`~autotune.plugin.specs.state` -- checkpoints and ``describe()``
* :mod:`~autotune.plugin.specs.resources` -- folds, ranks or jobs that share
  the machine

Every module of this package is part of the contract: the manager registers
each one it finds here, so a new phase is a new module and nothing else. A
hook whose answers the manager checks names its check with
``@checked_by`` (:mod:`autotune.plugin.answers`); a module whose hooks the
engine calls itself says ``CALLED_BY_ENGINE = True``. Each hook is also an
attribute of this package (``specs.autotune_configure``).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any, Callable

from autotune.plugin.markers import CHECK_ATTRIBUTE, PROJECT_NAME

#: Every module of this package, by name: the phases of the contract.
MODULES: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name))


def _specs_of(module: ModuleType) -> dict[str, Callable[..., Any]]:
    return {name: value for name, value in vars(module).items()
            if name.startswith(PROJECT_NAME + "_") and callable(value)
            and hasattr(value, PROJECT_NAME + "_spec")
            and getattr(value, "__module__", None) == module.__name__}


#: ``{hook name: its specification}``, every phase's hooks.
SPECS: dict[str, Callable[..., Any]] = {name: spec for module in MODULES
                                        for name, spec in _specs_of(module).items()}

#: Every hook a plugin may implement.
HOOK_NAMES = frozenset(SPECS)

# Each hook is an attribute of the package too, wherever its phase module is,
# so ``specs.autotune_configure`` names it without knowing the phase.
globals().update(SPECS)


def check_of(hook: str) -> Callable[..., Any] | None:
    """The function that checks answers to ``hook`` (its spec's
    ``@checked_by``), or ``None`` when any answer is taken as given."""
    return getattr(SPECS[hook], CHECK_ATTRIBUTE, None)


def step_hook_names() -> tuple[str, ...]:
    """The hooks the engine calls itself (modules marked
    ``CALLED_BY_ENGINE``), in the order their phases and specs are written."""
    return tuple(name for module in MODULES if getattr(module, "CALLED_BY_ENGINE", False)
                 for name in _specs_of(module))
