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

from autotune.plugin import specs as hookspecs
from autotune.plugin.specs import HOOK_NAMES
from autotune.plugin.options import option_schemas
from autotune.profile import profile_schema, schema_path
from autotune.testing import BUILTIN_PLUGINS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
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
def test_every_hook_is_documented_in_the_hook_table(hook):
    """docs/plugins.md's hook table has a row for every hook."""
    section = _doc_section((DOCS / "plugins.md").read_text(), "Hooks")
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert any(f"`{hook}`" in row or f"`{hook}(" in row for row in rows), \
        f"docs/plugins.md's hook table has no row for {hook}"


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
    """The schema a profile's section is checked against is made from the
    plugin's own Options: one field, one schema property."""
    module = importlib.import_module(f"autotune.plugins.{name}")
    schema = profile_schema(option_schemas({name: module.autotune_options()}))
    section = schema["properties"]["plugins"]["properties"][name]
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


def _doc_section(text: str, title: str) -> str:
    """From the heading ``title`` (any level) to the next heading of the same
    or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert match, f"no section {title!r}"
    end = re.compile(rf"^#{{1,{len(match.group(1))}}} ", re.M).search(text, match.end())
    return text[match.start():end.start() if end else len(text)]


def _first_column(section: str) -> list[str]:
    """The first cell of each row of the section's table, backticks removed."""
    rows = re.findall(r"^\| `([^`|]+)` \|", section, flags=re.M)
    return [row.strip() for row in rows]


def test_readme_keeps_its_sections():
    headings = set(re.findall(r"^#+ (.+?)\s*$", README, flags=re.MULTILINE))
    for title in ("Install", "Tune and train", "What autotune guarantees", "Built-in plugins",
                  "Use it with your code", "Your own loop",
                  "Lightning, Hugging Face Trainer, Accelerate", "Command line", "Results",
                  "Extending autotune", "How it works", "Development"):
        assert title in headings, title


def test_readme_stays_short():
    """The README is read in five minutes; the reference lives in docs/."""
    assert len(README.splitlines()) <= 300


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings (lowercase, punctuation
    dropped, spaces to hyphens), fenced code left out."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_and_docs_links_resolve():
    for path in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text()):
            if "://" in target:
                continue
            linked = (path.parent / target) if target else path
            assert linked.exists(), f"{path.name}: broken link {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{path.name}: no #{anchor} in {target}"


def _builtin_entry_points() -> list[str]:
    """The plugins this distribution registers in the entry-point group
    ``autotune``: the built-ins."""
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group="autotune")
                  if ep.dist is not None and ep.dist.name == "torch-autotune")


def test_readme_plugin_table_lists_exactly_the_builtins():
    listed = _first_column(_doc_section(README, "Built-in plugins"))
    assert sorted(listed) == sorted(_pyproject()["project"]["entry-points"]["autotune"])
    installed = _builtin_entry_points()
    if installed:  # the package metadata is there (an installed or editable checkout)
        assert sorted(listed) == installed
    assert len(listed) == len(set(listed)), listed


def test_docs_plugin_table_lists_the_builtins_in_registration_order():
    """docs/plugins.md's table, in BUILTIN_PLUGINS order (docs/engine.md says
    step hooks run in this order)."""
    listed = _first_column(_doc_section((DOCS / "plugins.md").read_text(), "Built-in plugins"))
    assert tuple(listed) == BUILTIN_PLUGINS
    assert sorted(listed) == sorted(_pyproject()["project"]["entry-points"]["autotune"])


def test_readme_quick_start_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in README and "pip install torch==2.13.0" in ci
    assert 'pip install -e ".[dev]"' in README and 'pip install -e ".[dev]"' in ci
    assert "set -euo pipefail" in ci and "python -m pytest" in ci


def _cli_commands() -> set[str]:
    """Every command the parser knows, by its full name (``profiles show``),
    plus ``daemon status``, an action of ``daemon``."""
    import argparse

    from autotune.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
        names = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    names |= {f"{prefix}{name}"} | walk(sub, f"{prefix}{name} ")
        return names

    return walk(build_parser()) | {"daemon status"}


def _command_rows(section: str) -> list[str]:
    """The command each table row names: ``| `autotune profiles show NAME` |``
    is ``profiles show`` (the lowercase words after ``autotune``)."""
    cells = re.findall(r"^\| `autotune ([^`]*)` \|", section, flags=re.M)
    return [" ".join(re.match(r"((?:[a-z][a-z_]*(?: |$))*)", cell).group(1).split())
            for cell in cells]


def test_readme_and_docs_list_every_cli_command():
    commands = _cli_commands()
    assert {"detect", "profiles", "profiles show", "plugins", "plan", "bench", "monitor",
            "daemon", "daemon status", "report", "cv"} <= commands
    cli_doc = (DOCS / "cli.md").read_text()
    for where, section in (("README", _doc_section(README, "Command line")),
                           ("docs/cli.md", cli_doc)):
        rows = _command_rows(section)
        assert sorted(rows) == sorted(commands), f"{where}: one table row per command"
    for command in sorted(commands):
        assert f"## `autotune {command.split()[0]}`" in cli_doc, f"docs/cli.md: no section {command}"


def test_cli_doc_documents_every_json_key():
    cli_doc = (DOCS / "cli.md").read_text()
    for key in ('"hardware"', '"profile"', '"profiles"', '"fingerprint"', '"disabled"',
                '"hardware_fingerprint"', '"status"'):
        assert key in cli_doc, key


def test_every_environment_variable_is_documented():
    """Each AUTOTUNE_* variable the library or a plugin reads has a row in
    docs/cli.md's table."""
    used = set()
    for root in (REPO / "autotune", REPO / "plugins"):
        for path in root.rglob("*.py"):
            used |= set(re.findall(r"AUTOTUNE_[A-Z_]+[A-Z]", path.read_text()))
    table = _doc_section((DOCS / "cli.md").read_text(), "Environment variables")
    documented = set(re.findall(r"^\| `(AUTOTUNE_[A-Z_]+)", table, flags=re.M))
    assert used <= documented, f"undocumented in docs/cli.md: {sorted(used - documented)}"


def _imported_top_level_modules(root: Path) -> dict[str, str]:
    """Every top-level module an ``import`` in ``root`` names, at any depth
    of the file (optional imports inside functions included), with one file
    that imports it."""
    import ast
    import sys

    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "autotune":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _requirement_names(requirements: list[str]) -> set[str]:
    """The distributions these requirements install by name: each one, and
    what an extra it asks for adds (``dask[distributed]`` brings
    ``distributed``), read from the installed distribution's metadata."""
    from importlib import metadata

    names = set()
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]+)\])?", requirement)
        name, extras = match.group(1), match.group(2)
        names.add(_norm(name))
        for extra in (extras or "").split(","):
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue
            names |= {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in requires
                      if extra.strip() and re.search(rf"extra\s*==\s*['\"]{extra.strip()}['\"]", r)}
    return names


#: Imported only as a fallback, when the declared package is missing.
_FALLBACK_IMPORTS = {"pytorch_lightning": "lightning's standalone name, tried without lightning"}


def test_every_library_import_is_a_declared_dependency():
    """A fresh ``pip install -e .`` (plus the extra a feature names) must
    bring every module the library imports: cloudpickle was imported by
    cross-validation and came only by luck, through another package."""
    from importlib.metadata import packages_distributions

    project = _pyproject()["project"]
    declared = _requirement_names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= _requirement_names(extra)
    providers = packages_distributions()
    missing = {}
    for root in (REPO / "autotune", REPO / "plugins"):
        for module, where in _imported_top_level_modules(root).items():
            dists = {_norm(d) for d in providers.get(module, [module])}
            if not dists & declared and module not in _FALLBACK_IMPORTS:
                missing[module] = where
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_dev_extra_installs_every_user_extra():
    """CI installs [dev]; each extra a user can ask for must be in it, so CI
    tests the bridges and backends those extras are for."""
    extras = _pyproject()["project"]["optional-dependencies"]
    users = set(extras) - {"dev"}
    assert {"hf", "lightning", "accelerate", "dask"} <= users
    dev = " ".join(extras["dev"])
    included = set(re.findall(r"torch-autotune\[([^\]]+)\]", dev))
    named = {n.strip() for group in included for n in group.split(",")}
    assert named == users, f"[dev] includes {sorted(named)}, the user extras are {sorted(users)}"
