"""The exhaustive grid: every combination of the candidates the search
would consider, for benchmarks that check how close the tuner gets to the
best configuration (``autotune bench --grid``)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from autotune.tuner.candidates import Config, restrict
from autotune.tuner.records import Trial
from autotune.tuner.runner import TrialRunner
from autotune.tuner.search import Search

log = logging.getLogger("autotune.tuner")


def grid_configs(search: Search) -> list[Config]:
    """The product over the searched groups of {baseline value} plus every
    candidate a plugin offers for the base plan (pruned as the search
    prunes), the baseline first."""
    bench = search.bench
    baseline = search.runner.baseline
    offered = bench.manager.candidates(bench.context, baseline.to_plan(bench.plan, "grid"))
    axes: list[list[tuple[str, dict[str, Any]]]] = []
    for group in search.groups():
        current = baseline.values.get(group.plugin, {})
        options: list[dict[str, Any]] = [dict(current)] if current else []
        for alternative in offered.get(group.plugin, []):
            values = {**current, **restrict(bench.plan, group.plugin, alternative)}
            if bench.manager.prune_reason(bench.context, group.plugin, values,
                                          bench.device.type):
                continue
            if values not in options:
                options.append(values)
        if options:
            axes.append([(group.plugin, o) for o in options])
    configs = []
    for combination in itertools.product(*axes):
        config = baseline
        for plugin, values in combination:
            config = config.merged(plugin, values)
        if all(c.key() != config.key() for c in configs):
            configs.append(config)
    return configs


def measure_grid(runner: TrialRunner, configs: list[Config]) -> list[Trial]:
    """Measure every configuration (already measured ones are reused)."""
    return [runner.measure(config, "grid") for config in configs]
