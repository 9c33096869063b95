"""What a DDP run leaves behind, written by rank 0 only."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from autotune.cv.store import atomic_write_bytes, atomic_write_json
from autotune.distributed.ranks import is_initialized, is_rank_zero

log = logging.getLogger("autotune.distributed")


def write_run_files(run_dir: str | os.PathLike[str], engine: Any, *, checkpoint: bool = True,
                    barrier: bool = True) -> list[Path]:
    """On rank 0: ``plan.json``, ``history.json`` and (``checkpoint``)
    ``checkpoint.pt`` in ``run_dir``, each written atomically. Other ranks
    write nothing and get ``[]``. With ``barrier``, every rank returns only
    once the files exist."""
    written: list[Path] = []
    if is_rank_zero():
        root = Path(run_dir)
        atomic_write_json(root / "plan.json", engine.plan.to_dict())
        written.append(root / "plan.json")
        atomic_write_json(root / "history.json", engine.history.to_dict())
        written.append(root / "history.json")
        if checkpoint:
            buffer = io.BytesIO()
            torch.save(engine.state_dict(), buffer)
            atomic_write_bytes(root / "checkpoint.pt", buffer.getvalue())
            written.append(root / "checkpoint.pt")
        log.info("rank 0 wrote %s", ", ".join(p.name for p in written))
    if barrier and is_initialized():
        dist.barrier()
    return written
