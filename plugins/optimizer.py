"""The optimizer's implementation: torch's fused or foreach kernels for the
optimizer the user built (Adam, AdamW, SGD, Adagrad...).

Profile options::

    optimizer:
      implementation: off   # off (as built) | foreach | fused

``off`` keeps the optimizer exactly as the user built it. ``foreach``
updates all parameters of a group with a few multi-tensor kernels;
``fused`` does the whole update in one kernel per dtype and device (CUDA,
and the CPU since torch 2.4). Both are the same algorithm as the
single-tensor loop, within float rounding, so this is a speed setting --
but one to measure first: which one wins depends on the model's number and
size of parameters and on the device.

The switch is made **in place** on the user's optimizer (its param groups,
state, hyper-parameters and any scheduler bound to it stay as they are)
and undone when the engine closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from autotune.sdk import (
    Context, Hardware, Kind, Knob, PluginOptions, Setting, Workload, default, from_profile,
    hookimpl, option, parse_options)

NAME = "optimizer"
IMPLEMENTATIONS = ("off", "foreach", "fused")
#: torch.optim classes that take ``fused=True`` (torch >= 2.4 on CPU and CUDA).
FUSED_OPTIMIZERS = ("Adam", "AdamW", "SGD", "Adagrad")


@dataclass(frozen=True)
class Options(PluginOptions):
    implementation: str = option("off", "off: the optimizer as built; foreach/fused: torch's "
                                 "multi-tensor or fused kernels", choices=IMPLEMENTATIONS)


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    if "implementation" in given:
        return {"implementation": from_profile(options.implementation,
                                               f"profile sets {options.implementation}")}
    return {"implementation": default("off", "the optimizer as you built it; fused and "
                                              "foreach kernels are measured before they apply")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    return {"implementation": Knob(off="off", measure_first=True, choices=IMPLEMENTATIONS)}


def candidates(workload: Workload | None) -> list[dict[str, Any]]:
    """fused, then foreach, for the optimizers torch has fused kernels for;
    ``off`` (the single-tensor loop, or torch's own default) is the baseline."""
    if workload is None or workload.optimizer not in FUSED_OPTIMIZERS:
        return []
    return [{"implementation": "fused"}, {"implementation": "foreach"}]


@hookimpl
def autotune_candidates(context: Context) -> list[dict[str, Any]]:
    return candidates(context.workload)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if context.workload.optimizer not in FUSED_OPTIMIZERS:
        return 0.0, f"no fused kernels for {context.workload.optimizer or 'this optimizer'}"
    return (0.2, "one fused kernel instead of one per parameter: launch-bound steps gain") \
        if device_type == "cuda" else (0.05, "fewer Python-level loops over parameters")


# -- application -----------------------------------------------------------------


def why_unsupported(optimizer: Any, implementation: str) -> str | None:
    """Why ``optimizer`` cannot use ``implementation`` here, or None."""
    import torch

    if implementation == "off":
        return None
    if implementation not in optimizer.defaults:
        return f"{type(optimizer).__name__} has no {implementation!r} option"
    if any(group.get("differentiable") for group in optimizer.param_groups):
        return "differentiable=True optimizers have no fused/foreach kernels"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if implementation == "fused":
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
        for p in params:
            if p.device.type not in devices or not torch.is_floating_point(p):
                return f"fused kernels need floating-point parameters on {sorted(devices)}"
    return None


def use_implementation(optimizer: Any, implementation: str) -> Callable[[], None]:
    """Switch ``optimizer`` to ``implementation`` in place; returns the undo.

    The param groups (and so learning rates a scheduler changes), the state
    and every hyper-parameter stay; only the ``foreach``/``fused`` flags
    change. A fused step keeps its step counts on the parameters' device,
    so existing counts move there (and back on undo)."""
    groups = [(group, group.get("foreach"), group.get("fused")) for group in
              optimizer.param_groups]
    defaults = (optimizer.defaults.get("foreach"), optimizer.defaults.get("fused"))
    amp_scaling = getattr(optimizer, "_step_supports_amp_scaling", False)
    fused, foreach = implementation == "fused", implementation == "foreach"
    for group, _, _ in groups:
        group["foreach"], group["fused"] = foreach, fused
    optimizer.defaults["foreach"], optimizer.defaults["fused"] = foreach, fused
    if fused:
        # What torch's constructors do for fused=True: GradScaler hands the
        # fused kernel its scale and inf check instead of unscaling itself.
        optimizer._step_supports_amp_scaling = True
    _place_steps(optimizer, on_device=fused)

    def undo() -> None:
        for group, old_foreach, old_fused in groups:
            group["foreach"], group["fused"] = old_foreach, old_fused
        optimizer.defaults["foreach"], optimizer.defaults["fused"] = defaults
        optimizer._step_supports_amp_scaling = amp_scaling
        _place_steps(optimizer, on_device=bool(defaults[1]))

    return undo


def _place_steps(optimizer: Any, on_device: bool) -> None:
    import torch

    for group in optimizer.param_groups:
        if group.get("capturable"):
            continue  # capturable keeps its counts on the device anyway
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                where = p.device if on_device else torch.device("cpu")
                optimizer.state[p]["step"] = step.to(where, torch.float32)


@hookimpl
def autotune_apply_optimizer(optimizer: Any, engine: Any, plan: Any) -> None:
    implementation = plan.get(NAME, "implementation", "off") or "off"
    if implementation == "off":
        engine.note(NAME, Kind.SKIPPED, f"off: {type(optimizer).__name__} as you built it")
        return None
    why = why_unsupported(optimizer, implementation)
    if why is not None:
        message = f"{implementation} not used: {why}"
        engine.note(NAME, Kind.FALLBACK, message)
        engine.revise_plan(NAME, {"implementation": "off"}, message)
        return None
    _switch(engine, optimizer, implementation)
    engine.note(NAME, Kind.APPLIED, f"{type(optimizer).__name__}({implementation}=True), "
                "param groups and state kept (undone when the engine closes)")
    return None


def _switch(engine: Any, optimizer: Any, implementation: str) -> None:
    """Back to the optimizer as built, then to ``implementation``; the
    engine's close goes back to as built."""
    state = engine.plugin_state(NAME)
    if "undo" not in state:
        engine.on_close(lambda: state.pop("undo", lambda: None)())
        state["undo"] = lambda: None
    state.pop("undo")()
    state["undo"] = (use_implementation(optimizer, implementation)
                     if implementation != "off" else lambda: None)


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    """Another implementation during a run (online tuning): the flags change
    in place between two optimizer steps, the state and param groups stay."""
    if set(values) != {"implementation"}:
        return False
    implementation = values["implementation"] or "off"
    if implementation not in IMPLEMENTATIONS \
            or why_unsupported(engine.optimizer, implementation) is not None:
        return False
    _switch(engine, engine.optimizer, implementation)
    return True


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    group = engine.optimizer.param_groups[0] if engine.optimizer.param_groups else {}
    implementation = "fused" if group.get("fused") else "foreach" if group.get("foreach") \
        else "off"
    return {"optimizer_implementation": implementation}
