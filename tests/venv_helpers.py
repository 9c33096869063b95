"""A throw-away virtual environment with one package pip-installed into it,
so a test can use a real third-party plugin without changing the plugin
list every other test sees.

The venv sees this test environment's packages (torch, autotune, pip,
setuptools) through a ``.pth`` file that adds this interpreter's
site-packages; unlike ``--system-site-packages`` that also works when the
tests themselves run in a virtual environment. pip runs with ``--no-index
--no-build-isolation``, so the install works offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AUTOTUNE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTUNE_")}
    env.update(extra)
    return env


def install_in_throwaway_venv(package: Path, root: Path) -> Path:
    """pip-install ``package`` (a directory with a pyproject.toml) into a new
    venv under ``root``; returns the venv's python."""
    source = root / "src"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(package, source, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                   "__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    venv_site = subprocess.run([str(python), "-c",
                                "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    parents = [*site.getsitepackages(),
               *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    # addsitedir (not a bare path) so the parent's own .pth files run too:
    # that is how an editable install of autotune is found.
    Path(venv_site, "_test_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents if Path(p).is_dir()))
    # pip itself comes from the parent's site-packages; it installs into the venv.
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                             "--no-build-isolation", "--quiet", str(source)],
                            capture_output=True, text=True, timeout=300, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return python


def load_from_source(path: Path, name: str) -> Any:
    """Import the module at ``path`` under ``name`` (not its package name:
    an installed copy of that may exist), without leaving it in sys.modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module
