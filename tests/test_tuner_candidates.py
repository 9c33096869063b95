"""The search space: what each built-in plugin offers through
``autotune_candidates``, and the hardware priors that order and prune it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from autotune import hookimpl
from autotune.plugin.context import Workload
from autotune.plan.plan import Setting, Source
from autotune.planner import make_plan
from autotune.plugins import channels_last, compile, dataloader, mixed_precision, threads
from autotune.testing import BUILTIN_PLUGINS, cpu_laptop, fake_hardware, h100_box, plugin_manager
from autotune.tuner.candidates import UNKNOWN_PRIOR, baseline_config
from autotune.tuner.search import search_groups

ZEN4 = fake_hardware(cpu={"physical_cores": 2, "logical_cores": 2, "flags": [
    "avx2", "avx512f", "avx512_bf16"]})


THREADS = torch.get_num_threads()


def test_precision_candidates_follow_the_hardware() -> None:
    assert mixed_precision.candidates(cpu_laptop()) == [{"dtype": "fp32", "grad_scaler": False}]
    assert [c["dtype"] for c in mixed_precision.candidates(ZEN4)] == ["bf16", "fp32"]
    on_h100 = mixed_precision.candidates(h100_box(), {"dtype": "bf16", "tf32": True})
    assert on_h100[0] == {"dtype": "bf16", "grad_scaler": False}
    assert {"dtype": "fp16", "grad_scaler": True} in on_h100
    assert {"dtype": "fp32", "grad_scaler": False, "tf32": True} in on_h100


def test_compile_candidates_need_cuda_for_cuda_graphs() -> None:
    assert compile.candidates(h100_box())[0] == {"mode": "reduce-overhead"}
    on_cpu = [c["mode"] for c in compile.candidates(cpu_laptop())]
    assert "reduce-overhead" not in on_cpu and on_cpu[-1] == "off"


def test_channels_last_candidates_only_for_convolutions() -> None:
    linear = Workload.inspect(nn.Linear(2, 2))
    conv = Workload.inspect(nn.Conv2d(3, 3, 1))
    assert channels_last.candidates(cpu_laptop(), {}, linear) == []
    assert {"enabled": True} in channels_last.candidates(cpu_laptop(), {}, conv)


class Stream(IterableDataset):
    def __iter__(self):
        yield from ((torch.zeros(2), torch.tensor(0)) for _ in range(4))


def test_loader_candidates_fit_the_cores_and_skip_iterable_datasets() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(8, 2), torch.zeros(8)), batch_size=2)
    on_cpu = dataloader.candidates(cpu_laptop(), {}, Workload.inspect(None, loader))
    assert [c["num_workers"] for c in on_cpu] == [0, 1, 4, 8]
    assert not any(c["pin_memory"] for c in on_cpu)
    on_gpu = dataloader.candidates(h100_box(), {}, Workload.inspect(None, loader))
    assert on_gpu[0]["num_workers"] == 8 and on_gpu[0]["pin_memory"]
    assert on_gpu[1] == {**on_gpu[0], "prefetch_factor": 4}
    stream = DataLoader(Stream(), batch_size=2)
    assert dataloader.candidates(h100_box(), {}, Workload.inspect(None, stream)) == []


def test_thread_candidates_leave_room_for_loader_workers() -> None:
    assert threads.candidates(cpu_laptop()) == [{"intra_op": 4}, {"intra_op": 8}]
    assert {"intra_op": 6} in threads.candidates(cpu_laptop(), loader_workers=2)


def _planned(hardware, plugins=(), disable=()):
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8)), batch_size=2)
    return make_plan(hardware=hardware, manager=plugin_manager(plugins=plugins, disable=disable),
                     workload=Workload.inspect(nn.Conv2d(3, 3, 1), loader))


def _groups(hardware, device_type, plugins=(), disable=()):
    planned = _planned(hardware, plugins, disable)
    knobs = planned.manager.knobs(planned.context, planned.plan)
    return search_groups(planned.plan, planned.context, device_type, knobs,
                         manager=planned.manager)


def _prune(hardware, plugin, values, device_type):
    planned = _planned(hardware)
    return planned.manager.prune_reason(planned.context, plugin, values, device_type)


def test_priors_order_groups_and_prune_what_the_hardware_cannot_run() -> None:
    laptop = [g.plugin for g in _groups(cpu_laptop(), "cpu")]
    assert "mixed_precision" not in laptop  # no bf16 on that CPU, no fp16 without CUDA
    # Their knobs change what is trained, or belong to a whole run: never searched.
    assert not {"accumulation", "clipping", "parallel_folds"} & set(laptop)
    assert laptop == ["channels_last", "compile", "threads", "dataloader"]
    gpu = _groups(h100_box(), "cuda")
    assert [g.plugin for g in gpu] == ["mixed_precision", "compile", "channels_last", "threads",
                                       "dataloader"]
    assert [g.prior for g in gpu] == [0.6, 0.4, 0.3, 0.02, 0.5]
    assert gpu[0].why == "tensor cores run bf16/fp16 matmuls and convolutions much faster"
    # Compute threads are searched again once the loader changed: their knob says so.
    assert [g.plugin for g in gpu if g.revisit_after_loader] == ["threads"]
    assert _prune(ZEN4, "mixed_precision", {"dtype": "fp16"}, "cpu")
    assert _prune(cpu_laptop(), "mixed_precision", {"dtype": "bf16"}, "cpu")
    assert _prune(ZEN4, "mixed_precision", {"dtype": "bf16"}, "cpu") is None
    assert _prune(ZEN4, "compile", {"mode": "reduce-overhead"}, "cpu") == (
        "reduce-overhead uses CUDA graphs, which need CUDA")
    assert _prune(h100_box(), "compile", {"mode": "reduce-overhead"}, "cuda") is None
    assert _prune(ZEN4, "dataloader", {"pin_memory": True}, "cpu")
    assert _prune(ZEN4, "dataloader", {"num_workers": 3}, "cpu") == (
        "more workers than the 2 usable cores")
    # Only the candidate's own plugin is asked.
    assert _prune(ZEN4, "threads", {"dtype": "fp16"}, "cpu") is None


class Searched:
    """A third-party plugin that declares its prior (``None``: says nothing)."""

    def __init__(self, name: str, prior: Any = None) -> None:
        self.NAME = name
        self.prior = prior

    @hookimpl
    def autotune_configure(self, context: Any) -> dict[str, Setting]:
        return {"level": Setting("small", Source.DEFAULT, "test")}

    @hookimpl
    def autotune_search_prior(self, context: Any, device_type: str) -> Any:
        return self.prior


def test_a_third_party_plugin_gets_the_prior_it_declares() -> None:
    eager, lazy, silent = Searched("eager", (0.9, "always pays")), Searched("lazy", (0.0, "no")), \
        Searched("silent")
    groups = _groups(h100_box(), "cuda", [eager, lazy, silent], disable=BUILTIN_PLUGINS)
    assert [(g.plugin, g.prior, g.why) for g in groups] == [
        ("eager", 0.9, "always pays"), ("silent", UNKNOWN_PRIOR, "third-party plugin")]
    # Ahead of or behind the built-ins, as declared.
    mixed = [g.plugin for g in _groups(h100_box(), "cuda", [Searched("tiny", (0.01, "rarely"))])]
    assert mixed[0] == "mixed_precision" and mixed[-2:] == ["tiny", "dataloader"]
    assert mixed.index("threads") < mixed.index("tiny")


def test_a_malformed_prior_is_that_plugin_failing() -> None:
    with pytest.warns(UserWarning, match="plugin 'odd' failed in autotune_search_prior"):
        groups = _groups(h100_box(), "cuda", [Searched("odd", (-1, "negative"))],
                         disable=BUILTIN_PLUGINS)
    assert groups == []


def test_the_search_follows_declared_priors_and_pruning() -> None:
    from tuner_helpers import Costly, FakeClock, tune_fake

    class Declared(Costly):
        def __init__(self, clock: FakeClock, name: str, prior: Any, pruned: str) -> None:
            super().__init__(clock, alternatives=("fast", "slow"), name=name)
            self.prior, self.pruned = prior, pruned
            self.asked: list[dict] = []

        @hookimpl
        def autotune_search_prior(self, device_type: str) -> Any:
            return self.prior

        @hookimpl
        def autotune_prune_candidate(self, values: Any, device_type: str) -> str | None:
            self.asked.append(dict(values))
            return f"{values['mode']} is not for a {device_type}" if (
                values["mode"] == self.pruned) else None

    clock = FakeClock()
    low = Declared(clock, "low", (0.2, "pays a little"), pruned="slow")
    high = Declared(clock, "high", (0.9, "pays a lot"), pruned="fast")
    never = Declared(clock, "never", (0.0, "not here"), pruned="")
    report = tune_fake(low, high, never, clock=clock, cache=False).report
    roles = [t.role for t in report.trials if t.role in ("low", "high", "never")]
    assert roles == ["high", "low"]  # by declared prior; a prior of 0 is not searched
    assert set(report.pruned) == {"high {'mode': 'fast'}: fast is not for a cpu",
                                  "low {'mode': 'slow'}: slow is not for a cpu"}
    assert {"mode": "fast"} in low.asked and not never.asked


def test_baseline_is_pytorch_defaults_and_the_users_loader_but_keeps_overrides() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8)), batch_size=2,
                        num_workers=1, persistent_workers=True)
    planned = make_plan(hardware=h100_box(), workload=Workload.inspect(model, loader),
                        manager=plugin_manager(), overrides={"compile": {"mode": "default"}})
    torch.set_num_threads(3)
    try:
        knobs = planned.manager.knobs(planned.context, planned.plan)
    finally:
        torch.set_num_threads(THREADS)
    baseline = baseline_config(planned.plan, knobs, knobs)
    assert baseline.values["mixed_precision"] == {"dtype": "fp32", "grad_scaler": False,
                                                  "tf32": None}
    assert baseline.values["channels_last"] == {"enabled": False}
    assert baseline.values["dataloader"] == {"num_workers": 1, "pin_memory": False,
                                             "persistent_workers": True, "prefetch_factor": 2}
    assert baseline.values["threads"]["intra_op"] == 3
    assert "compile" in baseline.values and "mode" not in baseline.values["compile"]  # the
    # user's override is not the tuner's to change; fullgraph's off is PyTorch's
    assert not {"accumulation", "clipping", "parallel_folds"} & set(baseline.values)
    plan = baseline.to_plan(planned.plan, "test")
    assert plan.setting("compile", "mode").source is Source.OVERRIDE
    assert plan.setting("channels_last", "enabled").source is Source.MEASURED


def test_builtin_plugins_answer_the_candidates_hook() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    loader = DataLoader(TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8)), batch_size=2)
    planned = make_plan(hardware=h100_box(), workload=Workload.inspect(model, loader),
                        manager=plugin_manager())
    offered = planned.manager.candidates(planned.context, planned.plan)
    assert {"mixed_precision", "compile", "channels_last", "dataloader", "threads"} <= set(offered)
    assert not {"accumulation", "clipping", "parallel_folds"} & set(offered)
