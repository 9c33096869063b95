"""The tuning cache: one JSON file per workload, so a second
``autotune.apply`` on the same workload measures nothing.

The key covers what decides which settings are fastest: the hardware
fingerprint, the torch version, the device, the model (class, parameter and
buffer names, shapes, dtypes), one batch (structure, shapes, dtypes), the
loader (dataset type and length, batch size, sampler, workers...), the
optimizer (type and its implementation flags, not learning rates), the loss
function, and the base plan's values (user overrides, and the settings the
tuner never searches, for example gradient clipping). Entries live in ``$AUTOTUNE_CACHE_DIR`` or the platform's user
cache directory, and are written atomically (a temporary file in the same
directory, then ``os.replace``), so a crash or a concurrent run never
leaves a half-written entry.

An entry is **complete** (the search ran to its end and its winner was
confirmed: a second call measures nothing) or **partial** (the budget ran
out, or Ctrl-C: the next call continues from its search state). Nothing in
an entry is trusted blindly: unreadable JSON, or valid JSON of the wrong
shape or type, is ignored with a warning and measured again (see
``autotune.tuner.tuning``). A cache directory that cannot be written
costs the cache, never the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from autotune.workload.batches import unwrap_model

log = logging.getLogger("autotune.tuner")

CACHE_ENV = "AUTOTUNE_CACHE_DIR"
#: Part of every key: bump when what a trial measures changes meaning.
TUNER_VERSION = 2


def cache_dir() -> Path:
    """``$AUTOTUNE_CACHE_DIR``, else the platform's user cache directory."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "autotune" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "autotune"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotune"


def _tensor_signature(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return {"shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, Mapping):
        return {str(k): _tensor_signature(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_tensor_signature(v) for v in obj]
    return type(obj).__name__


def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    module = unwrap_model(model)
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "parameters": [[n, list(p.shape), str(p.dtype), p.requires_grad]
                       for n, p in module.named_parameters()],
        "buffers": [[n, list(b.shape), str(b.dtype)] for n, b in module.named_buffers()],
    }


def batch_signature(batch: Any) -> Any:
    return _tensor_signature(batch)


def _name(obj: Any) -> str:
    target = getattr(obj, "__func__", obj)
    return getattr(target, "__qualname__", None) or type(obj).__qualname__


def loader_signature(loader: Any) -> dict[str, Any]:
    dataset = getattr(loader, "dataset", None)
    try:
        length = len(dataset) if dataset is not None else None
    except TypeError:
        length = None
    try:
        batches = len(loader)
    except TypeError:
        batches = None
    return {
        "type": type(loader).__qualname__,
        "dataset": type(dataset).__qualname__ if dataset is not None else None,
        "length": length,
        "batches": batches,
        "batch_size": getattr(loader, "batch_size", None),
        "drop_last": getattr(loader, "drop_last", None),
        "sampler": type(getattr(loader, "sampler", None)).__qualname__,
        "num_workers": getattr(loader, "num_workers", None),
        "pin_memory": getattr(loader, "pin_memory", None),
        "persistent_workers": getattr(loader, "persistent_workers", None),
        "prefetch_factor": getattr(loader, "prefetch_factor", None),
        "collate_fn": _name(getattr(loader, "collate_fn", None)),
    }


def optimizer_signature(optimizer: Any) -> dict[str, Any]:
    # Implementation flags change speed; learning rates and decay do not,
    # and a new learning rate must not throw the measurements away.
    flags = {k: v for k, v in getattr(optimizer, "defaults", {}).items()
             if isinstance(v, bool) or v is None}
    return {"type": type(optimizer).__qualname__, "flags": flags,
            "groups": len(getattr(optimizer, "param_groups", ()))}


def make_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps({"tuner": TUNER_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class TuningCache:
    """Read and write tuning results under :func:`cache_dir`/tuning."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "tuning"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable tuning cache entry %s (%s); measuring again", path, exc)
            return None
        if not isinstance(data, dict) or data.get("key") != key or "report" not in data:
            log.warning("ignoring malformed tuning cache entry %s; measuring again", path)
            return None
        return data

    def forget(self, key: str) -> None:
        """Remove an entry (one found to be of the wrong shape); best effort."""
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError:
            pass

    def store(self, key: str, data: Mapping[str, Any]) -> Path:
        """Write atomically: a temporary file beside the target, then
        os.replace. Raises ``OSError`` when the directory cannot be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        handle, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(handle, "w") as out:
                json.dump({"key": key, **data}, out, indent=2, default=str)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
