"""Hardware profiles: YAML data that says which machines they fit and what
each plugin should prefer there.

A profile file::

    name: rtx5080_7950x
    description: RTX 5080 16 GB + Ryzen 9 7950X
    extends: generic_cuda          # optional; merged first, this file wins
    priority: 0                    # optional tie-breaker between equal matches
    match:                         # every rule must hold
      gpu_name: "RTX 5080"
      cpu_brand: "7950X"
    plugins:
      dataloader: {num_workers: [10, 18], prefetch_factor: [6, 8]}
      compile: {enabled: false}    # loaded, proposes nothing

Matching follows Linux tuned's ``recommend``: every rule of a profile must
hold; among the profiles that match, the one with the most rules (after
``extends`` merging) wins, then the higher ``priority``, then the name. Each
profile's verdict is explained rule by rule.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import reprlib
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from autotune.errors import ProfileError
from autotune.machine.hardware import Hardware

log = logging.getLogger("autotune.profile")

PROFILE_PATH_ENV = "AUTOTUNE_PROFILE_PATH"
#: Keys inside ``plugins.<name>`` that are not plugin options.
RESERVED_PLUGIN_KEYS = ("enabled",)

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


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    match: Mapping[str, Any] = field(default_factory=dict)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    priority: int = 0
    extends: tuple[str, ...] = ()
    #: The file it came from ("" for a profile built in code).
    path: str = ""
    #: "builtin" or "user".
    origin: str = "builtin"

    @property
    def specificity(self) -> int:
        return len(self.match)

    def is_enabled(self, plugin: str) -> bool:
        return bool(self.plugins.get(plugin, {}).get("enabled", True))

    def options_for(self, plugin: str) -> dict[str, Any]:
        section = self.plugins.get(plugin, {})
        return {k: v for k, v in section.items() if k not in RESERVED_PLUGIN_KEYS}


# ---------------------------------------------------------------------------
# match rules: name -> (what the hardware has, how the rule's value compares)
# ---------------------------------------------------------------------------


def _contains_any(actual: str, wanted: Any) -> bool:
    options = wanted if isinstance(wanted, list) else [wanted]
    return any(str(w).lower() in actual.lower() for w in options)


def _in_range(actual: float, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        lo, hi = wanted.get("min"), wanted.get("max")
        return (lo is None or actual >= lo) and (hi is None or actual <= hi)
    return actual == wanted


def _gpu_values(hw: Hardware, attr: Callable[[Any], Any]) -> list[Any]:
    return [attr(g) for g in hw.gpus]


def _any_gpu(hw: Hardware, attr: Callable[[Any], Any], test: Callable[[Any, Any], bool],
             wanted: Any) -> bool:
    return any(test(v, wanted) for v in _gpu_values(hw, attr))


_cc = lambda g: float(f"{g.compute_capability[0]}.{g.compute_capability[1]}")  # noqa: E731

#: rule -> (describe actual value, test)
MATCH_RULES: dict[str, tuple[Callable[[Hardware], Any], Callable[[Hardware, Any], bool]]] = {
    "cuda": (lambda hw: hw.has_cuda, lambda hw, w: hw.has_cuda == bool(w)),
    "gpu_count": (lambda hw: len(hw.gpus), lambda hw, w: _in_range(len(hw.gpus), w)),
    "gpu_name": (lambda hw: [g.name for g in hw.gpus],
                 lambda hw, w: _any_gpu(hw, lambda g: g.name, _contains_any, w)),
    "gpu_memory_gb": (lambda hw: [round(g.memory_gb, 1) for g in hw.gpus],
                      lambda hw, w: _any_gpu(hw, lambda g: g.memory_gb, _in_range, w)),
    "compute_capability": (lambda hw: [_cc(g) for g in hw.gpus],
                           lambda hw, w: _any_gpu(hw, _cc, _in_range, w)),
    "cpu_vendor": (lambda hw: hw.cpu.vendor, lambda hw, w: _contains_any(hw.cpu.vendor, w)),
    "cpu_brand": (lambda hw: hw.cpu.brand, lambda hw, w: _contains_any(hw.cpu.brand, w)),
    "cpu_flags": (lambda hw: list(hw.cpu.flags),
                  lambda hw, w: all(f in hw.cpu.flags for f in (w if isinstance(w, list) else [w]))),
    "physical_cores": (lambda hw: hw.cpu.physical_cores,
                       lambda hw, w: _in_range(hw.cpu.physical_cores, w)),
    "logical_cores": (lambda hw: hw.cpu.logical_cores,
                      lambda hw, w: _in_range(hw.cpu.logical_cores, w)),
    "memory_gb": (lambda hw: round(hw.memory.total_gb, 1),
                  lambda hw, w: _in_range(hw.memory.total_gb, w)),
    "arch": (lambda hw: hw.cpu.arch, lambda hw, w: _contains_any(hw.cpu.arch, w)),
    "os": (lambda hw: hw.os, lambda hw, w: _contains_any(hw.os, w)),
}


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    wanted: Any
    actual: Any
    ok: bool

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        return f"{self.rule}: wanted {self.wanted!r}, have {self.actual!r} ({mark})"


@dataclass(frozen=True)
class MatchResult:
    profile: Profile
    verdicts: tuple[RuleVerdict, ...]

    @property
    def matched(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def reason(self) -> str:
        if not self.verdicts:
            return "no match rules: fallback for any machine"
        if self.matched:
            return "all rules hold: " + "; ".join(str(v) for v in self.verdicts)
        return "; ".join(str(v) for v in self.verdicts if not v.ok)


@dataclass(frozen=True)
class Recommendation:
    """The chosen profile and every profile's verdict, best first."""

    profile: Profile
    results: tuple[MatchResult, ...]
    #: Set when the profile was chosen by name (``profile=``, ``--profile``)
    #: instead of by matching; says by what.
    forced_by: str = ""

    def result_for(self, name: str) -> MatchResult | None:
        return next((r for r in self.results if r.profile.name == name), None)

    def rejected(self) -> tuple[MatchResult, ...]:
        """The profiles that do not fit this machine, each with its failed rules."""
        return tuple(r for r in self.results if not r.matched)

    @property
    def why(self) -> str:
        chosen = self.result_for(self.profile.name)
        if self.forced_by:
            fit = ("its rules hold" if chosen is None or chosen.matched
                   else f"although it does not match: {chosen.reason}")
            return f"chosen by {self.forced_by}; {fit}"
        assert chosen is not None
        others = [r for r in self.results if r.matched and r.profile.name != self.profile.name]
        if not chosen.verdicts:
            return ("no more specific profile matches this machine, and this one has no "
                    "match rules: the fallback for any machine")
        text = chosen.reason
        if others:
            rules = chosen.profile.specificity
            text += (f"; most specific of {len(others) + 1} matching profiles "
                     f"({rules} rule{'s' * (rules != 1)})")
        return text


def explain(profile: Profile, hardware: Hardware) -> MatchResult:
    verdicts = []
    for rule, wanted in profile.match.items():
        describe, test = MATCH_RULES[rule]
        verdicts.append(RuleVerdict(rule, wanted, describe(hardware), bool(test(hardware, wanted))))
    return MatchResult(profile, tuple(verdicts))


def recommend(hardware: Hardware, profiles: Iterable[Profile]) -> Recommendation:
    results = [explain(p, hardware) for p in profiles]
    results.sort(key=lambda r: (not r.matched, -r.profile.specificity,
                                -r.profile.priority, r.profile.name))
    if not results or not results[0].matched:
        raise ProfileError("no profile matches this machine and no fallback profile "
                           "(one with no match rules) is installed")
    return Recommendation(results[0].profile, tuple(results))


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def builtin_profile_dir() -> Path:
    return Path(str(resources.files("autotune.profiles")))


def schema_path() -> Path:
    return builtin_profile_dir() / "profile.schema.json"


_SCHEMA: dict[str, Any] | None = None


def _validator() -> Any:
    global _SCHEMA
    import jsonschema

    if _SCHEMA is None:
        _SCHEMA = json.loads(schema_path().read_text())
    return jsonschema.Draft202012Validator(_SCHEMA)


def _describe(schema: Mapping[str, Any]) -> str:
    """A schema branch in words: 'an integer >= 0', 'a list of 2 integers'."""
    kinds = schema.get("type", "value")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = {"integer": "an integer", "number": "a number", "string": "a string",
             "boolean": "true/false", "null": "null", "object": "a mapping",
             "array": "a list"}
    text = " or ".join(words.get(k, k) for k in kinds)
    if "minimum" in schema:
        text += f" >= {schema['minimum']}"
    if "exclusiveMinimum" in schema:
        text += f" > {schema['exclusiveMinimum']}"
    if "array" in kinds and schema.get("minItems") == schema.get("maxItems") is not None:
        text = f"a list of {schema['minItems']} ({_describe(schema.get('items', {}))})"
    if "object" in kinds and schema.get("properties"):
        text += " with keys " + "/".join(schema["properties"])
    if "enum" in schema:
        text = "one of " + ", ".join(map(str, schema["enum"]))
    return text


def _explain_error(err: Any) -> Any:
    """For a ``oneOf`` failure, the error inside the branch whose type fits
    (``{min: big}`` -> ``min: 'big' is not a number``); else the error itself."""
    if err.validator == "oneOf" and err.context:
        typed = [e for e in err.context if e.validator != "type" or e.relative_path]
        if typed:
            return _explain_error(min(typed, key=lambda e: -len(e.absolute_path)))
    return err


def validate(data: Any, file: str) -> None:
    """Raise :class:`ProfileError` naming file, key and reason for the first
    schema violation (the one nearest the top of the document)."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"a profile must be a mapping, got {type(data).__name__}", file=file)
    errors = sorted(_validator().iter_errors(data), key=lambda e: (len(e.absolute_path), e.message))
    if not errors:
        return
    err = _explain_error(errors[0])
    key = ".".join(str(p) for p in err.absolute_path) or None
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            key = _clip(".".join([*(str(p) for p in err.absolute_path), str(extra[0])]), 120)
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            raise ProfileError(f"unknown key; allowed here: {allowed}", file=file, key=key)
    if err.validator == "oneOf":
        expected = " or ".join(_describe(b) for b in err.schema["oneOf"])
        raise ProfileError(f"{_REPR.repr(err.instance)} is not valid; expected {expected}",
                           file=file, key=key)
    # jsonschema repeats the whole value; a long one is shortened.
    message = err.message.replace(repr(err.instance), _REPR.repr(err.instance), 1)
    raise ProfileError(_clip(message, 300), file=file, key=key)


#: Shows a long value as its start: "[1, 1, 1, 1, 1, 1, ...]".
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _clip(value: Any, limit: int = 80) -> str:
    """A value or key as it may appear in a one-line message: short, escaped."""
    text = value if isinstance(value, str) else _REPR.repr(value)
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
                None, None, f"cannot read {_clip(node.value, 40)}: {reason}",
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
                shown = _clip(key.value, 40) if isinstance(key, yaml.ScalarNode) else kind
                raise ProfileError(f"the key {shown} at line {line} is read as {kind}, not "
                                   f"a string; quote it", file=file,
                                   key=".".join(where) or None)
            name = key.value
            if name in first:
                raise ProfileError(f"given twice, at lines {first[name].start_mark.line + 1} "
                                   f"and {line}; keep one", file=file,
                                   key=_clip(".".join((*where, name)), 120))
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


def load_file(path: Path, origin: str = "user") -> Profile:
    """Load and validate one profile file (YAML, loaded safely, within
    MAX_PROFILE_BYTES, MAX_DEPTH and MAX_VALUES)."""
    file = str(path)
    text = _read_text(path, file)
    try:
        data = _parse(text, file)
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
        raise ProfileError(f"invalid YAML{where}: {_clip(problem, 200)}", file=file) from exc
    validate(data, file)
    if data["name"] != path.stem:
        raise ProfileError(f"name {_clip(data['name'])!r} differs from the file name "
                           f"{path.stem!r}; make them equal so 'extends' and --profile can "
                           "find it", file=file, key="name")
    extends = data.get("extends", ())
    return Profile(
        name=data["name"],
        description=data.get("description", ""),
        match=dict(data.get("match") or {}),
        plugins={k: dict(v or {}) for k, v in (data.get("plugins") or {}).items()},
        priority=int(data.get("priority", 0)),
        extends=tuple([extends] if isinstance(extends, str) else extends),
        path=file,
        origin=origin,
    )


def _search_path(extra: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, str, str]]:
    """(directory, origin, level), lowest precedence first; see profile_dirs."""
    dirs = [(builtin_profile_dir(), "builtin", "built-in")]
    env = os.environ.get(PROFILE_PATH_ENV, "")
    dirs += [(Path(p), "user", f"${PROFILE_PATH_ENV}") for p in env.split(os.pathsep) if p]
    for p in extra:
        # A directory named explicitly (--profile-dir) must exist; a stale
        # entry in the environment variable only warns (see load_profiles).
        if not Path(p).is_dir():
            raise ProfileError(f"profile directory {str(p)!r} does not exist")
        dirs.append((Path(p), "user", "--profile-dir"))
    return dirs


def profile_dirs(extra: Iterable[str | os.PathLike[str]] = ()) -> list[tuple[Path, str]]:
    """Search path, lowest precedence first: built-ins, then
    ``$AUTOTUNE_PROFILE_PATH`` (``os.pathsep``-separated), then ``extra``
    (the CLI's ``--profile-dir``). A later directory overrides a profile of
    the same name from an earlier one."""
    return [(path, origin) for path, origin, _ in _search_path(extra)]


def _merge(base: Profile, child: Profile) -> Profile:
    plugins = {k: dict(v) for k, v in base.plugins.items()}
    for name, section in child.plugins.items():
        plugins.setdefault(name, {}).update(section)
    return Profile(name=child.name, description=child.description or base.description,
                   match={**base.match, **child.match}, plugins=plugins,
                   priority=child.priority, extends=child.extends, path=child.path,
                   origin=child.origin)


def _resolve(name: str, raw: Mapping[str, Profile], resolved: dict[str, Profile],
             chain: tuple[str, ...]) -> Profile:
    if name in resolved:
        return resolved[name]
    profile = raw[name]
    merged: Profile | None = None
    for parent in profile.extends:
        if parent in chain or parent == name:
            raise ProfileError(f"circular extends: {' -> '.join((*chain, name, parent))}",
                               file=profile.path, key="extends")
        if parent not in raw:
            raise ProfileError(f"extends unknown profile {parent!r}; known: "
                               f"{', '.join(sorted(raw))}", file=profile.path, key="extends")
        base = _resolve(parent, raw, resolved, (*chain, name))
        merged = base if merged is None else _merge(merged, base)
    result = profile if merged is None else _merge(merged, profile)
    resolved[name] = result
    return result


def load_profiles(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> dict[str, Profile]:
    """Every profile on the search path, ``extends`` resolved, by name.

    A profile from a later level of the search path (built-ins, then
    ``$AUTOTUNE_PROFILE_PATH``, then ``extra_dirs``) replaces one of the same
    name from an earlier level. Two files of one name on the same level (one
    directory, or two directories of the environment variable or of
    ``extra_dirs``) are an error: neither has precedence. A directory listed
    twice is read once."""
    raw: dict[str, Profile] = {}
    level_of: dict[str, str] = {}
    seen_dirs: set[Path] = set()
    for directory, origin, level in _search_path(extra_dirs):
        if not directory.is_dir():
            if origin == "user":
                log.warning("profile directory %s does not exist; skipped", directory)
            continue
        if directory.resolve() in seen_dirs:
            continue
        seen_dirs.add(directory.resolve())
        for path in sorted(directory.glob("*.y*ml")):
            profile = load_file(path, origin)
            previous = raw.get(profile.name)
            if previous is not None and level_of[profile.name] == level:
                raise ProfileError(f"profile {profile.name!r} is also defined by "
                                   f"{previous.path}, at the same precedence ({level}), so "
                                   "neither can win; remove or rename one",
                                   file=profile.path, key="name")
            if previous is not None:
                log.info("profile %s from %s overrides %s", profile.name, path, previous.path)
            raw[profile.name] = profile
            level_of[profile.name] = level
    resolved: dict[str, Profile] = {}
    for name in raw:
        _resolve(name, raw, resolved, ())
    return resolved


def get_profile(name: str, profiles: Mapping[str, Profile]) -> Profile:
    try:
        return profiles[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; known profiles: "
                           f"{', '.join(sorted(profiles))}") from None
