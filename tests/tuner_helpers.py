"""Deterministic measured tuning for tests: a fake clock that only moves when
a test plugin says a step took time, so every trial measures exactly what
the test meant -- whatever else the machine is doing.

The trial clock (``TrialOptions(clock=...)``) and the budget
(``Budget(seconds, clock=...)``) both read the same :class:`FakeClock`;
:class:`Costly` is a plugin whose ``mode`` decides how long each forward
"takes" on that clock (and can fail the way real steps fail)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autotune import hookimpl
from autotune.plugin.context import Workload
from autotune.plan.plan import Setting, Source
from autotune.planner import make_plan
from autotune.testing import BUILTIN_PLUGINS, plugin_manager
from autotune.tuner import SearchOptions, TrialOptions, tune
from autotune.tuner.budget import Budget


class FakeClock:
    """Seconds that pass only through :meth:`advance`."""

    def __init__(self) -> None:
        self._now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


#: Step "durations" on the fake clock, seconds per forward.
COSTS = {"plain": 0.010, "slow": 0.030, "fast": 0.005, "faster": 0.004}


class Costly:
    """A plugin with one setting, ``mode``. Each forward advances the fake
    clock by the mode's cost; ``schedule`` maps a mode to a function of the
    n-th engine built with it (from 1) that returns a cost or an exception
    class to raise, so a candidate can be fast when searched and slow when
    confirmed, or fail when measured again."""

    def __init__(self, clock: FakeClock, default: str = "plain",
                 alternatives: Sequence[str] = ("slow",), name: str = "knob",
                 schedule: dict[str, Callable[[int], Any]] | None = None) -> None:
        self.NAME = name
        self.clock = clock
        self.default = default
        self.alternatives = tuple(alternatives)
        self.schedule = schedule or {}
        self.engines: list[str] = []

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        return {"mode": Setting(self.default, Source.DEFAULT, "test knob")}

    @hookimpl
    def autotune_candidates(self, context: Any, plan: Any) -> list[dict[str, Any]]:
        return [{"mode": m} for m in self.alternatives]

    @hookimpl
    def autotune_setup_engine(self, engine: Any, plan: Any) -> None:
        mode = plan.get(self.NAME, "mode")
        self.engines.append(mode)
        nth = self.engines.count(mode)
        rule = self.schedule.get(mode)
        cost = rule(nth) if rule is not None else COSTS.get(mode, COSTS["plain"])
        calls = {"n": 0}

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            step_cost = cost(calls["n"]) if callable(cost) and not isinstance(cost, type) else cost
            if isinstance(step_cost, type) and issubclass(step_cost, BaseException):
                oom = issubclass(step_cost, torch.cuda.OutOfMemoryError)
                raise step_cost("CUDA out of memory. Tried to allocate 2.00 GiB" if oom
                                else "injected failure")
            self.clock.advance(step_cost)
            return output

        handle = engine.module.register_forward_hook(hook)
        engine.on_close(handle.remove)


def fake_options(clock: FakeClock, **search: Any) -> SearchOptions:
    return SearchOptions(trial=TrialOptions(warmup_steps=2, chunks=3, min_chunks=2,
                                            chunk_s=0.02, clock=clock), **search)


def workload(n: int = 64) -> tuple[nn.Module, DataLoader, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(torch.randn(n, 8, generator=generator),
                                      torch.randint(0, 4, (n,), generator=generator)),
                        batch_size=8, shuffle=True, generator=generator)
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def tune_fake(*plugins: Any, clock: FakeClock, budget_s: float | None = 60.0,
              options: SearchOptions | None = None, objects: Any = None, **kwargs: Any) -> Any:
    """``tune`` on :func:`workload` with only ``plugins``, on the fake clock."""
    model, loader, optimizer = objects or workload()
    planned = make_plan(workload=Workload.inspect(model, loader, optimizer),
                        manager=plugin_manager(disable=BUILTIN_PLUGINS, plugins=list(plugins)))
    return tune(model, loader, optimizer, nn.functional.cross_entropy, planned.plan,
                context=planned.context, manager=planned.manager, device="cpu",
                budget=Budget(budget_s, clock=clock), options=options or fake_options(clock),
                progress=False, **kwargs)


def trial_for(report: Any, mode: str, plugin: str = "knob", role: str | None = None) -> Any:
    return next(t for t in report.trials if t.changes.get(plugin, {}).get("mode") == mode
                and (role is None or t.role == role))
