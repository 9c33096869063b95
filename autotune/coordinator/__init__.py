"""Several training jobs on one machine: ``autotune daemon`` divides the
cores among the jobs that register with it, by what each measured.

* :mod:`~autotune.coordinator.protocol` -- the socket and its messages
* :mod:`~autotune.coordinator.allocator` -- who gets which cores (pure)
* :mod:`~autotune.coordinator.server` -- the daemon's side
* :mod:`~autotune.coordinator.client` -- a job's side (``join``)

The ``daemon`` plugin (plugins/daemon.py) is what connects a job: it
registers in ``autotune_configure`` when a daemon listens, hands the share
to the plan through ``autotune_machine_share`` and, at epoch boundaries,
takes new shares and measures speed-only changes (autotune.live.adapter).
See docs/daemon.md.
"""

from autotune.coordinator.allocator import Demand, Grant, Observation, allocate
from autotune.coordinator.protocol import ProtocolError, socket_path

__all__ = ["Demand", "Grant", "Observation", "ProtocolError", "allocate", "socket_path"]
