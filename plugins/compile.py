"""torch.compile, with a mode from the plan and an eager fallback.

Profile options::

    compile:
      mode: "off"   # off | default | reduce-overhead | max-autotune
      fullgraph: false

The rule-based default is ``off``: compilation costs start-up time that a
short run may never win back, and whether it pays depends on the model and
the device, so it is a thing to *measure* (the tuner offers the modes as
candidates) rather than assume. Profiles for large GPUs may turn it on.
A model that fails to compile trains eagerly; the reason is in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune.sdk import (
    Context, Hardware, Kind, Knob, PluginOptions, Recovery, Setting, Workload, default,
    from_profile, hookimpl, option, parse_options, true_or_false)

NAME = "compile"
MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Options(PluginOptions):
    mode: str = option("off", "torch.compile mode; off: eager", choices=MODES)
    fullgraph: bool = option(False, "refuse graph breaks")


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    if "mode" in given:
        mode = from_profile(options.mode, f"profile sets mode {options.mode}")
    else:
        mode = default("off", "compile pays only when measured to; the tuner tries its modes")
    if mode.value == "reduce-overhead" and not hardware.has_cuda:
        mode = from_profile("default", "reduce-overhead needs CUDA graphs; using mode default on CPU")
    fullgraph = (from_profile(options.fullgraph, "profile sets fullgraph") if "fullgraph" in given
                 else default(False, "allow graph breaks"))
    return {"mode": mode, "fullgraph": fullgraph}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    # Measured slower than eager on some models (benchmarks/results/
    # cpu_transformer.json: fp32 compile 0.81x), so never assumed.
    # Compiling makes the first step about a dozen eager first steps long:
    # benchmarks/results/budget_buys_cnn.json, 150 s search, ResNet-18 on a
    # 2-core EPYC with cold caches: 51.0 s compiled vs 3.1 s eager.
    return {"mode": Knob(off="off", measure_first=True, first_step_cost=12.0, choices=MODES),
            "fullgraph": Knob(off=False, check=true_or_false())}


# -- application -----------------------------------------------------------------


def compile_model(model: Any, mode: str, fullgraph: bool = False) -> Any:
    """``torch.compile`` with the plan's mode. Compilation itself happens
    lazily, at the first forward (and the first backward)."""
    import torch

    if mode not in MODES or mode == "off":
        raise ValueError(f"compile mode must be one of {MODES[1:]}, got {mode!r}")
    return torch.compile(model, mode=None if mode == "default" else mode, fullgraph=fullgraph)


@hookimpl
def autotune_apply_model(model: Any, plan: Any, report: Any) -> Any:
    from autotune.sdk import is_compiled

    mode = plan.get(NAME, "mode", "off")
    fullgraph = bool(plan.get(NAME, "fullgraph", False))
    if mode == "off":
        report.add(NAME, Kind.SKIPPED, "mode=off: the model runs eagerly")
        return model
    if is_compiled(model):
        report.add(NAME, Kind.SKIPPED, "the model is already compiled")
        return model
    try:
        compiled = compile_model(model, mode, fullgraph)
    except Exception as exc:  # noqa: BLE001 - e.g. an unsupported platform
        report.add(NAME, Kind.FALLBACK, f"torch.compile raised {type(exc).__name__}: {exc}; "
                   "the model runs eagerly")
        return model
    report.add(NAME, Kind.APPLIED, f"torch.compile(mode={mode!r}, fullgraph={fullgraph}); it "
               "compiles at the first step and falls back to eager if that fails")
    return compiled


@hookimpl
def autotune_wrap_distributed(model: Any, plan: Any, report: Any) -> Any:
    """Under DDP ``torch.compile`` goes over the DistributedDataParallel
    module (DDP's graph-break optimizer splits the graph at bucket
    boundaries); ``autotune_apply_model`` is not called there."""
    mode = plan.get(NAME, "mode", "off")
    if mode == "off":
        return None
    compiled = compile_model(model, mode, bool(plan.get(NAME, "fullgraph", False)))
    report.add(NAME, Kind.APPLIED, f"torch.compile(mode={mode!r}) over DistributedDataParallel")
    return compiled


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    """Guard the compiled model: compile errors surface only at the first
    forward/backward, so the engine retries eagerly and the reason lands in
    the report and in the engine's plan (``compile.mode`` becomes ``off``)."""
    from autotune.sdk import is_compiled

    if not is_compiled(engine.model):
        return

    engine.plugin_state(NAME)["eager"] = engine.model._orig_mod


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    """Compiled or eager during a run (online tuning): the engine trains the
    compiled wrapper of its module, or the module itself. A wrapper is made
    once per mode and kept, so switching back compiles nothing (dynamo
    caches the graphs per code object); a compile error at its first step
    falls back to eager as at set-up. Not under DDP, whose wrapper is built
    around the compiled module once."""
    from autotune.sdk import find_ddp

    if set(values) - {"mode", "fullgraph"} or find_ddp(engine.model) is not None:
        return False
    mode = values.get("mode", engine.plan.get(NAME, "mode", "off"))
    fullgraph = bool(values.get("fullgraph", engine.plan.get(NAME, "fullgraph", False)))
    if mode not in MODES:
        return False
    state = engine.plugin_state(NAME)
    eager = engine.module
    if mode == "off":
        engine.model = eager
        state.pop("eager", None)
        return True
    wrappers = state.setdefault("wrappers", {})
    if (mode, fullgraph) not in wrappers:
        try:
            wrappers[mode, fullgraph] = compile_model(eager, mode, fullgraph)
        except Exception as exc:  # noqa: BLE001 - e.g. an unsupported platform
            engine.note(NAME, Kind.FALLBACK, f"torch.compile raised {type(exc).__name__}: {exc}")
            return False
    engine.model = wrappers[mode, fullgraph]
    state["eager"] = eager
    return True


@hookimpl
def autotune_step_failed(engine: Any, error: BaseException, phase: str) -> Any:
    """A compiled forward or backward raised: train the eager module
    instead. When the eager step fails too, the error is the user's own and
    the compiled model comes back."""
    state = engine.plugin_state(NAME)
    eager = state.pop("eager", None)
    if eager is None:
        return None
    compiled = engine.model
    engine.model = eager

    def undo() -> None:
        engine.model = compiled
        state["eager"] = eager

    def done(reason: str) -> None:
        why = f"torch.compile failed, trained eagerly: {reason}"
        engine.note(NAME, Kind.FALLBACK, why)
        engine.revise_plan(NAME, {"mode": "off"}, why)

    return Recovery(undo=undo, done=done)


# -- candidates for measured tuning ------------------------------------------------


def candidates(hardware: Hardware, plan_values: Mapping[str, Any] | None = None,
               workload: Workload | None = None) -> list[dict[str, Any]]:
    """Modes worth a trial, most promising first. CUDA: reduce-overhead
    (CUDA graphs remove launch overhead, often the bottleneck of small
    steps), default, max-autotune. CPU: default only -- reduce-overhead needs
    CUDA graphs, and max-autotune's kernel autotuning multiplies compile time
    for a search budget better spent elsewhere (set ``compile.mode:
    max-autotune`` to use it). ``off`` is always a candidate."""
    if hardware.has_cuda:
        modes = ["reduce-overhead", "default", "max-autotune"]
    else:
        modes = ["default"]
    return [{"mode": m} for m in (*modes, "off")]


@hookimpl
def autotune_candidates(context: Context, plan: Any) -> list[dict[str, Any]]:
    return candidates(context.hardware, plan.values(NAME), context.workload)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if device_type == "cuda":
        return 0.4, "kernel fusion and CUDA graphs"
    return 0.2, "inductor fuses elementwise ops; pays only on some models on CPU"


@hookimpl
def autotune_prune_candidate(values: Mapping[str, Any], device_type: str) -> str | None:
    if values.get("mode") == "reduce-overhead" and device_type != "cuda":
        return "reduce-overhead uses CUDA graphs, which need CUDA"
    return None
