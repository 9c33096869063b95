"""The run directory: a manifest, and one file per fold written the moment
the fold finishes, so a crash loses nothing and a rerun resumes.

Layout::

    run_dir/manifest.json          what run made this directory (k, seed, split...)
    run_dir/fold_003.json          a finished fold (FoldResult), the commit marker
    run_dir/fold_003.pt            its checkpoint (checkpoint=True), written first
    run_dir/fold_003.failed.json   a fold that raised, with its traceback (retried
                                   on the next run, removed when it succeeds)

Every file is written to a temporary name in the same directory and moved
into place with ``os.replace``, which is atomic on POSIX and Windows: a
reader (or a rerun after a crash) sees the old file or the new one, never
half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from autotune.cv.errors import CrossValidationError
from autotune.cv.result import FoldFailure, FoldResult

log = logging.getLogger("autotune.cv")

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes reach the disk before the rename
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


@dataclass(frozen=True)
class Manifest:
    """What a run directory holds results of. The first group must match for
    a rerun to resume; the second may change (with a warning)."""

    k: int
    seed: int
    dataset_length: int
    stratified: bool
    #: Fingerprint of the fold assignment (covers the labels when stratified).
    split_digest: str
    epochs: int = 0
    batch_size: int = 0
    plan_digest: str = ""
    version: int = FORMAT_VERSION
    created: str = ""

    MUST_MATCH = ("k", "seed", "dataset_length", "stratified", "split_digest")
    MAY_CHANGE = ("epochs", "batch_size", "plan_digest")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def plan_digest(plan_dict: Mapping[str, Any]) -> str:
    """Fingerprint of a plan's values (reasons and sources left out)."""
    values = {p: {k: s["value"] for k, s in keys.items()}
              for p, keys in plan_dict.get("plugins", {}).items()}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStore:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.root = Path(run_dir)

    def result_path(self, fold: int) -> Path:
        return self.root / f"fold_{fold:03d}.json"

    def failure_path(self, fold: int) -> Path:
        return self.root / f"fold_{fold:03d}.failed.json"

    def checkpoint_path(self, fold: int) -> Path:
        return self.root / f"fold_{fold:03d}.pt"

    # -- manifest --------------------------------------------------------------
    def read_manifest(self) -> Manifest | None:
        path = self.root / MANIFEST
        if not path.exists():
            return None
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CrossValidationError(f"{path}: unreadable run manifest ({exc}); HINT: use "
                                       "another run_dir, or delete this one") from exc

    def open(self, manifest: Manifest, *, resume: bool = True) -> dict[int, FoldResult]:
        """Claim the directory for ``manifest``; returns the folds already
        finished there (empty with ``resume=False``, which retrains every
        fold and overwrites its files).

        :raises CrossValidationError: when the directory holds a run with a
            different k, seed, dataset length or split.
        """
        old = self.read_manifest()
        if old is None and self.root.exists() and any(self.root.glob("fold_*.json")):
            raise CrossValidationError(f"{self.root} holds fold results but no {MANIFEST}; "
                                       "HINT: use an empty run_dir")
        if old is not None:
            differ = [f"{name}: {getattr(old, name)!r} there, {getattr(manifest, name)!r} now"
                      for name in Manifest.MUST_MATCH if getattr(old, name) != getattr(manifest, name)]
            if differ:
                raise CrossValidationError(
                    f"run_dir {self.root} was made by a different cross-validation run "
                    f"({'; '.join(differ)}); its folds cannot be reused. HINT: pass a new "
                    "run_dir (or the same k, seed and dataset)")
            changed = [f"{name} {getattr(old, name)!r} -> {getattr(manifest, name)!r}"
                       for name in Manifest.MAY_CHANGE if getattr(old, name) != getattr(manifest, name)]
            if changed and resume:
                log.warning("run_dir %s: resuming folds trained with other settings (%s); pass "
                            "resume=False to retrain them all", self.root, ", ".join(changed))
        created = old.created if old is not None and resume else \
            datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.root / MANIFEST, asdict(replace(manifest, created=created)))
        return self.finished(manifest.k) if resume else {}

    # -- folds -------------------------------------------------------------------
    def finished(self, k: int) -> dict[int, FoldResult]:
        done: dict[int, FoldResult] = {}
        for fold in range(k):
            path = self.result_path(fold)
            if not path.exists():
                continue
            try:
                result = FoldResult.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("%s is unreadable (%s); fold %d is trained again", path, exc, fold)
                continue
            done[fold] = result
        return done

    def failures(self, k: int) -> dict[int, FoldFailure]:
        out = {}
        for fold in range(k):
            path = self.failure_path(fold)
            if path.exists():
                try:
                    out[fold] = FoldFailure.from_dict(json.loads(path.read_text()))
                except (OSError, ValueError, TypeError):
                    continue
        return out

    def write_result(self, result: FoldResult, checkpoint: bytes | None = None) -> FoldResult:
        """Persist a finished fold: the checkpoint first, then the JSON that
        marks the fold done (a crash between the two retrains the fold)."""
        if checkpoint is not None:
            path = self.checkpoint_path(result.fold)
            atomic_write_bytes(path, checkpoint)
            result = replace(result, checkpoint=str(path))
        atomic_write_json(self.result_path(result.fold), result.to_dict())
        self.failure_path(result.fold).unlink(missing_ok=True)
        return result

    def write_failure(self, failure: FoldFailure) -> None:
        atomic_write_json(self.failure_path(failure.fold), failure.to_dict())

