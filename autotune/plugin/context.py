"""What a plugin sees when it proposes settings: hardware, profile, workload."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from autotune.machine.hardware import Hardware
from autotune.workload.loaders import dataset_length

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import DataLoader

    from autotune.profile import Profile
    from autotune.plan.resources import Share


@dataclass(frozen=True)
class Workload:
    """Facts about the user's model and DataLoader that plugins reason about.

    Built by :func:`Workload.inspect`; every field has a neutral default so
    the CLI can plan without a model (``Workload()``).
    """

    has_conv2d: bool = False
    num_parameters: int = 0
    batch_size: int | None = None
    dataset_length: int | None = None
    loader_num_workers: int = 0
    optimizer: str | None = None
    #: The live objects, for plugins that need more than the summary.
    model: Any = field(default=None, compare=False, repr=False)
    loader: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def inspect(cls, model: "torch.nn.Module | None" = None,
                loader: "DataLoader | None" = None,
                optimizer: Any = None) -> "Workload":
        import torch  # here, not above: planning and the command line need no torch

        has_conv2d = False
        num_parameters = 0
        if model is not None:
            has_conv2d = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
            num_parameters = sum(p.numel() for p in model.parameters())
        batch_size = length = None
        workers = 0
        if loader is not None:
            # Any iterable of batches may come here (a list, a generator, a
            # class without .dataset): only a DataLoader has these facts.
            batch_size = getattr(loader, "batch_size", None)
            workers = int(getattr(loader, "num_workers", 0) or 0)
            length = dataset_length(loader)
        return cls(has_conv2d=has_conv2d, num_parameters=num_parameters,
                   batch_size=batch_size, dataset_length=length,
                   loader_num_workers=workers,
                   optimizer=type(optimizer).__name__ if optimizer is not None else None,
                   model=model, loader=loader)


@dataclass(frozen=True)
class Context:
    """Passed to ``autotune_configure`` and the other contribution hooks."""

    hardware: Hardware
    profile: "Profile"
    workload: Workload = field(default_factory=Workload)
    #: True when the user named the profile (``profile=``, ``--profile``)
    #: rather than it being matched: only then may it turn on settings that
    #: change what is trained (see :mod:`autotune.plan.knobs`).
    profile_chosen: bool = False
    #: The part of the machine this job may use when it shares it with
    #: others (``autotune daemon``); ``None``: the whole machine. Plugins
    #: that size threads or workers keep their candidates within it.
    share: "Share | None" = None

    def options_for(self, plugin: str) -> Mapping[str, Any]:
        """The matched profile's options for ``plugin`` (reserved keys removed)."""
        return self.profile.options_for(plugin)
