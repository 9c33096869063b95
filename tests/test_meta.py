"""Keep the system honest as it grows: every hook documented and tested,
schema and plugin options in step, packaging complete."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from autotune import hookspecs
from autotune.manager import BUILTIN_PLUGINS, HOOK_NAMES
from autotune.profile import schema_path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
TEST_SOURCES = {p.name: p.read_text() for p in (REPO / "tests").glob("test_*.py")
                if p.name != Path(__file__).name}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_hook_names_come_from_the_hookspec_module():
    specs = {n for n, f in vars(hookspecs).items()
             if callable(f) and hasattr(f, "autotune_spec")}
    assert specs == set(HOOK_NAMES) and len(specs) >= 6


@pytest.mark.parametrize("hook", sorted(HOOK_NAMES))
def test_every_hook_is_documented_in_the_readme(hook):
    assert f"`{hook}`" in README or f"`{hook}(" in README, f"README does not document {hook}"


@pytest.mark.parametrize("hook", sorted(HOOK_NAMES))
def test_every_hook_is_exercised_by_a_test(hook):
    users = [name for name, text in TEST_SOURCES.items() if hook in text]
    assert users, f"no test mentions {hook}"


@pytest.mark.parametrize("hook", sorted(HOOK_NAMES))
def test_every_hookspec_documents_itself(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert ":param" in doc and ":return:" in doc, hook


@pytest.mark.parametrize("name", BUILTIN_PLUGINS)
def test_builtin_plugin_shape(name):
    module = importlib.import_module(f"autotune.plugins.{name}")
    assert module.NAME == name
    assert module.__doc__ and len(module.__doc__.strip()) > 40
    assert dataclasses.is_dataclass(module.Options)
    assert module.Options.__dataclass_params__.frozen
    params = list(inspect.signature(module.propose).parameters)
    assert params[:3] == ["hardware", "profile_options", "workload"]
    assert hasattr(module.autotune_configure, "autotune_impl"), "autotune_configure lacks @hookimpl"
    for option in dataclasses.fields(module.Options):
        assert option.name in module.__doc__, f"{name}: option {option.name} undocumented"


@pytest.mark.parametrize("name", BUILTIN_PLUGINS)
def test_schema_options_equal_plugin_options(name):
    schema = json.loads(schema_path().read_text())
    section = schema["properties"]["plugins"]["properties"][name]
    module = importlib.import_module(f"autotune.plugins.{name}")
    fields = {f.name for f in dataclasses.fields(module.Options)}
    assert set(section["properties"]) == fields | {"enabled"}
    assert section["additionalProperties"] is False


def test_schema_knows_every_match_rule():
    from autotune.profile import MATCH_RULES

    schema = json.loads(schema_path().read_text())
    assert set(schema["properties"]["match"]["properties"]) == set(MATCH_RULES)


def test_entry_points_are_the_builtins():
    eps = _pyproject()["project"]["entry-points"]["autotune"]
    assert eps == {n: f"autotune.plugins.{n}" for n in BUILTIN_PLUGINS}


def test_every_subpackage_ships_in_the_wheel():
    """package-dir rules out automatic discovery, so each package is listed
    by hand; a new autotune/<sub>/__init__.py must be added there too."""
    packages = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "autotune").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found <= packages, f"add to [tool.setuptools] packages: {sorted(found - packages)}"
    assert {"autotune.plugins", "autotune.profiles"} <= packages


def test_readme_keeps_the_sections_the_lead_fills():
    headings = set(re.findall(r"^#+ (.+?)\s*$", README, flags=re.MULTILINE))
    for title in ("Training engine and autotune.apply", "Measured tuning", "Cross-validation",
                  "Monitor and daemon"):
        assert title in headings, title


def test_readme_quick_start_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in README and "pip install torch==2.13.0" in ci
    assert 'pip install -e ".[dev]"' in README and 'pip install -e ".[dev]"' in ci
    assert "set -euo pipefail" in ci and "python -m pytest" in ci


def test_readme_documents_every_cli_command_and_json_key():
    for command in ("autotune detect", "autotune profiles", "autotune plugins", "autotune plan"):
        assert command in README, command
    for key in ('"hardware"', '"profile"', '"profiles"', '"fingerprint"', '"disabled"',
                '"hardware_fingerprint"', '"status"'):
        assert key in README, key
