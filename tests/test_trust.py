"""What is trained is the user's: an unmeasured plan trains exactly like plain
PyTorch -- bitwise -- whatever the hardware and the matched profile propose;
clipping (and anything else that changes training) happens only when asked."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune
from autotune.plan.plan import Source
from autotune.testing import plugin_manager, rtx5080_7950x


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Dropout(0.2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def images() -> TensorDataset:
    data = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(48, 3, 12, 12, generator=data) * 8,
                         torch.randint(0, 4, (48,), generator=data))


def plain_pytorch(model: nn.Module, epochs: int = 2, **loading: object) -> dict[str, torch.Tensor]:
    """The loop a user writes without autotune (``loading``: DataLoader
    worker settings, which change speed and the random streams, not the maths)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = DataLoader(images(), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(2), **loading)
    torch.manual_seed(3)
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def with_autotune(model: nn.Module, epochs: int = 2, **apply: object) -> tuple[dict, object]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loader = DataLoader(images(), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(2))
    tuned = autotune.apply(model, loader, optimizer=optimizer, device="cpu", **apply)
    torch.manual_seed(3)
    with tuned.engine(optimizer, nn.functional.cross_entropy, progress=False) as engine:
        engine.fit(tuned.loader, epochs=epochs)
    return {k: v.clone() for k, v in tuned.model.state_dict().items()}, tuned


@pytest.mark.parametrize("hardware", [None, rtx5080_7950x()], ids=["this machine", "rtx5080"])
def test_an_unmeasured_plan_trains_bitwise_like_plain_pytorch(hardware) -> None:
    """No loss_fn, so nothing is measured: the plan may rebuild the loader and
    size the threads (speed knobs), but the numbers trained are plain
    PyTorch's with the same loader and thread settings. On the RTX 5080
    profile (matched, not chosen) that means no bf16 and none of its clipping
    at 1.0."""
    model = conv_net()
    reference = copy.deepcopy(model)
    # Fake hardware sizes threads for its own cores (16 on the 7950X), which
    # on this machine makes oneDNN's reductions run in a varying order: not
    # bitwise repeatable even in plain PyTorch. Threads are a speed knob;
    # keep this machine's count there.
    overrides = {"threads": {"intra_op": torch.get_num_threads()}} if hardware else None
    ours, tuned = with_autotune(model, hardware=hardware, manager=plugin_manager(),
                                overrides=overrides)
    loading = {}
    if tuned.loader.num_workers:  # the speed knobs the plan applied, applied by hand
        loading = {"num_workers": tuned.loader.num_workers,
                   "persistent_workers": tuned.loader.persistent_workers,
                   "prefetch_factor": tuned.loader.prefetch_factor}
    threads = tuned.plan.get("threads", "intra_op")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        expected = plain_pytorch(reference, **loading)
    finally:
        torch.set_num_threads(before)
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
    assert tuned.tuning is None
    plan = tuned.plan
    assert plan.get("mixed_precision", "dtype") == "fp32"
    assert plan.get("channels_last", "enabled") is False and plan.get("compile", "mode") == "off"
    assert plan.get("clipping", "max_norm") is None and plan.get("accumulation", "steps") == 1
    knobs = tuned.manager.knobs(tuned.context, plan)
    changed = [(p, k) for p, k, s in plan.rows()
               if s.effect.value != "speed" and s.value != knobs[p][k].off]
    assert not changed  # everything that changes numerics or training is at PyTorch's off


def test_clipping_is_off_by_default_and_on_when_asked() -> None:
    off, tuned_off = with_autotune(conv_net(), epochs=1, manager=plugin_manager())
    assert tuned_off.plan.get("clipping", "max_norm") is None
    assert any(e.plugin == "clipping" and "off" in e.message for e in tuned_off.report)
    on, tuned_on = with_autotune(conv_net(), epochs=1, manager=plugin_manager(),
                                 overrides={"clipping": {"max_norm": 0.01}})
    assert tuned_on.plan.setting("clipping", "max_norm").source is Source.OVERRIDE
    assert any(e.plugin == "clipping" and "clip global 2-norm to 0.01" in e.message
               for e in tuned_on.report)
    assert not all(torch.equal(off[k], on[k]) for k in off)  # clipping changed the updates
    expected = plain_pytorch(conv_net(), epochs=1)
    assert all(torch.equal(off[k], expected[k]) for k in off)
