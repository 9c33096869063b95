"""channels_last memory format for models with 2-D convolutions.

Profile options::

    channels_last:
      enabled: false   # reserved key: turn the plugin off for this profile

NHWC lets cuDNN (tensor cores) and oneDNN pick faster convolution kernels.
It only applies to models with ``nn.Conv2d`` and to 4-D inputs; anything
else is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autotune import hookimpl
from autotune.context import Context, Workload
from autotune.hardware import Hardware
from autotune.options import parse_options
from autotune.plan import Setting, default

NAME = "channels_last"


@dataclass(frozen=True)
class Options:
    pass


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """This plugin's settings for ``hardware``; pure, no global state."""
    parse_options(NAME, Options, dict(profile_options or {}))
    if workload is not None and workload.model is not None:
        if workload.has_conv2d:
            return {"enabled": default(True, "model has Conv2d layers: NHWC kernels")}
        return {"enabled": default(False, "model has no Conv2d: nothing to convert")}
    return {"enabled": default(True, "applied only to models with Conv2d and 4-D inputs")}


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting]:
    return propose(context.hardware, context.options_for(NAME), context.workload)
