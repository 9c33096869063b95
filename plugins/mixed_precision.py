"""Mixed precision: autocast dtype, GradScaler, TF32.

Profile options (``plugins: mixed_precision:``)::

    mixed_precision:
      dtype: auto      # auto | bf16 | fp16 | fp32   (fp32 = autocast off)
      tf32: true       # allow TF32 matmul/cudnn on Ampere+ GPUs

``auto`` picks bf16 where the hardware has native bf16 (Ampere+ GPUs; CPUs
with AVX512-BF16 or AMX), fp16 with a GradScaler on older CUDA GPUs, and
fp32 elsewhere. A request the hardware cannot honour is downgraded with a
warning, and the plan says so (fp16 autocast on CPU becomes bf16 or fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.options import parse_options
from autotune.plan import Setting, default, from_profile

NAME = "mixed_precision"
DTYPES = ("auto", "bf16", "fp16", "fp32")
log = logging.getLogger(f"autotune.plugins.{NAME}")


@dataclass(frozen=True)
class Options:
    dtype: str = "auto"
    tf32: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"mixed_precision.dtype={self.dtype!r} is not one of {DTYPES}")


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
    settings = {
        "dtype": dtype,
        "grad_scaler": default(dtype.value == "fp16",
                               "fp16 needs loss scaling" if dtype.value == "fp16"
                               else "only fp16 needs loss scaling"),
    }
    if hardware.has_cuda:
        tf32_ok = hardware.gpus[0].tf32 and options.tf32
        settings["tf32"] = Setting(tf32_ok, settings["dtype"].source,
                                   "TF32 matmul/cudnn on Ampere+" if tf32_ok else "TF32 off")
    return settings


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
