"""Ready-made ``metrics=`` functions for :func:`autotune.cross_validate`
(module level, so worker processes can unpickle them)."""

from __future__ import annotations

import torch


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of samples whose arg-max class is the target."""
    return (outputs.argmax(dim=-1) == targets).float().mean()
