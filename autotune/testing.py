"""Helpers for testing autotune plugins and profiles (ours and yours).

* :func:`fake_hardware` builds a :class:`~autotune.machine.hardware.Hardware` for a
  machine you do not have; :func:`rtx5080_7950x`, :func:`h100_box`,
  :func:`a100_box`, :func:`rtx4090_box` and :func:`cpu_laptop` are ready-made
  ones with the real specifications of those parts.
* :func:`plugin_manager` gives a :class:`~autotune.plugin.manager.PluginManager`
  that loads the built-ins (and the plugin objects you pass) and neither
  loads nor lists third-party entry points, so a test sees the same plugins
  everywhere, whatever else is installed.
* :data:`BUILTIN_PLUGINS` names the built-ins as installed, to turn them
  off and test a plugin alone.
* :class:`HookRecorder` is a plugin that records every hook call it gets.
* :func:`requires` returns a pytest skip mark with a readable reason.

Example::

    from autotune.testing import h100_box, plugin_manager, requires
    from autotune import make_plan

    def test_my_plugin_on_h100():
        planned = make_plan(hardware=h100_box(), manager=plugin_manager(plugins=[my_plugin]))
        assert planned.plan.get("my_plugin", "key") == ...

    @requires(cuda=True, bf16=True)
    def test_on_a_real_gpu(): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping, Sequence

from autotune.machine.detect import detect
from autotune.machine.hardware import CPU, GIB, GPU, Hardware, Memory
from autotune.plugin.manager import PluginManager
from autotune.plugin.markers import hookimpl
from autotune.plugin.registry import builtin_names

MIB = 1024**2

#: x86 flags of a Zen 4 / Sapphire Rapids class CPU without AMX.
_ZEN4_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
               "avx512_vnni", "avx512_bf16")
_SAPPHIRE_RAPIDS_FLAGS = (*_ZEN4_FLAGS, "avx512_fp16", "avx_vnni", "amx_tile",
                          "amx_bf16", "amx_int8")


def fake_cpu(**overrides: Any) -> CPU:
    """A CPU; by default a 4-core/8-thread x86 CPU with AVX2 and no bf16."""
    base = CPU(brand="Generic x86-64 CPU", vendor="Intel", arch="x86_64", physical_cores=4,
               logical_cores=8, usable_cores=8.0, flags=("avx", "avx2", "fma", "f16c"))
    if "flags" in overrides:
        overrides["flags"] = tuple(overrides["flags"])
    if "logical_cores" in overrides and "usable_cores" not in overrides:
        overrides["usable_cores"] = float(overrides["logical_cores"])
    return replace(base, **overrides)


def fake_gpu(name: str = "NVIDIA GeForce RTX 4090", memory_gb: float = 24.0,
             compute_capability: tuple[int, int] = (8, 9), index: int = 0,
             **overrides: Any) -> GPU:
    """A GPU as NVML would report it."""
    return GPU(index=index, name=name, memory_total_bytes=int(memory_gb * GIB),
               compute_capability=tuple(compute_capability),  # type: ignore[arg-type]
               driver_version=overrides.pop("driver_version", "570.00"),
               uuid=overrides.pop("uuid", f"GPU-fake-{index}"), **overrides)


def _coerce(cls: type, value: Any, make: Any) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return make(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping of its fields, got {value!r}")


def fake_hardware(*, cpu: CPU | Mapping[str, Any] | None = None,
                  memory: Memory | Mapping[str, Any] | float | None = None,
                  gpus: Sequence[GPU | Mapping[str, Any]] = (),
                  cuda_available: bool | None = None, **fields_: Any) -> Hardware:
    """A :class:`Hardware` for tests.

    :param cpu: a :class:`CPU`, or overrides for :func:`fake_cpu`.
    :param memory: a :class:`Memory`, overrides for it, or total GiB.
    :param gpus: :class:`GPU` objects or keyword mappings for :func:`fake_gpu`.
    :param cuda_available: defaults to "there are GPUs" (a CUDA torch build).
    :param fields_: any other :class:`Hardware` field (``os``, ``notes``...).
    """
    cpu_obj = _coerce(CPU, cpu, fake_cpu) or fake_cpu()
    if isinstance(memory, (int, float)):
        memory = Memory(total_bytes=int(memory * GIB), available_bytes=int(memory * GIB * 0.8))
    memory_obj = _coerce(Memory, memory, Memory) or Memory(16 * GIB, 12 * GIB)
    gpu_objs = tuple(_coerce(GPU, g, lambda **kw: fake_gpu(**kw)) for g in gpus)
    gpu_objs = tuple(replace(g, index=i) for i, g in enumerate(gpu_objs))
    has_gpus = bool(gpu_objs)
    defaults: dict[str, Any] = {
        "os": "Linux 6.8.0",
        "python_version": "3.11.7",
        "torch_version": "2.13.0+cu128" if has_gpus else "2.13.0+cpu",
        "cuda_version": "12.8" if has_gpus else "",
        "notes": () if has_gpus else ("no GPU: this torch is a CPU-only build",),
    }
    known = {f.name for f in fields(Hardware)}
    unknown = sorted(set(fields_) - known)
    if unknown:
        raise TypeError(f"unknown Hardware field(s) {unknown}; known: {sorted(known)}")
    defaults.update(fields_)
    defaults["notes"] = tuple(defaults["notes"])
    return Hardware(cpu=cpu_obj, memory=memory_obj, gpus=gpu_objs,
                    cuda_available=has_gpus if cuda_available is None else cuda_available,
                    **defaults)


# -- machines people train on ------------------------------------------------


def rtx5080_7950x() -> Hardware:
    """GeForce RTX 5080 (16 GB, Blackwell sm_120) + Ryzen 9 7950X (16C/32T, Zen 4)."""
    return fake_hardware(
        cpu=CPU(brand="AMD Ryzen 9 7950X 16-Core Processor", vendor="AMD", arch="x86_64",
                physical_cores=16, logical_cores=32, usable_cores=32.0, flags=_ZEN4_FLAGS),
        memory=64,
        gpus=[fake_gpu("NVIDIA GeForce RTX 5080", 16303 * MIB / GIB, (12, 0))],
    )


def h100_box() -> Hardware:
    """One H100 80 GB (Hopper sm_90) in a 52-core Sapphire Rapids server."""
    return fake_hardware(
        cpu=CPU(brand="Intel(R) Xeon(R) Platinum 8480+", vendor="Intel", arch="x86_64",
                physical_cores=52, logical_cores=104, usable_cores=104.0,
                flags=_SAPPHIRE_RAPIDS_FLAGS),
        memory=512,
        gpus=[fake_gpu("NVIDIA H100 80GB HBM3", 81559 * MIB / GIB, (9, 0))],
    )


def a100_box() -> Hardware:
    """One A100 40 GB (Ampere sm_80) with a 32-core EPYC."""
    return fake_hardware(
        cpu=CPU(brand="AMD EPYC 7543 32-Core Processor", vendor="AMD", arch="x86_64",
                physical_cores=32, logical_cores=64, usable_cores=64.0,
                flags=("avx", "avx2", "fma", "f16c")),
        memory=256,
        gpus=[fake_gpu("NVIDIA A100-SXM4-40GB", 40960 * MIB / GIB, (8, 0))],
    )


def rtx4090_box() -> Hardware:
    """GeForce RTX 4090 (24 GB, Ada sm_89) with a Core i9-13900K."""
    return fake_hardware(
        cpu=CPU(brand="13th Gen Intel(R) Core(TM) i9-13900K", vendor="Intel", arch="x86_64",
                physical_cores=24, logical_cores=32, usable_cores=32.0,
                flags=("avx", "avx2", "fma", "f16c", "avx_vnni")),
        memory=64,
        gpus=[fake_gpu("NVIDIA GeForce RTX 4090", 24564 * MIB / GIB, (8, 9))],
    )


def cpu_laptop() -> Hardware:
    """A 4-core/8-thread Tiger Lake laptop: AVX-512 but no bf16, no GPU."""
    return fake_hardware(
        cpu=CPU(brand="11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", vendor="Intel",
                arch="x86_64", physical_cores=4, logical_cores=8, usable_cores=8.0,
                flags=("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                       "avx512_vnni")),
        memory=16,
        notes=("NVML unavailable: NVML Shared Library Not Found",
               "no GPU: this torch is a CPU-only build"),
    )


# -- plugins -------------------------------------------------------------------


#: The built-in plugins' names, as installed (the entry points of the
#: distribution torch-autotune, by name): for a test that turns them all off
#: to see its own plugin alone, ``plugin_manager(disable=BUILTIN_PLUGINS, ...)``.
BUILTIN_PLUGINS: tuple[str, ...] = builtin_names()


def plugin_manager(*, disable: Iterable[str] = (), plugins: Iterable[Any] = (),
                   strict: bool = False) -> PluginManager:
    """A manager with the built-ins and ``plugins``, without third-party
    entry points: what an installed package adds cannot change a test. An
    installed plugin is not even listed, so your test can pass it (or its
    source) in ``plugins`` and get exactly that object."""
    # ``autoload=False`` alone would still list an installed plugin (as "not
    # autoloaded", in the plan's ``disabled``) and keep its name taken, so
    # passing that same plugin as an object would be refused.
    return PluginManager(disable=disable, plugins=plugins, strict=strict, autoload=False,
                         third_party=False)


@dataclass(frozen=True)
class HookCall:
    hook: str
    kwargs: Mapping[str, Any]


@dataclass
class HookRecorder:
    """A plugin that records every hook call and answers from ``returns``.

    ``returns`` maps a hook name to what that hook returns (default None, so
    it changes nothing). Register it as ``plugins=[recorder]``; its name is
    :attr:`NAME`.
    """

    NAME: str = "recorder"
    returns: Mapping[str, Any] = field(default_factory=dict)
    calls: list[HookCall] = field(default_factory=list)

    def _record(self, hook: str, **kwargs: Any) -> Any:
        self.calls.append(HookCall(hook, kwargs))
        return self.returns.get(hook)

    def hooks_called(self) -> list[str]:
        return [c.hook for c in self.calls]

    def calls_of(self, hook: str) -> list[HookCall]:
        return [c for c in self.calls if c.hook == hook]

    @hookimpl
    def autotune_detect(self, hardware: Hardware) -> Any:
        return self._record("autotune_detect", hardware=hardware)

    @hookimpl
    def autotune_configure(self, context: Any) -> Any:
        return self._record("autotune_configure", context=context)

    @hookimpl
    def autotune_candidates(self, context: Any, plan: Any) -> Any:
        return self._record("autotune_candidates", context=context, plan=plan)

    @hookimpl
    def autotune_apply_model(self, model: Any, plan: Any, context: Any) -> Any:
        return self._record("autotune_apply_model", model=model, plan=plan, context=context)

    @hookimpl
    def autotune_apply_loader(self, loader: Any, plan: Any, context: Any) -> Any:
        return self._record("autotune_apply_loader", loader=loader, plan=plan, context=context)

    @hookimpl
    def autotune_setup_engine(self, engine: Any, plan: Any) -> Any:
        return self._record("autotune_setup_engine", engine=engine, plan=plan)


# -- pytest marks ----------------------------------------------------------------


def requires(*, cuda: bool = False, bf16: bool = False, gpus: int = 0) -> Any:
    """A ``pytest.mark.skipif`` that skips unless this machine has what the
    test needs, with a reason that says what is missing::

        @requires(cuda=True, bf16=True)
        def test_bf16_autocast_on_gpu(): ...

    ``bf16`` means native bf16 on the device the test would use: the GPU when
    ``cuda`` is asked for, the CPU otherwise.
    """
    # Here, not above: only this mark needs them (pytest is a test-only dependency).
    import pytest
    import torch

    missing: list[str] = []
    have_cuda = torch.cuda.is_available()
    if (cuda or gpus) and not have_cuda:
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if gpus and have_cuda and torch.cuda.device_count() < gpus:
        missing.append(f"{gpus} GPUs (this machine has {torch.cuda.device_count()})")
    if bf16:
        if cuda:
            if have_cuda and not torch.cuda.is_bf16_supported():
                missing.append("a GPU with native bf16 (Ampere or newer)")
        elif not detect().cpu.has_bf16:
            missing.append("a CPU with native bf16 (AVX512-BF16 or AMX)")
    return pytest.mark.skipif(bool(missing), reason="needs " + " and ".join(missing or ["nothing"]))
