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

import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from autotune.errors import ProfileError
from autotune.hardware import Hardware

log = logging.getLogger("autotune.profile")

PROFILE_PATH_ENV = "AUTOTUNE_PROFILE_PATH"
#: Keys inside ``plugins.<name>`` that are not plugin options.
RESERVED_PLUGIN_KEYS = ("enabled",)


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
            key = ".".join([*(str(p) for p in err.absolute_path), str(extra[0])])
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            raise ProfileError(f"unknown key; allowed here: {allowed}", file=file, key=key)
    if err.validator == "oneOf":
        expected = " or ".join(_describe(b) for b in err.schema["oneOf"])
        raise ProfileError(f"{err.instance!r} is not valid; expected {expected}",
                           file=file, key=key)
    raise ProfileError(err.message, file=file, key=key)


def load_file(path: Path, origin: str = "user") -> Profile:
    """Load and validate one profile file (YAML, loaded safely)."""
    file = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read: {exc.strerror}", file=file) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(f"invalid YAML{where}: {problem}", file=file) from exc
    validate(data, file)
    if data["name"] != path.stem:
        raise ProfileError(f"name {data['name']!r} differs from the file name {path.stem!r}; "
                           "make them equal so 'extends' and --profile can find it",
                           file=file, key="name")
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


def profile_dirs(extra: Iterable[str | os.PathLike[str]] = ()) -> list[tuple[Path, str]]:
    """Search path, lowest precedence first: built-ins, then
    ``$AUTOTUNE_PROFILE_PATH`` (``os.pathsep``-separated), then ``extra``
    (the CLI's ``--profile-dir``). A later directory overrides a profile of
    the same name from an earlier one."""
    dirs = [(builtin_profile_dir(), "builtin")]
    env = os.environ.get(PROFILE_PATH_ENV, "")
    dirs += [(Path(p), "user") for p in env.split(os.pathsep) if p]
    for p in extra:
        # A directory named explicitly (--profile-dir) must exist; a stale
        # entry in the environment variable only warns (see load_profiles).
        if not Path(p).is_dir():
            raise ProfileError(f"profile directory {str(p)!r} does not exist")
        dirs.append((Path(p), "user"))
    return dirs


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
    """Every profile on the search path, ``extends`` resolved, by name."""
    raw: dict[str, Profile] = {}
    for directory, origin in profile_dirs(extra_dirs):
        if not directory.is_dir():
            if origin == "user":
                log.warning("profile directory %s does not exist; skipped", directory)
            continue
        for path in sorted(directory.glob("*.y*ml")):
            profile = load_file(path, origin)
            if profile.name in raw:
                log.info("profile %s from %s overrides %s", profile.name, path,
                         raw[profile.name].path)
            raw[profile.name] = profile
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
