"""Snapshot and restore everything a trial may change, so measured tuning
never trains or alters the user's model.

A trial runs real optimizer steps on the user's own model, optimizer and
DataLoader; before the next trial (and when tuning ends, also after
Ctrl-C) :meth:`Snapshot.restore` puts back, bitwise:

* every parameter and buffer (BatchNorm running stats included), with its
  original strides, so a trial (for example of channels_last) leaves no NHWC
  weights behind;
  parameters keep their identity (``.data`` is restored), so an optimizer
  built on them stays valid;
* gradients and each module's train/eval flag;
* the optimizer's per-parameter state and its param-group hyperparameters;
* RNG state: torch CPU, every initialised CUDA device, Python's ``random``,
  NumPy, and the generators the DataLoader and its sampler draw from;
* global flags: intra-op threads, OMP/MKL thread variables, TF32,
  cudnn.benchmark / deterministic, float32 matmul precision.

Copies are kept in host memory: snapshotting a large GPU model must not
double its footprint on the device the trials need.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from autotune.plan.resources import THREAD_ENV_VARIABLES as THREAD_VARIABLES
from autotune.workload.batches import unwrap_model

log = logging.getLogger("autotune.tuner")


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy with the same strides (``preserve_format``)."""
    return tensor.detach().to("cpu", copy=True)


def _put_back(target: torch.Tensor, saved: torch.Tensor, device: torch.device) -> None:
    """Restore ``target``'s data in place when the layout still matches,
    else swap its storage for one with the saved layout."""
    data = target.data
    if (data.device == device and data.dtype == saved.dtype and data.shape == saved.shape
            and data.stride() == saved.stride()):
        data.copy_(saved)
    else:
        target.data = saved.to(device, copy=True)


@dataclass
class _TensorState:
    tensor: torch.Tensor
    saved: torch.Tensor
    device: torch.device
    grad: torch.Tensor | None
    grad_device: torch.device | None


def _capture_tensor(tensor: torch.Tensor) -> _TensorState:
    grad = getattr(tensor, "grad", None)
    return _TensorState(tensor, _host_copy(tensor), tensor.device,
                        None if grad is None else _host_copy(grad),
                        None if grad is None else grad.device)


def _restore_tensor(state: _TensorState) -> None:
    _put_back(state.tensor, state.saved, state.device)
    if isinstance(state.tensor, torch.nn.Parameter) or state.tensor.requires_grad:
        if state.grad is None:
            state.tensor.grad = None
        else:
            state.tensor.grad = state.grad.to(state.grad_device, copy=True)


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch.Generators a DataLoader draws from: its own, its sampler's
    and its batch sampler's sampler's (deduplicated)."""
    found: list[torch.Generator] = []
    if loader is None:
        return found
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(g is not generator for g in found):
            found.append(generator)
    return found


@dataclass
class _Rng:
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    python: Any
    numpy: Any
    generators: list[tuple[torch.Generator, torch.Tensor]]

    @classmethod
    def capture(cls, loader: Any) -> "_Rng":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        numpy = sys.modules.get("numpy")
        return cls(torch.get_rng_state(), cuda, random.getstate(),
                   numpy.random.get_state() if numpy is not None else None,
                   [(g, g.get_state()) for g in _loader_generators(loader)])

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        numpy = sys.modules.get("numpy")
        if numpy is not None and self.numpy is not None:
            numpy.random.set_state(self.numpy)
        for generator, state in self.generators:
            generator.set_state(state)


def _flag_pairs() -> list[tuple[str, Callable[[], Any], Callable[[Any], None]]]:
    """(name, get, set) for each global flag a plugin may change."""
    cudnn = torch.backends.cudnn
    matmul = torch.backends.cuda.matmul
    pairs: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
        ("intra_op_threads", torch.get_num_threads, torch.set_num_threads),
        ("cudnn.benchmark", lambda: cudnn.benchmark, lambda v: setattr(cudnn, "benchmark", v)),
        ("cudnn.deterministic", lambda: cudnn.deterministic,
         lambda v: setattr(cudnn, "deterministic", v)),
    ]
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        # torch >= 2.9: the fp32_precision API; mixing it with the legacy
        # allow_tf32 / float32_matmul_precision setters makes torch raise.
        pairs += [
            ("matmul.fp32_precision", lambda: matmul.fp32_precision,
             lambda v: setattr(matmul, "fp32_precision", v)),
            ("cudnn.conv.fp32_precision", lambda: cudnn.conv.fp32_precision,
             lambda v: setattr(cudnn.conv, "fp32_precision", v)),
        ]
    else:  # pragma: no cover - older torch
        pairs += [
            ("matmul.allow_tf32", lambda: matmul.allow_tf32,
             lambda v: setattr(matmul, "allow_tf32", v)),
            ("cudnn.allow_tf32", lambda: cudnn.allow_tf32, lambda v: setattr(cudnn, "allow_tf32", v)),
            ("float32_matmul_precision", torch.get_float32_matmul_precision,
             torch.set_float32_matmul_precision),
        ]
    return pairs


@dataclass
class _Flags:
    values: dict[str, Any]
    env: dict[str, str | None]

    @classmethod
    def capture(cls) -> "_Flags":
        return cls({name: get() for name, get, _ in _flag_pairs()},
                   {v: os.environ.get(v) for v in THREAD_VARIABLES})

    def restore(self) -> None:
        for name, get, set_ in _flag_pairs():
            if name in self.values and get() != self.values[name]:
                set_(self.values[name])
        for variable, value in self.env.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


@dataclass
class _OptimizerState:
    optimizer: torch.optim.Optimizer
    groups: list[dict[str, Any]]
    state: list[tuple[Any, dict[str, Any]]]

    @classmethod
    def capture(cls, optimizer: torch.optim.Optimizer) -> "_OptimizerState":
        groups = [copy.deepcopy({k: v for k, v in g.items() if k != "params"})
                  for g in optimizer.param_groups]
        state = []
        for param, values in optimizer.state.items():
            saved = {k: (v.device, _host_copy(v)) if isinstance(v, torch.Tensor)
                     else (None, copy.deepcopy(v)) for k, v in values.items()}
            state.append((param, saved))
        return cls(optimizer, groups, state)

    def restore(self) -> None:
        # In place: the same group dicts and params lists, so a scheduler or
        # anything else holding them keeps working.
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            params = group["params"]
            group.clear()
            group.update(copy.deepcopy(saved))
            group["params"] = params
        self.optimizer.state.clear()
        for param, saved in self.state:
            self.optimizer.state[param] = {
                k: (v.to(device, copy=True) if device is not None else copy.deepcopy(v))
                for k, (device, v) in saved.items()}


@dataclass
class Snapshot:
    """Everything a trial can change; :meth:`restore` may be called many times."""

    model: torch.nn.Module
    tensors: list[_TensorState]
    training: list[tuple[torch.nn.Module, bool]]
    optimizer: _OptimizerState | None
    rng: _Rng
    flags: _Flags
    restores: int = field(default=0)

    @classmethod
    def capture(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                loader: Any = None) -> "Snapshot":
        module = unwrap_model(model)
        seen: set[int] = set()
        tensors = []
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(_capture_tensor(tensor))
        return cls(module, tensors, [(m, m.training) for m in module.modules()],
                   _OptimizerState.capture(optimizer) if optimizer is not None else None,
                   _Rng.capture(loader), _Flags.capture())

    def restore(self) -> None:
        with torch.no_grad():
            for state in self.tensors:
                _restore_tensor(state)
        for module, training in self.training:
            module.training = training
        if self.optimizer is not None:
            self.optimizer.restore()
        self.rng.restore()
        self.flags.restore()
        self.restores += 1
        log.debug("restored model, optimizer, RNG and global flags (restore #%d)", self.restores)
