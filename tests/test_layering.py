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
from pathlib import Path

import pytest

from autotune.plugin.manager import BUILTIN_PLUGINS

REPO = Path(__file__).resolve().parents[1]
#: The modules that must not know a built-in plugin by name, relative to the
#: repository root.
MODULES = sorted(str(p.relative_to(REPO)) for p in [
    *(REPO / "autotune" / "tuner").glob("*.py"),
    *(REPO / "autotune" / "cv").glob("*.py"),
    *(REPO / "autotune" / "engine").glob("*.py"),
    *(REPO / "autotune" / name for name in ("distributed.py", "plan/resources.py", "applying.py")),
])

#: Built-in names that are also the core's own words: the tuner measures on
#: the user's optimizer object whatever the plugin of that name does. For
#: these only the ``plugin.key`` form counts ("optimizer.fused").
CORE_WORDS = frozenset({"optimizer"})


def _pattern(names: object) -> str:
    return "|".join(map(re.escape, sorted(names, key=len, reverse=True)))  # type: ignore[arg-type]


_NAMES = _pattern(set(BUILTIN_PLUGINS) - CORE_WORDS)
_ALL = _pattern(BUILTIN_PLUGINS)
#: A literal that is a plugin's name, starts a role or step with it
#: ("threads (after loader)", "threads@1", "threads-after-loader"), or names
#: one of its keys ("compile.mode", "see accumulation.steps").
_USES = re.compile(rf"^(?:{_NAMES})(?:$|[@-]| \()|(?<![\w.])(?:{_ALL})\.[a-z_]")
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
    ('role = "threads (after loader)"\n', 1),
    ("msg = f\"{plan.get('dataloader', 'num_workers')} workers\"\n", 1),
    ('why = "see compile.mode"\n', 1),
    ('step = f"threads@{n}"\n', 1),
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

