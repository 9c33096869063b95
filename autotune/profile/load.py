"""Profiles found on the search path, read, checked and ``extends`` merged.

The search path, lowest precedence first: the built-ins (the data package
``autotune.profiles``), ``$AUTOTUNE_PROFILE_PATH``, then directories named
by the caller (the CLI's ``--profile-dir``).
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

from autotune.errors import ProfileError
from autotune.profile.messages import clip
from autotune.profile.model import Profile, merge
from autotune.profile.schema import PluginOptions, validate
from autotune.profile.yaml_safe import read_document

log = logging.getLogger("autotune.profile")

PROFILE_PATH_ENV = "AUTOTUNE_PROFILE_PATH"


def builtin_profile_dir() -> Path:
    return Path(str(resources.files("autotune.profiles")))


def load_file(path: Path, origin: str = "user", options: PluginOptions | None = None) -> Profile:
    """Load and validate one profile file (YAML, loaded safely, within
    MAX_PROFILE_BYTES, MAX_DEPTH and MAX_VALUES). ``options`` (plugin name
    -> its options' JSON schemas, from the plugin layer) closes those
    plugins' sections to what they accept; other sections are free-form."""
    file = str(path)
    data = read_document(path, file)
    validate(data, file, options)
    if data["name"] != path.stem:
        raise ProfileError(f"name {clip(data['name'])!r} differs from the file name "
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
        merged = base if merged is None else merge(merged, base)
    result = profile if merged is None else merge(merged, profile)
    resolved[name] = result
    return result


def load_profiles(extra_dirs: Iterable[str | os.PathLike[str]] = (),
                  options: PluginOptions | None = None) -> dict[str, Profile]:
    """Every profile on the search path, ``extends`` resolved, by name; each
    file checked as :func:`load_file` says (``options``: what the installed
    plugins accept in their sections).

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
            profile = load_file(path, origin, options)
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
