"""SDPA kernel: which kernel ``scaled_dot_product_attention`` runs in the step.

Profile options (``plugins: sdpa:``)::

    sdpa:
      backend: null    # null (torch picks per call) | math | flash | efficient | cudnn

Without autotune, torch picks a kernel for every call of
``torch.nn.functional.scaled_dot_product_attention`` (flash, memory-efficient
or cuDNN attention where the inputs allow it, the math kernel otherwise).
With ``backend`` set, the engine enters ``torch.nn.attention.sdpa_kernel``
around every forward pass (training and evaluation), so only that kernel may
run. Kernels round differently, so the setting changes the numerics: it is
applied only once the tuner measured it faster on the user's model, or when
the user asks (an override, or a profile chosen by name). ``efficient`` and
``cudnn`` need CUDA; on a CPU torch has ``math`` and ``flash``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from autotune.sdk import (
    STEP, Context, Effect, Kind, Knob, PluginOptions, Setting, default, from_profile, hookimpl,
    option, parse_options)

NAME = "sdpa"
#: The plan's values; ``None``: torch picks the kernel per call.
BACKENDS = (None, "math", "flash", "efficient", "cudnn")
#: The members of ``torch.nn.attention.SDPBackend`` they select.
MEMBERS = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
           "cudnn": "CUDNN_ATTENTION"}
#: Kernels torch has only for CUDA tensors.
CUDA_ONLY = ("efficient", "cudnn")


@dataclass(frozen=True)
class Options(PluginOptions):
    backend: str | None = option(None, "the only kernel scaled_dot_product_attention may run; "
                                 "null: torch picks per call", choices=BACKENDS)


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Any, profile_options: Mapping[str, Any] | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    given = dict(profile_options or {})
    options = parse_options(NAME, Options, given)
    if "backend" not in given or options.backend is None:
        return {"backend": default(None, "torch picks the attention kernel for each call "
                                         "(flash, memory-efficient, cuDNN or math)")}
    if options.backend in CUDA_ONLY and not hardware.has_cuda:
        return {"backend": from_profile(None, f"profile asks for the {options.backend} kernel, "
                                              "which needs CUDA: torch picks")}
    return {"backend": from_profile(options.backend,
                                    f"profile asks for the {options.backend} attention kernel")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME))


#: Another kernel rounds differently: a numerics knob, measured per step.
KNOBS = {"backend": Knob(off=None, effect=Effect.NUMERICS, phase=STEP, choices=BACKENDS)}


@hookimpl
def autotune_knobs() -> dict[str, Knob]:
    return dict(KNOBS)


# -- application -----------------------------------------------------------------


def kernel_context(backend: str) -> Callable[[], Any]:
    """A factory of context managers that allow only ``backend``:
    ``torch.nn.attention.sdpa_kernel`` (torch 2.3+), else the older
    ``torch.backends.cuda.sdp_kernel`` flags (no cuDNN attention there)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch 2.2
        import torch

        if backend == "cudnn":
            raise ValueError("cuDNN attention needs torch 2.3 or newer") from None
        flags = {"enable_math": backend == "math", "enable_flash": backend == "flash",
                 "enable_mem_efficient": backend == "efficient"}
        return lambda: torch.backends.cuda.sdp_kernel(**flags)
    member = getattr(SDPBackend, MEMBERS[backend], None)
    if member is None:
        raise ValueError(f"this torch has no SDPBackend.{MEMBERS[backend]}")
    return lambda: sdpa_kernel(member)


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    backend = plan.get(NAME, "backend")
    state = engine.plugin_state(NAME)
    state.update(backend=None, context=None)
    if backend is None:
        engine.note(NAME, Kind.SKIPPED, "backend=null: torch picks the attention kernel per call")
        return
    if backend not in MEMBERS:
        raise ValueError(f"sdpa.backend must be one of {BACKENDS}, got {backend!r}")
    if backend in CUDA_ONLY and engine.device.type != "cuda":
        raise ValueError(f"the {backend} attention kernel needs CUDA; this engine trains on "
                         f"{engine.device}")
    state.update(backend=backend, context=kernel_context(backend))
    engine.note(NAME, Kind.APPLIED, f"scaled_dot_product_attention runs only the {backend} "
                "kernel (sdpa_kernel around every forward)")


# -- the step: the kernel choice around forward and loss ---------------------------


@hookimpl
def autotune_forward_context(engine: Any, training: bool) -> Any:
    # The same kernel for training and evaluation batches.
    factory = engine.plugin_state(NAME).get("context")
    return None if factory is None else factory()


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    return {"sdpa_backend": engine.plugin_state(NAME).get("backend")}


# -- measured tuning ---------------------------------------------------------------


def candidates(hardware: Any) -> list[dict[str, Any]]:
    """Kernels worth a trial, most promising first: on a CPU torch's flash
    and math kernels; with CUDA also memory-efficient and cuDNN attention."""
    if hardware.has_cuda:
        return [{"backend": b} for b in ("flash", "efficient", "cudnn", "math")]
    return [{"backend": "flash"}, {"backend": "math"}]


@hookimpl
def autotune_candidates(context: Context) -> list[dict[str, Any]]:
    return candidates(context.hardware)


@hookimpl
def autotune_search_prior(context: Context, device_type: str) -> tuple[float, str]:
    if device_type == "cuda":
        return 0.2, "fused attention kernels differ a lot in speed on a GPU"
    return 0.05, "torch has two attention kernels on a CPU (flash and math)"


@hookimpl
def autotune_prune_candidate(context: Context, values: Mapping[str, Any],
                             device_type: str) -> str | None:
    backend = values.get("backend")
    if backend in CUDA_ONLY and device_type != "cuda":
        return f"the {backend} attention kernel needs CUDA"
    return None
