"""A real third-party plugin package (examples/custom_plugin, "autotune-seed"),
installed with pip into a throw-away virtual environment so it never changes
the plugin list the other tests see.

The venv sees this test environment's packages (torch, autotune, pip,
setuptools) through a ``.pth`` file that adds this interpreter's
site-packages; unlike ``--system-site-packages`` that also works when the
tests themselves run in a virtual environment. pip runs with
``--no-index --no-build-isolation``, so the install works offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from autotune import make_plan
from autotune.errors import ProfileError
from autotune.manager import BUILTIN_PLUGINS
from autotune.testing import cpu_laptop, plugin_manager, rtx5080_7950x

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_plugin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTUNE_")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def venv_python(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed-venv")
    source = root / "src"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    parents = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    # addsitedir (not a bare path) so the parent's own .pth files run too:
    # that is how an editable install of autotune is found.
    Path(venv_site, "_test_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents if Path(p).is_dir()))
    # pip itself comes from the system site-packages; it installs into the venv.
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                             "--no-build-isolation", "--quiet", str(source)],
                            capture_output=True, text=True, timeout=300, env=_clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return python


def autotune(python: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(python), "-m", "autotune", *argv], capture_output=True,
                            text=True, timeout=180, env=_clean_env(**env))
    assert result.returncode == 0, result.stderr
    return result


def test_installed_plugin_is_listed(venv_python):
    out = autotune(venv_python, "plugins").stdout
    row = next(line for line in out.splitlines() if line.startswith("seed "))
    assert "autotune-seed 0.1.0" in row and "enabled" in row
    assert "configure,detect,knobs,setup_engine" in row


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
    assert {r["name"] for r in rows if r["status"] == "enabled"} == {
        r["name"] for r in rows if r["origin"] == "builtin"}


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
    # Not "autotune_seed": an installed copy of that name may exist.
    name = "_autotune_seed_from_source"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "autotune_seed" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


class _ClosingEngine:
    """The part of the Engine contract setup_engine uses: on_close(callback)."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def on_close(self, callback) -> None:
        self.callbacks.append(callback)

    def close(self) -> None:
        for callback in reversed(self.callbacks):
            callback()


def test_seed_plugin_seeds_and_restores_deterministic_mode():
    seed = _load_seed_module()
    # Only the seed plugin: the built-ins' setup_engine needs the real Engine.
    manager = plugin_manager(plugins=[seed], disable=BUILTIN_PLUGINS)
    planned = make_plan(hardware=cpu_laptop(), manager=manager,
                        overrides={"seed": {"seed": 7, "deterministic": True}})
    assert torch.are_deterministic_algorithms_enabled() is False
    engine = _ClosingEngine()
    planned.manager.setup_engine(engine, planned.plan)
    first = torch.rand(3)
    assert torch.are_deterministic_algorithms_enabled() is True
    engine.close()
    assert torch.are_deterministic_algorithms_enabled() is False
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(3))


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
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    engine = _ClosingEngine()
    planned.manager.setup_engine(engine, planned.plan)
    assert torch.equal(torch.rand(3), expected)  # not reseeded
    assert torch.are_deterministic_algorithms_enabled() is False
    engine.close()


def test_a_bad_option_for_the_plugin_is_a_profile_error(tmp_path):
    seed = _load_seed_module()
    path = tmp_path / "generic_cpu.yaml"
    path.write_text("name: generic_cpu\nplugins:\n  seed: {sed: 3}\n")
    with pytest.raises(ProfileError) as info:
        make_plan(hardware=cpu_laptop(), profile_dirs=[tmp_path],
                  manager=plugin_manager(plugins=[seed]))
    assert str(info.value).startswith(f"{path}: key 'plugins.seed': unknown option(s) ['sed']")
