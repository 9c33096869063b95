"""Layering: the core reads only what plugins declare (knobs, hooks), never a
built-in plugin's name. A module listed in :data:`MODULES` may not spell a
built-in's name as a string literal ("threads", "accumulation.steps", a
role like "threads (after loader)"); docstrings and comments may, for
example, name one."""

from __future__ import annotations

import ast
import io
import re
import tokenize
import subprocess
import sys
from pathlib import Path
from typing import Iterable, NamedTuple

import pytest

from autotune.testing import BUILTIN_PLUGINS

REPO = Path(__file__).resolve().parents[1]
#: Modules allowed to know built-in plugins by name, and why. Every other
#: library module must not: the core reads what plugins declare.
KNOWS_BUILTINS = {
    "autotune/bridges/": "maps the built-ins' settings onto Lightning, HF and Accelerate options",
    "autotune/cli/": "help texts give a real --set example",
    "autotune/telemetry/diagnosis.py": "its advice names the setting that relieves a bottleneck",
}
#: The modules that must not know a built-in plugin by name, relative to the
#: repository root.
MODULES = sorted(
    rel for p in (REPO / "autotune").rglob("*.py")
    if not (rel := str(p.relative_to(REPO))).startswith(tuple(KNOWS_BUILTINS)))

#: Built-in names that are also the core's own words: the tuner measures on
#: the user's optimizer object whatever the plugin of that name does; a Share
#: has threads; the daemon is a command and a Source. For these only the
#: ``plugin.key`` form counts ("optimizer.fused").
CORE_WORDS = frozenset({"optimizer", "threads", "daemon"})


def _pattern(names: object) -> str:
    return "|".join(map(re.escape, sorted(names, key=len, reverse=True)))  # type: ignore[arg-type]


_NAMES = _pattern(set(BUILTIN_PLUGINS) - CORE_WORDS)
_ALL = _pattern(BUILTIN_PLUGINS)
#: A literal that is a plugin's name, starts a role or step with it
#: ("threads (after loader)", "threads@1", "threads-after-loader"), or names
#: one of its keys ("compile.mode", "see accumulation.steps").
_USES = re.compile(rf"^(?:{_NAMES})(?:$|[@-]| \()|(?<![\w.])(?:{_ALL})\.(?!sock\b)[a-z_]")
#: A quoted name inside an f-string (one token before Python 3.12).
_QUOTED = re.compile(rf"""(["'])(?:{_NAMES})\1""")

_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT,
         tokenize.ENCODING}


def string_literals(source: str) -> list[tuple[int, str, str]]:
    """``(line, prefix, value)`` for every string literal in ``source``
    that is not a docstring (nor any other string that is a statement of its
    own). Comments are not tokens of this kind at all."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    out = []
    for i, token in enumerate(tokens):
        if token.type != tokenize.STRING:
            continue
        before = next((t for t in reversed(tokens[:i]) if t.type not in _SKIP
                       or t.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)), None)
        after = next((t for t in tokens[i + 1:] if t.type not in (tokenize.NL, tokenize.COMMENT)),
                     None)
        starts_statement = before is None or before.type in (
            tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) or before.string == ":"
        if starts_statement and (after is None or after.type in (tokenize.NEWLINE,
                                                                  tokenize.ENDMARKER)):
            continue  # a docstring
        prefix = token.string[:token.string.index(token.string[-1])].lower()
        value = token.string if "f" in prefix else ast.literal_eval(token.string)
        out.append((token.start[0], prefix, value))
    return out


def builtin_names_in(source: str) -> list[str]:
    """Where ``source`` spells a built-in plugin's name in a string literal."""
    found = []
    for line, prefix, value in string_literals(source):
        if "b" in prefix:
            continue
        if "f" in prefix:
            # The literal parts between the {fields}, and quoted names inside them.
            body = value[len(prefix) + 1:-1]
            hit = _QUOTED.search(body) or any(
                _USES.search(part.strip("\"'")) for part in re.split(r"\{[^{}]*\}", body))
        else:
            hit = _USES.search(value)
        if hit:
            found.append(f"line {line}: {value!r}")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_builtin_plugin_name_in(module: str) -> None:
    hits = builtin_names_in((REPO / module).read_text())
    assert not hits, f"{module} knows built-in plugins by name: " + "; ".join(hits)


@pytest.mark.parametrize("source, hits", [
    ('x = plan.get("accumulation", "steps")\n', 1),
    ('role = "compile (after loader)"\n', 1),
    ("msg = f\"{plan.get('dataloader', 'num_workers')} workers\"\n", 1),
    ('why = "see compile.mode"\n', 1),
    ('step = f"compile@{n}"\n', 1),
    ('key = "threads.intra_op"\n', 1),
    ('share = {"threads": 2}\npath = "daemon.sock"\n', 0),
    ('"""The threads plugin, for example."""\nx = 1  # "threads" in a comment\n', 0),
    ('def f():\n    """Docstring naming "compile"."""\n    return "torch.compile failed"\n', 0),
    ('why = f"compile error ({exc})"\nk = "enabled"\nm = "optimizer"\n', 0),
    ('key = "optimizer.fused"\n', 1),
])
def test_the_check_itself(source: str, hits: int) -> None:
    assert len(builtin_names_in(source)) == hits, builtin_names_in(source)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return out


CORE = sorted(p for p in (REPO / "autotune").rglob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_no_core_module_imports_a_plugin_module(path: Path) -> None:
    """Plugins are loaded by the manager through their entry points (by
    name, with importlib); nothing else in the package imports one, the
    tuner does not import the facade, and the library not the CLI."""
    imported = _imports(path)
    relative = path.relative_to(REPO / "autotune").as_posix()
    assert not [m for m in imported if m.startswith("autotune.plugins")], relative
    if not relative.startswith("cli/") and relative != "__main__.py":  # python -m autotune
        assert not [m for m in imported if m.startswith("autotune.cli")], relative
    if relative.startswith("tuner/"):
        assert not [m for m in imported if m == "autotune.api" or m.startswith("autotune.api.")], \
            relative


# ---------------------------------------------------------------------------
# The tree's layers, read from the imports
# ---------------------------------------------------------------------------

#: The layers of the library, bottom first: a module imports only from its
#: own layer or the ones below (docs/architecture.md draws them). Each entry
#: names modules or packages by dotted prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("autotune.errors", "autotune.display")),
    ("machine", ("autotune.machine",)),
    ("coordinator", ("autotune.coordinator",)),
    ("telemetry", ("autotune.telemetry",)),
    ("profile", ("autotune.profile",)),
    ("plan", ("autotune.plan",)),
    ("workload", ("autotune.workload",)),
    ("plugin", ("autotune.plugin",)),
    ("planner", ("autotune.planner",)),
    ("engine", ("autotune.engine",)),
    ("applying", ("autotune.applying",)),
    ("live", ("autotune.live",)),
    ("tuner", ("autotune.tuner",)),
    ("bench", ("autotune.bench",)),
    ("cv", ("autotune.cv",)),
    ("distributed", ("autotune.distributed",)),
    ("api", ("autotune.api",)),
    ("bridges", ("autotune.bridges",)),
    ("sdk", ("autotune.sdk", "autotune.testing")),
    ("cli", ("autotune.cli", "autotune.__main__")),
)

#: Third-party packages a function may import for itself: optional extras,
#: and what the torch-free command line (``autotune --version``, ``detect``,
#: ``profiles``, ``report``) must not pay for at import time.
LATE_IMPORTS_ALLOWED = frozenset({
    "dask", "distributed", "transformers", "lightning", "pytorch_lightning", "accelerate",
    "matplotlib", "torch", "pynvml", "cpuinfo", "yaml", "jsonschema", "pytest",
})

#: The only modules that load autotune modules by name: lazily loaded public
#: names, the command line's one table of commands, and the hook specs,
#: which register every module of their package (a new phase is a new file).
LOADS_BY_NAME = frozenset({"autotune", "autotune.sdk", "autotune.cli", "autotune.plugin.specs"})

PACKAGE_ROOT = REPO / "autotune"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "plugins":
        parts = ["autotune", "plugins", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


LIBRARY = {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}
PLUGINS = {_module_name(p): p for p in sorted((REPO / "plugins").glob("*.py"))}


class Import(NamedTuple):
    importer: str
    target: str
    line: int
    where: str  # "top", "function" or "type-checking"


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[Import]:
    """Every import statement in ``path``, with the module it names (the
    submodule where ``from package import submodule`` names one) and where
    it stands."""
    known = {**LIBRARY, **PLUGINS}
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for part in child.body:
                    visit_one(part, "type-checking")
                for part in child.orelse:
                    visit_one(part, where)
                continue
            visit_one(child, where)

    def visit_one(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, node.lineno, where) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append(Import(module, full if full in known else base, node.lineno, where))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            where = "function"
        visit(node, where)

    visit(ast.parse(path.read_text(), str(path)), "top")
    return found


def _library_target(name: str) -> str | None:
    while name and name not in LIBRARY:
        name = name.rpartition(".")[0]
    return name or None


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of LAYERS: add it where it belongs"
    return best[0]


ALL_IMPORTS = [i for m, p in LIBRARY.items() for i in imports_of(m, p)]
INTERNAL = [i._replace(target=t) for i in ALL_IMPORTS
            if (t := _library_target(i.target)) and t != i.importer]


def test_every_library_module_has_a_layer() -> None:
    for module in LIBRARY:
        if module != "autotune":
            layer_of(module)


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = [f"{i.importer}:{i.line} ({LAYERS[layer_of(i.importer)][0]}) imports {i.target} "
              f"({LAYERS[layer_of(i.target)][0]})"
              for i in INTERNAL if i.importer != "autotune" and i.target != "autotune"
              and layer_of(i.target) > layer_of(i.importer)]
    assert not upward, "\n".join(upward)


def test_the_library_imports_not_its_own_facade() -> None:
    """``import autotune`` is for users: a module inside the package that
    imported it would depend on every lazily loaded name at once."""
    facade = [f"{i.importer}:{i.line}" for i in INTERNAL
              if i.target == "autotune" and not i.importer.startswith("autotune.cli")]
    assert not facade, facade


def _circles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return out


def test_circles_are_found() -> None:
    assert _circles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert _circles([("a", "b"), ("b", "c")]) == []


def test_no_import_circles() -> None:
    """Counting every import: at the top, inside functions and under
    TYPE_CHECKING (a circle there is a circle in the design)."""
    circles = _circles((i.importer, i.target) for i in INTERNAL if i.target != "autotune")
    assert not circles, circles


def test_imports_inside_functions_are_only_optional_or_heavy_packages() -> None:
    late = [f"{i.importer}:{i.line} imports {i.target}" for i in ALL_IMPORTS
            if i.where == "function" and i.target.split(".")[0] not in LATE_IMPORTS_ALLOWED]
    assert not late, "\n".join(late)


@pytest.mark.parametrize("module", sorted(LIBRARY), ids=str)
def test_modules_are_loaded_by_name_only_by_the_lazy_namespaces(module: str) -> None:
    source = LIBRARY[module].read_text()
    if module not in LOADS_BY_NAME:
        assert "import_module(" not in source and "__import__(" not in source, module


@pytest.mark.parametrize("module", sorted(PLUGINS), ids=str)
def test_plugins_import_only_the_sdk(module: str) -> None:
    imported = [i for i in imports_of(module, PLUGINS[module])
                if i.target.split(".")[0] == "autotune"]
    wrong = [f"line {i.line}: {i.target}" for i in imported if i.target != "autotune.sdk"]
    assert not wrong, f"{module} imports more than autotune.sdk: {wrong}"


def test_sdk_loads_no_torch() -> None:
    """``autotune detect`` loads the plugins, which import the SDK: it must
    cost no torch import."""
    code = "import sys, autotune.sdk; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


#: Why a unit may be long: a sentence that starts so, at its top.
LONG_BECAUSE = "Long because"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _docstring_or_leading_comment(lines: list[str], node: ast.AST) -> str:
    doc = ast.get_docstring(node) or "" if isinstance(
        node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ""
    start = getattr(node, "lineno", 1)
    above = "\n".join(lines[max(0, start - 3):start + 1])
    return doc + above


@pytest.mark.parametrize("path", [*LIBRARY.values(), *PLUGINS.values()],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_are_short_or_say_why(path: Path) -> None:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    long_units = []
    if len(lines) > MAX_MODULE_LINES and LONG_BECAUSE not in (ast.get_docstring(tree) or ""):
        long_units.append(f"the module has {len(lines)} lines")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and LONG_BECAUSE not in _docstring_or_leading_comment(
                    lines, node):
                long_units.append(f"{node.name}() has {length} lines (line {node.lineno})")
    assert not long_units, f"{path.relative_to(REPO)}: " + "; ".join(long_units)


@pytest.mark.parametrize("module", sorted(PLUGINS), ids=str)
def test_plugins_import_late_only_heavy_packages_and_lazy_sdk_names(module: str) -> None:
    """Inside a function a plugin may import torch (``autotune detect``
    loads plugins without it) or one of the SDK's lazily loaded names."""
    from autotune import sdk

    path = PLUGINS[module]
    late = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                late += [a.name for a in inner.names
                         if a.name.split(".")[0] not in LATE_IMPORTS_ALLOWED]
            elif isinstance(inner, ast.ImportFrom) and inner.module:
                if inner.module == "autotune.sdk":
                    late += [f"autotune.sdk.{a.name}" for a in inner.names
                             if a.name not in sdk._LAZY]
                elif inner.module.split(".")[0] not in LATE_IMPORTS_ALLOWED:
                    late.append(inner.module)
    assert not late, f"{module} imports inside functions: {sorted(set(late))}"
