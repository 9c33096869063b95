"""A real third-party plugin package (examples/custom_plugin, "autotune-seed"),
installed with pip into a throw-away virtual environment (tests/venv_helpers.py)
so it never changes the plugin list the other tests see.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch

from autotune import make_plan
from autotune.errors import ProfileError
from autotune.testing import BUILTIN_PLUGINS, cpu_laptop, plugin_manager, rtx5080_7950x
from venv_helpers import clean_env, install_in_throwaway_venv, load_from_source

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_plugin"


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory) -> Path:
    return install_in_throwaway_venv(EXAMPLE, tmp_path_factory.mktemp("seed-venv"))


def autotune(python: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(python), "-m", "autotune", *argv], capture_output=True,
                            text=True, timeout=180, env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    return result


def test_installed_plugin_is_listed(venv_python):
    out = autotune(venv_python, "plugins").stdout
    row = next(line for line in out.splitlines() if line.startswith("seed "))
    assert "autotune-seed 0.1.0" in row and "enabled" in row
    assert "configure,detect,engine_state,knobs,load_engine_state,setup_engine" in row


def test_installed_plugin_contributes_to_the_plan(venv_python):
    data = json.loads(autotune(venv_python, "plan", "--json", "--set", "seed.seed=1234").stdout)
    # Its knobs (autotune_knobs) say reseeding changes training: the plan says so.
    assert data["plugins"]["seed"]["seed"] == {"value": 1234, "source": "override",
                                               "reason": "set by the user", "effect": "training"}
    deterministic = data["plugins"]["seed"]["deterministic"]
    assert deterministic["value"] is False and deterministic["source"] == "default"
    assert "slower" in deterministic["reason"]


def test_installed_plugin_adds_detected_facts(venv_python):
    hardware = json.loads(autotune(venv_python, "detect", "--json",
                                   CUBLAS_WORKSPACE_CONFIG=":4096:8").stdout)["hardware"]
    assert hardware["extra"]["seed"] == {"cublas_workspace_config": ":4096:8",
                                         "deterministic_cublas_ready": True}


def test_disabled_plugin_disappears(venv_python):
    data = json.loads(autotune(venv_python, "plan", "--json", "--disable", "seed").stdout)
    assert "seed" not in data["plugins"]
    assert data["disabled"]["seed"] == "disabled by --disable"
    rows = json.loads(autotune(venv_python, "plugins", "--json", AUTOTUNE_DISABLE="seed").stdout)
    seed = next(r for r in rows["plugins"] if r["name"] == "seed")
    assert seed["status"] == "blocked" and seed["reason"] == "disabled by $AUTOTUNE_DISABLE"


def test_autoload_off_keeps_it_out(venv_python):
    env = {"AUTOTUNE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    rows = json.loads(autotune(venv_python, "plugins", "--json", **env).stdout)["plugins"]
    seed = next(r for r in rows if r["name"] == "seed")
    assert seed["status"] == "not autoloaded"
    # Every built-in is on; the daemon plugin proposes nothing when no daemon listens.
    assert {r["name"] for r in rows if r["status"] == "enabled"} == {
        r["name"] for r in rows if r["origin"] == "builtin"} - {"daemon"}
    assert next(r for r in rows if r["name"] == "daemon")["status"] == "loaded"


def test_the_throw_away_install_stays_out_of_the_main_environment(venv_python):
    # autotune-seed may be installed here too (the README suggests it), but
    # never from the test's virtual environment.
    venv_root = venv_python.parents[2].resolve()  # the fixture's directory: sources + venv
    spec = importlib.util.find_spec("autotune_seed")
    assert spec is None or venv_root not in Path(spec.origin).resolve().parents
    for dist in metadata.distributions():
        if dist.metadata["Name"] == "autotune-seed":
            location = Path(dist.locate_file("")).resolve()
            assert location != venv_root and venv_root not in location.parents


# -- the plugin's own behaviour, in-process (loaded from its source file) --------------


def _load_seed_module():
    return load_from_source(EXAMPLE / "autotune_seed" / "__init__.py", "_autotune_seed_from_source")


def _seed_engine(seed, overrides, model=None):
    from torch import nn

    from autotune.engine.engine import Engine

    # Only the seed plugin, in a real engine.
    manager = plugin_manager(plugins=[seed], disable=BUILTIN_PLUGINS)
    planned = make_plan(hardware=cpu_laptop(), manager=manager, overrides=overrides)
    model = model or nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    return Engine(model, torch.optim.SGD(model.parameters(), lr=0.1),
                  nn.functional.cross_entropy, planned.plan, manager=planned.manager,
                  progress=False)


def test_seed_plugin_seeds_and_restores_deterministic_mode():
    seed = _load_seed_module()
    assert torch.are_deterministic_algorithms_enabled() is False
    engine = _seed_engine(seed, {"seed": {"seed": 7, "deterministic": True}})
    first = torch.rand(3)
    assert torch.are_deterministic_algorithms_enabled() is True
    engine.close()
    assert torch.are_deterministic_algorithms_enabled() is False
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(3))


def test_seed_plugin_checkpoints_the_random_streams(tmp_path):
    """Its engine-state hooks: a run resumed from a checkpoint draws the same
    dropout masks as one that never stopped."""
    seed = _load_seed_module()
    batch = (torch.randn(6, 4), torch.randint(0, 2, (6,)))
    with _seed_engine(seed, {"seed": {"seed": 3}}) as engine:
        engine.train_step(batch)
        engine.save(tmp_path / "ckpt.pt")
        assert "seed" in torch.load(tmp_path / "ckpt.pt", weights_only=True)["plugins"]
        expected = torch.rand(5)  # what the uninterrupted run draws next
    torch.manual_seed(99)  # another process, another state
    with _seed_engine(seed, {"seed": {"seed": 3}}) as resumed:
        resumed.load(tmp_path / "ckpt.pt")
        assert torch.equal(torch.rand(5), expected)
    with _seed_engine(seed, {}) as unseeded:  # no seed: nothing saved
        assert "seed" not in unseeded.state_dict()["plugins"]


def test_seed_plugin_warns_about_cublas_on_cuda(tmp_path):
    seed = _load_seed_module()
    (tmp_path / "rtx5080_7950x.yaml").write_text(
        "name: rtx5080_7950x\nextends: generic_cuda\nmatch: {gpu_name: RTX 5080}\n"
        "plugins:\n  seed: {deterministic: true}\n")
    plan = make_plan(hardware=rtx5080_7950x(), profile_dirs=[tmp_path], profile="rtx5080_7950x",
                     manager=plugin_manager(plugins=[seed])).plan
    setting = plan.setting("seed", "deterministic")
    assert setting.value is True and setting.source.value == "profile"
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in setting.reason
    # Matched rather than chosen, the profile cannot change the numerics.
    matched = make_plan(hardware=rtx5080_7950x(), profile_dirs=[tmp_path],
                        manager=plugin_manager(plugins=[seed])).plan
    assert matched.get("seed", "deterministic") is False
    assert matched.setting("seed", "deterministic").reason.startswith("not measured")


def test_installed_alone_the_seed_plugin_changes_nothing():
    """Its knobs say reseeding changes training: off unless asked, so the
    RNG streams stay the user's."""
    seed = _load_seed_module()
    planned = make_plan(hardware=cpu_laptop(),
                        manager=plugin_manager(plugins=[seed], disable=BUILTIN_PLUGINS))
    assert planned.plan.get("seed", "seed") is None
    assert planned.plan.setting("seed", "seed").effect.value == "training"
    model = torch.nn.Linear(4, 2)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    with _seed_engine(seed, {}, model) as engine:
        assert torch.equal(torch.rand(3), expected)  # not reseeded
        assert torch.are_deterministic_algorithms_enabled() is False
        assert engine.plan.get("seed", "seed") is None


def test_a_bad_option_for_the_plugin_is_a_profile_error(tmp_path):
    seed = _load_seed_module()
    path = tmp_path / "generic_cpu.yaml"
    path.write_text("name: generic_cpu\nplugins:\n  seed: {sed: 3}\n")
    with pytest.raises(ProfileError) as info:
        make_plan(hardware=cpu_laptop(), profile_dirs=[tmp_path],
                  manager=plugin_manager(plugins=[seed]))
    assert str(info.value).startswith(f"{path}: key 'plugins.seed': unknown option(s) ['sed']")
