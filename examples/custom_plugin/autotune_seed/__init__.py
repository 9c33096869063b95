"""autotune-seed: one global seed and, on request, deterministic kernels.

An example of a third-party autotune plugin. It is a normal package with an
entry point in the group ``autotune`` (see ``pyproject.toml``); installing it
is all it takes for ``autotune plugins`` and ``autotune plan`` to show it, and
``--disable seed`` / ``AUTOTUNE_DISABLE=seed`` turn it off.

Profile options (``plugins: seed:`` in a profile YAML)::

    seed:
      seed: 1234           # the seed for random, numpy and torch (all devices); null: no reseeding
      deterministic: true  # torch.use_deterministic_algorithms + cudnn.deterministic

Reseeding changes the random streams a run trains with, so this plugin says
so (``autotune_knobs``: ``seed`` changes training, ``deterministic`` the
numerics) and autotune keeps both off unless the user sets them or chooses
by name a profile that does: installing the plugin changes nothing by itself.

Hooks it implements:

* ``autotune_detect``   -- adds whether ``CUBLAS_WORKSPACE_CONFIG`` is set the way
  deterministic cuBLAS needs (it must be set before CUDA starts, so the plugin
  can only report it, not fix it);
* ``autotune_configure`` -- proposes ``seed`` and ``deterministic`` with reasons;
* ``autotune_knobs`` -- says what each of them is: PyTorch's behaviour without
  the plugin (no reseeding, non-deterministic kernels) and what a change changes;
* ``autotune_setup_engine`` -- seeds every RNG and switches deterministic kernels
  on or off when the training engine is built, and restores the previous
  deterministic flags when the engine closes;
* ``autotune_engine_state`` / ``autotune_load_engine_state`` -- engine events:
  with a seed set, ``engine.save(...)`` also saves the random generators'
  states and ``engine.load(...)`` restores them, so a resumed run draws the
  same random numbers (dropout masks, augmentations in this process) as one
  that never stopped.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from autotune.sdk import Effect, Knob, ProfileError, Setting, default, from_profile, hookimpl

NAME = "seed"
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
#: The values cuBLAS documents for reproducible results.
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


@dataclass(frozen=True)
class Options:
    seed: int | None = None
    deterministic: bool = False


def parse_options(values: Mapping[str, Any]) -> Options:
    known = {f.name for f in fields(Options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ProfileError(f"unknown option(s) {unknown} for plugin {NAME!r}; "
                           f"known options: {sorted(known)}")
    options = Options(**values)
    if options.seed is not None and (not isinstance(options.seed, int)
                                     or isinstance(options.seed, bool) or options.seed < 0):
        raise ProfileError(f"seed.seed must be an integer >= 0 or null, got {options.seed!r}")
    return options


def propose(hardware: Any, profile_options: Mapping[str, Any],
            facts: Mapping[str, Any]) -> dict[str, Setting]:
    """The plugin's settings; pure, so tests can call it directly."""
    given = dict(profile_options)
    options = parse_options(given)
    seed = (from_profile(options.seed, f"profile sets seed {options.seed}") if "seed" in given
            else default(None, "no reseeding: the random streams are the user's; set a seed "
                               "to make runs repeatable"))
    if "deterministic" in given:
        deterministic = from_profile(options.deterministic, "profile sets deterministic")
    else:
        deterministic = default(False, "deterministic kernels are slower; turn on to compare "
                                       "runs bit for bit")
    if deterministic.value and hardware.has_cuda and not facts.get("deterministic_cublas_ready"):
        deterministic = Setting(True, deterministic.source, deterministic.reason
                                + f"; set {CUBLAS_ENV}=:4096:8 before starting Python, "
                                  "or deterministic cuBLAS calls raise")
    return {"seed": seed, "deterministic": deterministic}


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    return {"seed": Knob(off=None, effect=Effect.TRAINING),
            "deterministic": Knob(off=False, effect=Effect.NUMERICS)}


@hookimpl
def autotune_detect(hardware: Any) -> dict[str, Any]:
    value = os.environ.get(CUBLAS_ENV)
    return {"cublas_workspace_config": value,
            "deterministic_cublas_ready": value in CUBLAS_DETERMINISTIC}


@hookimpl
def autotune_configure(context: Any) -> dict[str, Setting]:
    facts = context.hardware.extra.get(NAME, {})
    return propose(context.hardware, context.options_for(NAME), facts)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (when installed) and torch's generators."""
    import torch

    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(enabled: bool) -> Callable[[], None]:
    """Switch deterministic kernels on or off; return the undo."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # warn_only: an op without a deterministic kernel warns instead of
    # stopping a training run half-way.
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic = before[2]
        torch.backends.cudnn.benchmark = before[3]

    return restore


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    values = plan.values(NAME)
    if not values:  # disabled: leave every RNG and flag alone
        return
    if values.get("seed") is not None:
        seed_everything(int(values["seed"]))
    if values.get("deterministic"):
        engine.on_close(set_deterministic(True))


@hookimpl
def autotune_engine_state(engine: Any) -> dict[str, Any] | None:
    """The generators' states, in the engine's checkpoint (seeded runs only)."""
    import torch

    if engine.plan.get(NAME, "seed") is None:
        return None
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": list(random.getstate()[1]),
                             "python_version": random.getstate()[0],
                             "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@hookimpl
def autotune_load_engine_state(engine: Any, state: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
