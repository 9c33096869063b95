"""Share the machine with other training jobs through ``autotune daemon``.

When a daemon listens on the socket (``$AUTOTUNE_SOCKET``, else
``$XDG_RUNTIME_DIR/autotune/daemon.sock``), this plugin registers the job
while the plan for a model is made (``autotune plan`` without one does not
register) and hands the daemon's share to the plan
(``autotune_machine_share``): every plugin sizes its own settings to it --
intra-op threads, loader workers -- with source ``daemon``, and this plugin
pins the process to the share's cpus. During ``Engine.fit`` it reports each
epoch's samples/s and data wait to the daemon (what the daemon divides the
cores by) and, at epoch boundaries, takes new shares and tries speed-only
changes: the engine's live adapter (autotune.live.adapter), which this plugin
makes for every engine but a tuner's trials. With no daemon it contributes
nothing: the plan is exactly what it is without this plugin.

Profile options::

    daemon:
      wait_s: null    # how long apply waits for a free core when every core
                      # holds another job (null: as long as the daemon runs)

Plan keys (only with a daemon)::

    daemon:
      job: "1234-1"   # the daemon's name for this job
      cpus: [0, 1]    # the cpus the share runs on (affinity)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from autotune.sdk import (
    Context, Hardware, Kind, Observation, PluginOptions, Setting, Share, Source, Workload,
    daemon_job, hookimpl, join_daemon, option, parse_options, workers_adjustable)

NAME = "daemon"


@dataclass(frozen=True)
class Options(PluginOptions):
    wait_s: float | None = option(None, "how long apply waits for a free core when every core "
                                  "holds another job; null: as long as the daemon runs",
                                  minimum=0, null=True)


@hookimpl
def autotune_options() -> type:
    return Options


def propose(hardware: Hardware, profile_options: Mapping[str, Any] | None = None,
            workload: Workload | None = None) -> dict[str, Setting]:
    """Nothing from the rules: this plugin's settings are the daemon's
    answer. Checks the profile's options (a typo is an error)."""
    parse_options(NAME, Options, dict(profile_options or {}))
    return {}


def _client() -> Any:
    return daemon_job()


def share_of(grant: Any) -> Share:
    """The daemon's grant as the Share the plugins size themselves to."""
    return Share(threads=grant.threads, loader_workers=grant.loader_workers, cpus=grant.cpus,
                 reason=grant.reason)


@hookimpl
def autotune_configure(context: Context) -> dict[str, Setting] | None:
    options = parse_options(NAME, Options, dict(context.options_for(NAME)))
    if context.workload.model is None:
        return None  # a plan without a model (``autotune plan``) is no training job
    client = join_daemon(loader_workers_usable=workers_adjustable(context.workload.loader),
                         wait_s=options.wait_s)
    if client is None or client.grant is None:
        return None
    where = f"registered with autotune daemon on {client.path}"
    return {"job": Setting(client.job, Source.DAEMON, where),
            "cpus": Setting(list(client.grant.cpus), Source.DAEMON, client.grant.reason)}


@hookimpl
def autotune_machine_share(plan: Any) -> Share | None:
    client = _client()
    if client is None or client.grant is None or NAME not in plan:
        return None
    return share_of(client.grant)


@hookimpl
def autotune_resource_share(plan: Any, share: Share) -> dict[str, Setting]:
    if not share.cpus or list(share.cpus) == plan.get(NAME, "cpus"):
        return {}
    return {"cpus": Setting(list(share.cpus), Source.DAEMON, share.reason)}


# -- affinity --------------------------------------------------------------------------


def pin_process(cpus: Sequence[int]) -> Callable[[], None]:
    """Every thread of this process on ``cpus`` (threads and loader workers
    started later inherit it); returns the undo."""
    before = os.sched_getaffinity(0)
    _set_all(set(cpus))
    return lambda: _set_all(before)


def _set_all(cpus: set[int]) -> None:
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except (OSError, ValueError):  # the thread ended meanwhile, or a cpu went away
            pass


# -- the engine --------------------------------------------------------------------------


@hookimpl
def autotune_setup_engine(engine: Any, plan: Any) -> None:
    cpus = plan.get(NAME, "cpus")
    if cpus and hasattr(os, "sched_setaffinity"):
        engine.on_close(pin_process(cpus))
        engine.note(NAME, Kind.APPLIED, f"pinned to cpu(s) {cpus} (restored at close)")


@hookimpl
def autotune_live_adapter(engine: Any) -> Any:
    """The daemon's new shares taken, and speed changes tried, between
    epochs; the engine drives it (not for a tuner's trials)."""
    from autotune.sdk import LiveAdapter  # lazily: it needs torch, planning does not

    made: dict[int, Share] = {}  # asked after every optimizer step: one Share per grant

    def shares() -> tuple[int, Share | None]:
        client = _client()
        if client is None or client.grant is None:
            return 0, None
        generation = client.generation
        if generation not in made:
            made.clear()
            made[generation] = share_of(client.grant)
        return generation, made[generation]

    adapter = LiveAdapter(engine, shares, observe=_report, owner=NAME)
    engine.plugin_state(NAME)["live"] = adapter
    return adapter


def _report(metrics: Any) -> None:
    client = _client()
    if client is None or metrics.threads is None or metrics.samples_per_s <= 0:
        return
    wait = max(0.0, min(1.0, metrics.data_wait_fraction))
    client.report(Observation(metrics.threads, int(metrics.loader_workers or 0),
                              metrics.samples_per_s, wait),
                  diagnosis="input-bound" if wait >= 0.3 else "compute-bound")


@hookimpl
def autotune_live_change(engine: Any, values: Mapping[str, Any]) -> bool:
    if set(values) != {"cpus"} or not values["cpus"] or not hasattr(os, "sched_setaffinity"):
        return False
    engine.on_close(pin_process(values["cpus"]))
    return True


@hookimpl
def autotune_describe_engine(engine: Any) -> dict[str, Any]:
    adapter = engine.plugin_state(NAME).get("live")
    return {"daemon_job": engine.plan.get(NAME, "job"),
            "live_changes": [] if adapter is None else
            [f"epoch {c.epoch}: {c.outcome} {c.plugin} {c.values}" for c in adapter.changes]}
