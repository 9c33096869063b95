"""Plugins own their behaviour: a third-party package (tests/packages/
autotune_extras, "autotune-extras") adds a knob of the training step
(``sdpa.backend``: the attention kernel, entered around every forward) and
one of the loader (``collate.collate``: a stacking collate_fn), with no
change to the engine or the tuner. pip installs it into a throw-away
virtual environment, as tests/test_third_party_plugin.py does for
autotune-seed, so the plugin list the other tests see never changes; the
training and tuning scripts run with that environment's Python.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from venv_helpers import clean_env, install_in_throwaway_venv, load_from_source

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tests" / "packages" / "autotune_extras"
ORIGIN = "autotune-extras 0.1.0"
#: What torch allows without autotune: every SDPA kernel.
ALL_KERNELS = ["cudnn", "efficient", "flash", "math"]


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory) -> Path:
    return install_in_throwaway_venv(PACKAGE, tmp_path_factory.mktemp("extras-venv"))


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "autotune-cache")


def autotune(python: Path, *argv: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(python), "-m", "autotune", *argv], capture_output=True,
                            text=True, timeout=180, env=clean_env(**env))
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def run_script(python: Path, body: str, *argv: str, cache_dir: str, timeout: int = 240) -> dict:
    """Run ``COMMON + body`` with the venv's Python; it prints one JSON line last."""
    result = subprocess.run([str(python), "-c", COMMON + body, *argv], capture_output=True,
                            text=True, timeout=timeout,
                            env=clean_env(AUTOTUNE_CACHE_DIR=cache_dir, AUTOTUNE_PROGRESS="0",
                                           OMP_NUM_THREADS="2"))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


#: A tiny attention model that records, inside forward, which SDPA kernels
#: torch may use at that moment, and a TensorDataset loader (samples are
#: tuples of tensors). float32, head dim 16, sequence 32: shapes torch's CPU
#: flash kernel runs.
COMMON = r'''
import json, sys
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import autotune

FORWARDS = []

def allowed_kernels():
    b = torch.backends.cuda
    flags = {"math": b.math_sdp_enabled(), "flash": b.flash_sdp_enabled(),
             "efficient": b.mem_efficient_sdp_enabled(), "cudnn": b.cudnn_sdp_enabled()}
    return sorted(k for k, on in flags.items() if on)

class Attention(nn.Module):
    def __init__(self, dim=32, heads=2, classes=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        FORWARDS.append(allowed_kernels())
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.head(y.transpose(1, 2).reshape(b, s, d).mean(1))

def workload(n=64, batch=8):
    torch.manual_seed(0)
    model = Attention()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g))
    loader = DataLoader(data, batch_size=batch, shuffle=True, generator=g)
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.01)

def qualname(fn):
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

def settings(plan, plugin):
    return {k: s.to_dict() for k, s in plan.settings.get(plugin, {}).items()}
'''

FIT = r'''
mode = sys.argv[1]
model, loader, optimizer = workload()
kwargs = ({"overrides": {"sdpa": {"backend": "math"}, "collate": {"collate": "stack"}}}
          if mode == "on" else {"disable": ["sdpa", "collate"]})
tuned = autotune.apply(model, loader, optimizer=optimizer, **kwargs)
assert FORWARDS == [], "apply alone trains nothing"
outside = allowed_kernels()
with tuned.engine(optimizer, F.cross_entropy, progress=False) as engine:
    history = engine.fit(tuned.loader, epochs=1)
    describe = engine.describe()
print(json.dumps({
    "kernels_in_forward": sorted({tuple(k) for k in FORWARDS}),
    "forwards": len(FORWARDS),
    "kernels_outside": outside, "kernels_after": allowed_kernels(),
    "collate_fn": qualname(tuned.loader.collate_fn),
    "user_collate_fn": qualname(loader.collate_fn),
    "same_loader": tuned.loader is loader,
    "plan": {p: settings(tuned.plan, p) for p in ("sdpa", "collate")},
    "disabled": {p: tuned.plan.disabled.get(p) for p in ("sdpa", "collate")},
    "events": [e.to_dict() for e in tuned.report if e.plugin in ("sdpa", "collate")],
    "describe": {"sdpa_backend": describe.get("sdpa_backend", "absent"),
                 "forward_context": describe["step_hooks"].get("forward_context", [])},
}))
'''

TUNE = r'''
from autotune.tuner import SearchOptions, TrialOptions

RUNS = []  # one per plan applied (every trial, then the final apply), in order

class Observer:
    """Records what each trial's plan asked of the two plugins, the loader's
    collate_fn after every plugin's apply_loader, and (through the model's
    forward) the kernels torch allowed while that trial trained."""
    NAME = "observer"

    @autotune.hookimpl
    def autotune_configure(self):
        return {"watching": autotune.Setting(True, autotune.Source.DEFAULT, "test observer")}

    @autotune.hookimpl(trylast=True)
    def autotune_apply_loader(self, loader, plan):
        RUNS.append({"sdpa": plan.get("sdpa", "backend", "absent"),
                     "collate": plan.get("collate", "collate", "absent"),
                     "collate_fn": qualname(loader.collate_fn), "first_forward": len(FORWARDS)})

model, loader, optimizer = workload()
options = SearchOptions(only=("sdpa", "collate"), confirm_pairs=1,
                        trial=TrialOptions(warmup_steps=1, chunks=3, min_chunks=2, chunk_s=0.05))
tuned = autotune.apply(model, loader, optimizer=optimizer, loss_fn=F.cross_entropy,
                       tune=options, budget_s=60, plugins=[Observer()])
for i, run in enumerate(RUNS):
    end = RUNS[i + 1]["first_forward"] if i + 1 < len(RUNS) else len(FORWARDS)
    run["kernels"] = sorted({tuple(k) for k in FORWARDS[run.pop("first_forward"):end]})
report = tuned.tuning.to_dict()
print(json.dumps({
    "trials": [{k: t[k] for k in ("index", "role", "changes", "label", "status", "reason",
                                  "verdict")} for t in report["trials"]],
    "baseline_index": report["baseline_index"], "winner_index": report["winner_index"],
    "winner_settings": report["winner_settings"], "complete": report["complete"],
    "runs": RUNS,
    "plan": {p: settings(tuned.plan, p) for p in ("sdpa", "collate")},
    "collate_fn": qualname(tuned.loader.collate_fn),
    "device": tuned.device.type,
    "table": tuned.tuning.table(),
}))
'''

STACK = "autotune_extras.collate.stack_collate"
DEFAULT_COLLATE = "torch.utils.data._utils.collate.default_collate"


# -- a: the command line ----------------------------------------------------------------


def test_plugins_lists_both_with_their_origin(venv_python):
    rows = json.loads(autotune(venv_python, "plugins", "--json").stdout)["plugins"]
    by_name = {r["name"]: r for r in rows}
    for name, hooks in (("sdpa", {"autotune_forward_context", "autotune_setup_engine",
                                  "autotune_knobs", "autotune_candidates"}),
                        ("collate", {"autotune_apply_loader", "autotune_knobs",
                                     "autotune_candidates"})):
        row = by_name[name]
        assert row["origin"] == ORIGIN and row["status"] == "enabled", row
        assert hooks <= set(row["hooks"]), row
    text = autotune(venv_python, "plugins").stdout
    for name in ("sdpa", "collate"):
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        assert ORIGIN in line and "enabled" in line


def test_plan_shows_both_settings_with_source_and_reason(venv_python):
    data = json.loads(autotune(venv_python, "plan", "--json").stdout)
    backend = data["plugins"]["sdpa"]["backend"]
    assert backend["value"] is None and backend["source"] == "default"
    assert backend["effect"] == "numerics" and "torch picks" in backend["reason"]
    collate = data["plugins"]["collate"]["collate"]
    assert collate["value"] == "default" and collate["source"] == "default"
    assert collate["effect"] == "speed" and "collate_fn" in collate["reason"]
    # Overrides are checked against the plugins' own knobs (choices).
    data = json.loads(autotune(venv_python, "plan", "--json", "--set", "sdpa.backend=math",
                               "--set", "collate.collate=stack").stdout)
    assert data["plugins"]["sdpa"]["backend"] == {"value": "math", "source": "override",
                                                  "reason": "set by the user",
                                                  "effect": "numerics"}
    assert data["plugins"]["collate"]["collate"]["value"] == "stack"
    bad = autotune(venv_python, "plan", "--set", "sdpa.backend=fastest", expect=2).stderr
    assert bad.startswith("autotune: error: ") and "sdpa.backend must be one of" in bad


def test_disable_switches_both_off_on_the_command_line(venv_python):
    data = json.loads(autotune(venv_python, "plan", "--disable", "sdpa", "--disable", "collate",
                               "--json").stdout)
    assert "sdpa" not in data["plugins"] and "collate" not in data["plugins"]
    assert data["disabled"]["sdpa"] == data["disabled"]["collate"] == "disabled by --disable"
    rows = json.loads(autotune(venv_python, "plugins", "--json", "--disable", "sdpa,collate").stdout)
    status = {r["name"]: r["status"] for r in rows["plugins"]}
    assert status["sdpa"] == status["collate"] == "blocked"


# -- b: Engine.fit ------------------------------------------------------------------------


def test_both_take_effect_in_engine_fit(venv_python, cache_dir):
    out = run_script(venv_python, FIT, "on", cache_dir=cache_dir)
    # The step: only the math kernel while the model ran, torch's flags
    # untouched outside the forward and after the engine closed.
    assert out["forwards"] == 8  # 64 samples in batches of 8, one epoch
    assert out["kernels_in_forward"] == [["math"]]
    assert out["kernels_outside"] == out["kernels_after"] == ALL_KERNELS
    assert out["describe"]["sdpa_backend"] == "math"
    assert "sdpa" in out["describe"]["forward_context"]
    # The loader: rebuilt with the stacking collate; the user's loader untouched.
    assert out["collate_fn"] == STACK and not out["same_loader"]
    assert out["user_collate_fn"] == DEFAULT_COLLATE
    assert out["plan"]["sdpa"]["backend"] == {"value": "math", "source": "override",
                                              "reason": "set by the user", "effect": "numerics"}
    assert out["plan"]["collate"]["collate"] == {"value": "stack", "source": "override",
                                                 "reason": "set by the user", "effect": "speed"}
    events = {(e["plugin"], e["kind"]) for e in out["events"]}
    assert ("sdpa", "applied") in events and ("collate", "applied") in events


def test_disabled_both_leave_torch_as_it_is(venv_python, cache_dir):
    out = run_script(venv_python, FIT, "off", cache_dir=cache_dir)
    assert out["forwards"] == 8
    assert out["kernels_in_forward"] == [ALL_KERNELS]
    assert out["collate_fn"] == DEFAULT_COLLATE and out["same_loader"]
    assert out["plan"] == {"sdpa": {}, "collate": {}}
    assert out["disabled"] == {"sdpa": "disabled by disable=[...]",
                               "collate": "disabled by disable=[...]"}
    assert out["describe"]["sdpa_backend"] == "absent"
    assert "sdpa" not in out["describe"]["forward_context"]
    assert all(e["kind"] == "skipped" for e in out["events"]), out["events"]


# -- c: measured tuning -------------------------------------------------------------------


def test_tuner_searches_both_against_their_off_baseline(venv_python, cache_dir):
    out = run_script(venv_python, TUNE, cache_dir=cache_dir)
    trials, runs = out["trials"], out["runs"]
    detail = out["table"]
    baseline = trials[out["baseline_index"]]
    assert baseline["role"] == "baseline" and baseline["status"] == "ok", detail
    assert baseline["changes"] == {} and baseline["label"] == "PyTorch defaults"
    # The baseline trial (the first plan applied) ran both plugins at their
    # declared "off": torch picks the kernel, the user's collate_fn.
    assert runs[0]["sdpa"] is None and runs[0]["collate"] == "default", runs
    assert runs[0]["collate_fn"] == DEFAULT_COLLATE
    assert runs[0]["kernels"] == [ALL_KERNELS], runs[0]
    # A trial of each group, relative to that baseline: a kernel chosen, the
    # stacking collate. Each ran (ok), or says why it could not.
    by_role = {}
    for trial in trials:
        by_role.setdefault(trial["role"], []).append(trial)
    sdpa = by_role.get("sdpa", [])
    # torch's CPU kernels; with CUDA also memory-efficient and cuDNN attention.
    kernels = {"flash", "math"} | ({"efficient", "cudnn"} if out["device"] == "cuda" else set())
    assert {t["changes"]["sdpa"]["backend"] for t in sdpa} == kernels, detail
    collate = by_role.get("collate", [])
    # (on top of the incumbent: a kernel the sdpa group adopted stays in the changes)
    assert [t["changes"]["collate"] for t in collate] == [{"collate": "stack"}], detail
    for trial in sdpa + collate:
        assert trial["status"] == "ok" or (trial["status"] == "disqualified" and trial["reason"]), detail
    # The plans those trials trained with did what they said.
    assert any(r["sdpa"] == "math" and r["kernels"] == [["math"]] for r in runs), runs
    assert any(r["sdpa"] == "flash" and r["kernels"] == [["flash"]] for r in runs), runs
    assert any(r["collate"] == "stack" and r["collate_fn"] == STACK for r in runs), runs
    # What ships is measured: the winner, or PyTorch defaults when nothing
    # beat them (the reason says which).
    for plugin, key in (("sdpa", "backend"), ("collate", "collate")):
        setting = out["plan"][plugin][key]
        assert setting["source"] == "measured" and setting["reason"].startswith("measured"), detail
        assert setting["value"] == out["winner_settings"][plugin][key]
    assert out["collate_fn"] == (STACK if out["plan"]["collate"]["collate"]["value"] == "stack"
                                 else DEFAULT_COLLATE)


# -- the plugins' own parts, in-process (loaded from the source file) --------------------


def _load_collate_module():
    return load_from_source(PACKAGE / "autotune_extras" / "collate.py",
                            "_autotune_extras_collate_from_source")


def test_stack_collate_makes_the_batches_default_collate_makes():
    import torch
    from torch.utils.data import DataLoader, TensorDataset, default_collate

    collate = _load_collate_module()
    data = TensorDataset(torch.randn(10, 3), torch.randint(0, 4, (10,)))
    samples = [data[i] for i in range(4)]
    expected, got = default_collate(samples), collate.stack_collate(samples)
    assert type(got) is type(expected) and len(got) == 2
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))
    # Anything but tuples of same-shaped tensors goes to default_collate.
    assert torch.equal(collate.stack_collate([1, 2, 3]), torch.tensor([1, 2, 3]))
    mixed = [(torch.zeros(2), 1), (torch.ones(2), 0)]
    assert torch.equal(collate.stack_collate(mixed)[1], torch.tensor([1, 0]))
    # The rebuilt loader keeps the sampler, batch size and drop_last; the
    # user's own collate_fn is never replaced.
    loader = DataLoader(data, batch_size=4, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    rebuilt = collate.with_collate(loader, collate.stack_collate)
    assert rebuilt.sampler is loader.sampler and rebuilt.batch_size == 4 and rebuilt.drop_last
    assert [len(b[0]) for b in rebuilt] == [4, 4]
    assert collate.uses_default_collate(loader) and not collate.uses_default_collate(rebuilt)
    assert not collate.uses_default_collate([samples])


# -- the throw-away install ---------------------------------------------------------------


def test_the_throw_away_install_stays_out_of_the_main_environment(venv_python):
    venv_root = venv_python.parents[2].resolve()  # the fixture's directory: sources + venv
    spec = importlib.util.find_spec("autotune_extras")
    assert spec is None or venv_root not in Path(spec.origin).resolve().parents
    for dist in metadata.distributions():
        if dist.metadata["Name"] == "autotune-extras":
            location = Path(dist.locate_file("")).resolve()
            assert location != venv_root and venv_root not in location.parents
    # Nor does this process see the two plugins.
    from autotune.plugin.manager import PluginManager

    names = PluginManager(autoload=True).names()
    assert "sdpa" not in names and "collate" not in names
