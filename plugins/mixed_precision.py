"""Mixed precision: autocast dtype, GradScaler, TF32.

Profile options (``plugins: mixed_precision:``)::

    mixed_precision:
      dtype: auto      # auto | bf16 | fp16 | fp32   (fp32 = autocast off)
      tf32: true       # allow TF32 matmul/cudnn on Ampere+ GPUs

``auto`` picks bf16 where the hardware has native bf16 (Ampere+ GPUs; CPUs
with AVX512-BF16 or AMX), fp16 with a GradScaler on older CUDA GPUs, and
fp32 elsewhere. Precision changes the numerics, so that pick is a proposal:
the plan applies it only once the tuner measured it faster on the user's
model (or when the user asks: an override, or a profile chosen by name);
until then the plan says "not measured" and trains in fp32. A request the hardware cannot honour is downgraded with a
warning, and the plan says so (fp16 autocast on CPU becomes bf16 or fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from autotune.sdk import (
    Context, Effect, Hardware, Kind, Knob, PluginOptions, Setting, Source, Workload, default,
    from_profile, hookimpl, option, parse_options, true_or_false)

NAME = "mixed_precision"
DTYPES = ("auto", "bf16", "fp16", "fp32")
log = logging.getLogger(f"autotune.plugins.{NAME}")


@dataclass(frozen=True)
class Options(PluginOptions):
    dtype: str = option("auto", "autocast dtype; auto: the best the hardware has, fp32: "
                        "autocast off", choices=DTYPES)
    tf32: bool = option(True, "allow TF32 matmul/cuDNN on Ampere+ GPUs")


@hookimpl
def autotune_options() -> type:
    return Options


def _best_dtype(hardware: Hardware) -> tuple[str, str]:
    if hardware.has_cuda:
        gpu = hardware.gpus[0]
        if gpu.bf16:
            return "bf16", f"{gpu.name} (sm_{gpu.compute_capability[0]}{gpu.compute_capability[1]}) has bf16 tensor cores"
        return "fp16", f"{gpu.name} has no bf16; fp16 autocast with a GradScaler"
    if hardware.cpu.has_bf16:
        flags = [f for f in ("avx512_bf16", "amx_bf16") if f in hardware.cpu.flags]
        return "bf16", f"CPU has native bf16 ({', '.join(flags) or 'bf16'})"
    return "fp32", "no native bf16 on this CPU and no GPU: autocast would only add casts"


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    best, why = _best_dtype(hardware)
    if options.dtype == "auto":
        dtype = default(best, why)
    else:
        dtype = from_profile(options.dtype, f"profile asks for {options.dtype}")
        if options.dtype == "fp16" and not hardware.has_cuda:
            fallback = "bf16" if hardware.cpu.has_bf16 else "fp32"
            log.warning("fp16 autocast needs CUDA; using %s on this CPU", fallback)
            dtype = from_profile(fallback, f"profile asks for fp16, which needs CUDA; downgraded to {fallback}")
        elif options.dtype == "bf16" and best != "bf16":
            log.warning("bf16 requested but the hardware lacks native bf16; it will be slow")
            dtype = from_profile("bf16", f"profile asks for bf16 although {why}")
    # The scaler follows the dtype, with the dtype's source: a profile's fp16
    # brings its GradScaler along.
    scaler_setting = from_profile if dtype.source is Source.PROFILE else default
    settings = {
        "dtype": dtype,
        "grad_scaler": scaler_setting(dtype.value == "fp16",
                                      "fp16 needs loss scaling" if dtype.value == "fp16"
                                      else "only fp16 needs loss scaling"),
    }
    if hardware.has_cuda:
        gpu = hardware.gpus[0]
        if not gpu.tf32:  # nothing to switch: torch's flags are left as they are
            settings["tf32"] = default(None, f"{gpu.name} has no TF32 (pre-Ampere)")
        elif "tf32" in given:
            settings["tf32"] = from_profile(options.tf32, "profile turns TF32 "
                                            + ("on" if options.tf32 else "off"))
        else:
            settings["tf32"] = default(True, "TF32 matmul/cudnn on Ampere+")
    return settings


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)


#: Precision changes the numbers computed: applied once measured faster here
#: (or asked for). Measured slower on CPUs without native bf16 and on
#: depthwise-convolution models, so never assumed.
KNOBS = {
    # The plan's dtype, once resolved: "auto" is a profile option only.
    "dtype": Knob(off="fp32", effect=Effect.NUMERICS, choices=("bf16", "fp16", "fp32")),
    "grad_scaler": Knob(off=False, effect=Effect.NUMERICS, check=true_or_false()),
    "tf32": Knob(off=None, effect=Effect.NUMERICS, check=true_or_false(or_null=True)),
}


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    return dict(KNOBS)


# -- application -----------------------------------------------------------------


def set_tf32(enabled: bool) -> Callable[[], None]:
    """Allow (or forbid) TF32 for CUDA matmuls and cuDNN convolutions;
    returns the undo. Uses the ``fp32_precision`` API where torch has it
    (2.9+): mixing it with the legacy ``allow_tf32`` flags makes torch raise."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        before = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        value = "tf32" if enabled else "ieee"
        matmul.fp32_precision, cudnn.conv.fp32_precision = value, value

        def restore() -> None:
            matmul.fp32_precision, cudnn.conv.fp32_precision = before
    else:
        legacy = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = enabled

        def restore() -> None:
            matmul.allow_tf32, cudnn.allow_tf32 = legacy
    return restore


def _grad_scaler(device_type: str) -> Any:
    import torch

    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3, any device
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler(enabled=device_type == "cuda")


def _autocast_dtype(dtype: str) -> Any:
    """The torch dtype autocast runs in for ``dtype`` (None: fp32, autocast off)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)


def setup_precision(engine: Any, dtype: str, grad_scaler: bool, tf32: bool | None = None) -> None:
    """Install autocast (with a GradScaler for fp16) on ``engine``; on CUDA
    also set TF32, undone when the engine closes."""
    import torch

    device_type = engine.device.type
    if dtype == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        why = f"{torch.cuda.get_device_name(engine.device)} has no bf16: fp16 with a GradScaler"
        engine.note(NAME, Kind.FALLBACK, why)
        engine.revise_plan(NAME, {"dtype": "fp16", "grad_scaler": True}, why)
        dtype, grad_scaler = "fp16", True
    if dtype in ("bf16", "fp16"):
        torch_dtype = _autocast_dtype(dtype)
        scaler = _grad_scaler(device_type) if dtype == "fp16" and grad_scaler else None
        engine.plugin_state(NAME).update(dtype=torch_dtype, scaler=scaler, kept_scaler=scaler)
        engine.note(NAME, Kind.APPLIED, f"autocast({device_type}, {dtype})"
                    + (" with a GradScaler" if scaler is not None else ""))
        if dtype == "fp16" and scaler is None:
            engine.note(NAME, Kind.WARNING, "fp16 without a GradScaler: small gradients may "
                        "underflow to zero")
        if dtype == "fp16" and device_type == "cpu":
            engine.note(NAME, Kind.WARNING, "fp16 autocast on a CPU is emulated and slow")
    else:
        engine.note(NAME, Kind.SKIPPED, f"{dtype}: autocast off")
    if tf32 is not None and device_type == "cuda":
        engine.on_close(set_tf32(bool(tf32)))
        engine.note(NAME, Kind.APPLIED, f"TF32 {'on' if tf32 else 'off'} for matmul and cuDNN "
                    "(restored when the engine closes)")


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    values = plan.values(NAME)
    setup_precision(engine, values.get("dtype", "fp32"), bool(values.get("grad_scaler")),
                    values.get("tf32"))


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    """Precision changes between optimizer steps (online tuning with
    ``allow=["precision"]``): autocast's dtype and the fp16 GradScaler are
    this engine's state, read at every step. Not part-way through an
    accumulation window (its gradients would mix scaled and unscaled
    parts), and not to bf16 on a GPU without it. One GradScaler is kept per
    engine, so its scale carries over when fp16 comes back."""
    import torch

    if set(values) - {"dtype", "grad_scaler", "tf32"} or engine.pending_micro_batches:
        return False
    dtype = values.get("dtype", engine.plan.get(NAME, "dtype", "fp32"))
    scaled = bool(values.get("grad_scaler", engine.plan.get(NAME, "grad_scaler", False)))
    device_type = engine.device.type
    if dtype not in ("bf16", "fp16", "fp32") or (
            dtype == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported()):
        return False
    state = engine.plugin_state(NAME)
    if dtype == "fp16" and scaled and state.get("kept_scaler") is None:
        state["kept_scaler"] = _grad_scaler(device_type)
    state["dtype"] = _autocast_dtype(dtype)
    state["scaler"] = state.get("kept_scaler") if dtype == "fp16" and scaled else None
    if "tf32" in values and values["tf32"] is not None and device_type == "cuda":
        engine.on_close(set_tf32(bool(values["tf32"])))  # undone last-first at close
    return True


# -- the step: autocast around forward and loss, the fp16 GradScaler around
#    backward and the optimizer step ---------------------------------------------


def autocast_dtype(engine: Any) -> Any:
    """The autocast dtype this plugin set on ``engine`` (None: off)."""
    return engine.plugin_state(NAME).get("dtype")


def grad_scaler(engine: Any) -> Any:
    """The GradScaler this plugin set on ``engine`` (fp16 only), or None."""
    return engine.plugin_state(NAME).get("scaler")


@hookimpl
def autotune_forward_context(engine: Any) -> Any:
    dtype = autocast_dtype(engine)
    if dtype is None:
        return None
    import torch

    return torch.autocast(device_type=engine.device.type, dtype=dtype)


# First: the fp16 scale multiplies the loss before any other transform
# (accumulation's division by the window).
@hookimpl(tryfirst=True)
def autotune_transform_loss(engine: Any, loss: Any) -> Any:
    scaler = grad_scaler(engine)
    return None if scaler is None else scaler.scale(loss)


@hookimpl(tryfirst=True)
def autotune_before_optimizer_step(engine: Any, optimizer: Any) -> None:
    # First, so every later plugin (clipping) sees true gradients; the
    # scaler's step then does not unscale again.
    scaler = grad_scaler(engine)
    if scaler is not None:
        scaler.unscale_(optimizer)


@hookimpl
def autotune_optimizer_step(engine: Any, optimizer: Any) -> bool | None:
    scaler = grad_scaler(engine)
    if scaler is None:
        return None
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    # GradScaler lowers its scale exactly when it found inf/NaN gradients
    # and so skipped optimizer.step().
    stepped = not scaler.get_scale() < before
    if not stepped:
        state = engine.plugin_state(NAME)
        state["skipped"] = state.get("skipped", 0) + 1
        state["epoch_skipped"] = state.get("epoch_skipped", 0) + 1
    return stepped


def skipped_steps(engine: Any) -> int:
    """Optimizer steps the fp16 GradScaler skipped on ``engine`` (inf/NaN
    gradients), over its life; each epoch's count is its record's
    ``extra["mixed_precision.skipped_steps"]``."""
    return int(engine.plugin_state(NAME).get("skipped", 0))


@hookimpl
def autotune_epoch_start(engine: Any) -> None:
    if grad_scaler(engine) is not None:
        engine.plugin_state(NAME)["epoch_skipped"] = 0


@hookimpl
def autotune_epoch_end(engine: Any) -> dict[str, float] | None:
    """The epoch's skipped steps, as ``mixed_precision.skipped_steps`` (fp16 with a scaler)."""
    if grad_scaler(engine) is None:
        return None
    return {f"{NAME}.skipped_steps": float(engine.plugin_state(NAME).get("epoch_skipped", 0))}


@hookimpl
def autotune_engine_state(engine: Any) -> dict[str, Any] | None:
    scaler = grad_scaler(engine)
    return None if scaler is None else {"scaler": scaler.state_dict(),
                                        "skipped_steps": skipped_steps(engine)}


@hookimpl
def autotune_load_engine_state(engine: Any, state: Mapping[str, Any]) -> None:
    scaler = grad_scaler(engine)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if scaler is not None:
        engine.plugin_state(NAME)["skipped"] = int(state.get("skipped_steps", 0))


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    dtype = autocast_dtype(engine)
    return {"autocast_dtype": None if dtype is None else str(dtype),
            "grad_scaler": grad_scaler(engine) is not None}


# -- candidates for measured tuning ------------------------------------------------


def candidates(hardware: Hardware, plan_values: Mapping[str, Any] | None = None,
               workload: Workload | None = None) -> list[dict[str, Any]]:
    """Precisions worth a trial on ``hardware``, most promising first: bf16
    where it is native, fp16 (with a GradScaler) on CUDA only, TF32 for fp32
    on Ampere+, and fp32. Never fp16 on a CPU, never bf16 on a CPU without
    bf16 instructions (both are emulated there and slow)."""
    has_tf32_key = "tf32" in (plan_values or {})
    out: list[dict[str, Any]] = []
    if hardware.has_cuda:
        gpu = hardware.gpus[0]
        if gpu.bf16:
            out.append({"dtype": "bf16", "grad_scaler": False})
        out.append({"dtype": "fp16", "grad_scaler": True})
        if has_tf32_key and gpu.tf32:
            out.append({"dtype": "fp32", "grad_scaler": False, "tf32": True})
        out.append({"dtype": "fp32", "grad_scaler": False, **({"tf32": False} if has_tf32_key else {})})
    else:
        if hardware.cpu.has_bf16:
            out.append({"dtype": "bf16", "grad_scaler": False})
        out.append({"dtype": "fp32", "grad_scaler": False})
    return out


@hookimpl
def autotune_candidates(context: Context, plan: Any) -> list[dict[str, Any]]:
    return candidates(context.hardware, plan.values(NAME), context.workload)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if device_type == "cuda":
        return 0.6, "tensor cores run bf16/fp16 matmuls and convolutions much faster"
    if context.hardware.cpu.has_bf16:
        return 0.6, "the CPU has native bf16 (AVX512-BF16/AMX)"
    return 0.0, "no native bf16 on this CPU and fp16 autocast needs CUDA"


@hookimpl
def autotune_prune_candidate(context: Context, values: Mapping[str, Any],
                             device_type: str) -> str | None:
    hardware = context.hardware
    cuda = device_type == "cuda"
    dtype = values.get("dtype")
    if dtype == "fp16" and not cuda:
        return "fp16 autocast needs CUDA (emulated and slow on a CPU)"
    if dtype == "bf16" and not cuda and not hardware.cpu.has_bf16:
        return "this CPU has no bf16 instructions (AVX512-BF16/AMX)"
    if dtype == "bf16" and cuda and hardware.gpus and not hardware.gpus[0].bf16:
        return f"{hardware.gpus[0].name} has no bf16 tensor cores"
    return None
