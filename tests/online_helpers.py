"""Online tuning on a fake clock: :class:`Pace` is a speed knob whose steps
"take" what the test says on a :class:`~tuner_helpers.FakeClock`, so every
chunk measures exactly what the test meant, whatever else the machine does."""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import autotune
from autotune import hookimpl
from autotune.plan.knobs import Effect, Knob
from autotune.plan.plan import Setting, Source
from autotune.testing import BUILTIN_PLUGINS
from autotune.tuner import OnlineOptions
from tuner_helpers import FakeClock

#: Every built-in but these stays out of a test that names its knobs.
def all_but(*keep: str) -> list[str]:
    return [name for name in BUILTIN_PLUGINS if name not in keep]


class Pace:
    """One setting, ``level``. After every optimizer step the fake clock
    moves by ``step_time(engine, level)`` (seconds); the level changes live.
    ``effect`` says what changing it changes; ``fail_at``: the level whose
    first step raises an out-of-memory error from the model's forward;
    ``nan_at``: the level whose third forward returns NaN (mid-chunk)."""

    def __init__(self, clock: FakeClock, step_time: Callable[[Any, int], float],
                 levels: Sequence[int] = (1,), name: str = "pace",
                 effect: Effect = Effect.SPEED, fail_at: int | None = None,
                 prior: float = 0.5, phase: str = "step", nan_at: int | None = None,
                 first_step_cost: float = 0.0) -> None:
        self.NAME = name
        self.clock = clock
        self.step_time = step_time
        self.levels = tuple(levels)
        self.effect = effect
        self.fail_at = fail_at
        self.nan_at = nan_at
        self.first_step_cost = first_step_cost
        self.prior, self.phase = prior, phase
        self.changes: list[int] = []

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        return {"level": Setting(0, Source.DEFAULT, "test knob")}

    @hookimpl
    def autotune_knobs(self) -> dict[str, Knob]:
        return {"level": Knob(off=0, effect=self.effect, phase=self.phase,
                              first_step_cost=self.first_step_cost)}

    @hookimpl
    def autotune_candidates(self, context: Any, plan: Any) -> list[dict[str, Any]]:
        return [{"level": level} for level in self.levels]

    @hookimpl
    def autotune_search_prior(self, context: Any, device_type: str) -> tuple[float, str]:
        return self.prior, "test"

    @hookimpl
    def autotune_setup_engine(self, engine: Any, plan: Any) -> None:
        engine.plugin_state(self.NAME)["level"] = plan.get(self.NAME, "level")

    @hookimpl
    def autotune_live_change(self, engine: Any, values: dict[str, Any]) -> bool:
        level = values["level"]
        engine.plugin_state(self.NAME)["level"] = level
        self.changes.append(level)
        if level == self.fail_at and hasattr(engine.module, "fail_next"):
            engine.module.fail_next = True
        if hasattr(engine.module, "nan_in"):
            engine.module.nan_in = 3 if level == self.nan_at else 0
        return True

    @hookimpl
    def autotune_after_optimizer_step(self, engine: Any, optimizer: Any, skipped: bool) -> None:
        self.clock.advance(self.step_time(engine, engine.plugin_state(self.NAME)["level"]))


def noisy(times: dict[int, float], spread: float, seed: int = 0) -> Callable[[Any, int], float]:
    """Step times by level, each multiplied by a random factor in
    ``[1 - spread, 1 + spread]`` (seeded: the same every run)."""
    rng = random.Random(seed)
    return lambda engine, level: times[level] * (1 + rng.uniform(-spread, spread))


class Indexed(Dataset):
    """Sample ``i`` is a vector whose first element is ``i``: a model can
    tell which samples it was given, in which order."""

    def __init__(self, n: int = 96, features: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, features, generator=generator)
        self.x[:, 0] = torch.arange(n, dtype=torch.float32)
        self.y = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Recording(nn.Module):
    """Remembers the sample indices of every forward; with dropout, so a
    change in torch's global RNG stream changes the weights. ``fail_next``:
    the next forward raises an out-of-memory error before it draws anything;
    ``nan_in``: the forward that many from now draws its dropout and returns
    NaN (a candidate that diverges mid-chunk)."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(16, 3))
        self.seen: list[int] = []
        self.fail_next = False
        self.nan_in = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (a test)")
        if self.nan_in:
            self.nan_in -= 1
            if self.nan_in == 0:
                return self.body(x) * float("nan")
        self.seen.extend(int(i) for i in x[:, 0])
        return self.body(x)


def train(plugins: Sequence[Any], *, clock: FakeClock, epochs: int = 4, batch_size: int = 4,
          n: int = 96, keep: Sequence[str] = (), num_workers: int = 0,
          options: dict[str, Any] | None = None, tune: Any = "online",
          seed: int = 0) -> tuple[Any, Any, Recording]:
    """``apply(tune=...)`` then ``fit`` for ``epochs`` on a shuffled loader:
    (tuned, engine, model). Only the built-ins in ``keep`` take part."""
    torch.manual_seed(seed)
    model = Recording()
    loader = DataLoader(Indexed(n), batch_size=batch_size, shuffle=True,
                        num_workers=num_workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    # A test run is ~100 steps: the default max_loss (2 % of them) would stop
    # the search within a pair; the test of that cap sets it itself.
    settings = {"clock": clock, "chunk_s": 1.0, "settle_steps": 2, "max_loss": 0.25,
                **(options or {})}
    tune_arg = OnlineOptions(**settings) if tune == "online" else tune
    tuned = autotune.apply(model, loader, optimizer=optimizer,
                           loss_fn=nn.functional.cross_entropy, tune=tune_arg,
                           plugins=plugins, disable=all_but(*keep))
    engine = tuned.engine(optimizer, progress=False)
    engine.fit(tuned.loader, epochs=epochs)
    engine.close()
    return tuned, engine, model
