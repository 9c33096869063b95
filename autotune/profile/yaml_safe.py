"""YAML read safely: a hostile or broken profile file ends in one
:class:`ProfileError` naming the file, never a hang, a blow-up or code run.

The text is checked in steps, each before the next is paid for: the file's
size before reading it, its encoding, its characters, nesting and size on
the parser's events (before composing, which recurses), aliases expanded
and keys on the composed nodes (before any Python object is built); only
PyYAML's safe constructors ever run.
"""

from __future__ import annotations

import codecs
import stat
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import ProfileError
from autotune.profile.messages import clip

# Limits on one profile file, checked before its data is built, so that a
# hostile or broken file ends in a ProfileError, never a hang or a blow-up.
#: Largest file read (checked before reading it).
MAX_PROFILE_BYTES = 1 << 20
#: Deepest nesting of lists and mappings: checked on the parser's events,
#: before composing (PyYAML's composer recurses, so 100000 "[" would overflow
#: the stack), and again with aliases expanded.
MAX_DEPTH = 32
#: Most values (scalars, lists, mappings): checked on the events, and again
#: with every alias expanded ("billion laughs").
MAX_VALUES = 100_000

_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"), (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)


def _read_text(path: Path, file: str) -> str:
    """The file's text: at most MAX_PROFILE_BYTES, UTF-8 (UTF-16/32 with a
    byte-order mark are decoded too, as YAML allows)."""
    mib = f"{MAX_PROFILE_BYTES / (1 << 20):g} MiB"
    limit = f"a profile may be at most {mib}"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ProfileError("not a regular file", file=file)
        if info.st_size > MAX_PROFILE_BYTES:
            raise ProfileError(f"file is {info.st_size / (1 << 20):.1f} MiB; {limit}", file=file)
        with path.open("rb") as stream:
            data = stream.read(MAX_PROFILE_BYTES + 1)  # the size may have lied (/proc)
    except OSError as exc:
        raise ProfileError(f"cannot read: {exc.strerror or exc}", file=file) from exc
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"file is over {mib}; {limit}", file=file)
    codec, label = next(((c, n) for bom, c, n in _BOMS if data.startswith(bom)),
                        ("utf-8", ""))
    if not label and b"\0" in data:
        raise ProfileError("not UTF-8 text: it contains NUL bytes (a binary file, or UTF-16 "
                           "without a byte-order mark?); save it as UTF-8", file=file)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = data[exc.start]
        if label:
            where = f"at byte {exc.start}"
        else:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - data.rfind(b"\n", 0, exc.start)
            where = f"at line {line}, column {column}"
        hint = "" if label else "; Latin-1 or another 8-bit encoding?"
        raise ProfileError(f"not {label or 'UTF-8'} text: byte 0x{bad:02x} {where} "
                           f"({exc.reason}{hint}); save it as UTF-8", file=file) from None


#: libyaml's parser when PyYAML has it (ten times faster than the pure-Python
#: one); both are event state machines, so a scan of their events is safe at
#: any depth. Only composing recurses, which is why depth is checked first.
_SAFE_LOADER = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader


class _ProfileLoader(_SAFE_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader whose constructor turns a value Python cannot build (a
    5000-digit integer, the date 2024-13-45) into a YAML error with its line."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            reason = str(exc).split(";")[0]  # not Python's "use sys.set_int_max_str_digits()"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {clip(node.value, 40)}: {reason}",
                node.start_mark) from exc


def _scan(text: str, file: str) -> int:
    """Check nesting and size on the event stream, before anything is
    composed, and stop at the first event past a limit. Returns the number
    of aliases."""
    depth = values = aliases = 0
    for event in yaml.parse(text, Loader=_SAFE_LOADER):
        if isinstance(event, yaml.events.CollectionEndEvent):
            depth -= 1
            continue
        if not isinstance(event, yaml.events.NodeEvent):
            continue
        values += 1
        aliases += isinstance(event, yaml.events.AliasEvent)
        depth += isinstance(event, yaml.events.CollectionStartEvent)
        mark = event.start_mark
        where = f"at line {mark.line + 1}, column {mark.column + 1}"
        if depth > MAX_DEPTH:
            raise ProfileError(f"nested more than {MAX_DEPTH} levels deep ({where})", file=file)
        if values > MAX_VALUES:
            raise ProfileError(f"has more than {MAX_VALUES} values ({where}); a profile may "
                               f"have at most {MAX_VALUES}", file=file)
    return aliases


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node, aliases: int, file: str) -> None:
    """Refuse a document that, with its aliases expanded ("billion laughs"),
    has more than MAX_VALUES values or nests deeper than MAX_DEPTH, and an
    alias inside its own anchor. Works on the composed nodes, where an alias
    is one shared node, so the check stays small: each node is visited once."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    path: set[int] = set()  # nodes being visited: an alias to one of them is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finish = stack.pop()
        key = id(node)
        if finish:
            kids = [done[id(c)] for c in _children(node)]
            values = 1 + sum(v for v, _ in kids)
            depth = isinstance(node, yaml.CollectionNode) + max((d for _, d in kids), default=0)
            line = node.start_mark.line + 1
            if values > MAX_VALUES:
                raise ProfileError(f"expands to more than {MAX_VALUES} values through its "
                                   f"{aliases} alias(es) (the value at line {line}); a profile "
                                   f"may have at most {MAX_VALUES}", file=file)
            if depth > MAX_DEPTH:
                raise ProfileError(f"nested more than {MAX_DEPTH} levels deep once its aliases "
                                   f"are expanded (the value at line {line})", file=file)
            done[key] = (values, depth)
            path.discard(key)
        elif key in path:
            raise ProfileError(f"an alias refers to the value that contains it (anchored at "
                               f"line {node.start_mark.line + 1}); recursive aliases are not "
                               "allowed", file=file)
        elif key not in done:
            path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_KINDS = {"int": "an integer", "float": "a number", "bool": "true/false", "null": "null",
          "timestamp": "a date", "binary": "binary data"}


def _check_keys(root: yaml.Node, file: str) -> None:
    """Every mapping key is a string and given once. PyYAML keeps the last of
    two equal keys without a word; JSON (where plans are saved) has string
    keys only. ``<<`` merge keys are allowed, and later keys override them."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((c, (*where, str(i))) for i, c in enumerate(node.value))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
                stack.extend((m, where) for m in merged)
                continue
            line = key.start_mark.line + 1
            if not (isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG):
                kind = ("a list" if isinstance(key, yaml.SequenceNode) else "a mapping"
                        if isinstance(key, yaml.MappingNode)
                        else _KINDS.get(key.tag.rsplit(":", 1)[-1], key.tag))
                shown = clip(key.value, 40) if isinstance(key, yaml.ScalarNode) else kind
                raise ProfileError(f"the key {shown} at line {line} is read as {kind}, not "
                                   f"a string; quote it", file=file,
                                   key=".".join(where) or None)
            name = key.value
            if name in first:
                raise ProfileError(f"given twice, at lines {first[name].start_mark.line + 1} "
                                   f"and {line}; keep one", file=file,
                                   key=clip(".".join((*where, name)), 120))
            first[name] = key
            stack.append((value, (*where, name)))


def _parse(text: str, file: str) -> Any:
    """YAML text -> Python data, safely and within the limits above: events
    are scanned first, then composed into nodes, which are checked before
    any Python object is built."""
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - text.rfind("\n", 0, bad.start())
        raise ProfileError(f"not YAML text: character U+{ord(bad.group()):04X} at line {line}, "
                           f"column {column} is not allowed", file=file)
    aliases = _scan(text, file)
    loader = _ProfileLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if aliases:
            _check_expansion(node, aliases, file)
        _check_keys(node, file)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_document(path: Path, file: str) -> Any:
    """The YAML document in ``path`` as Python data (``None`` when empty),
    read within MAX_PROFILE_BYTES, MAX_DEPTH and MAX_VALUES; every YAML error
    becomes a one-line ProfileError with its line and column."""
    text = _read_text(path, file)
    try:
        return _parse(text, file)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc)
        if "nesting depth" in problem:
            # PyYAML >= 6.0.4 stops deep flow nesting ("[[[[...") in its
            # scanner, at its own limit (1000), before _scan sees an event:
            # past ours either way, so it is reported as ours.
            raise ProfileError(f"nested more than {MAX_DEPTH} levels deep ({where.strip()})",
                               file=file) from exc
        context, at = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and at:
            problem += f" ({context} at line {at.line + 1}, column {at.column + 1})"
        problem = " ".join(problem.split())  # PyYAML's own text has several lines
        raise ProfileError(f"invalid YAML{where}: {clip(problem, 200)}", file=file) from exc
