"""A plugin's options, defined once: its ``Options`` dataclass.

Each field is one option of the plugin's profile section
(``plugins: <name>: {...}``): the annotation is its type, the default its
default, and :func:`option` adds bounds, choices and a one-line help::

    @dataclass(frozen=True)
    class Options(PluginOptions):
        max_norm: float | None = option(None, "clip the global norm to this",
                                        above=0, null=True)

From that one definition come, with nothing written twice:

* the check of every profile's section, when profiles are loaded
  (:func:`option_schemas`: the JSON schemas the profile loader checks each
  installed plugin's section against, so a bad option names the file, the
  key and the reason in one line, for built-in and third-party plugins
  alike);
* the check of values built in code (``PluginOptions.__post_init__``);
* the documentation (:func:`options_table`, :func:`options_docs`);
* :func:`parse_options`'s error for a key the plugin does not know.

A plugin hands its ``Options`` to autotune through the ``autotune_options``
hook. Types read from annotations: ``bool``, ``int``, ``float``, ``str``,
``Literal[...]`` (choices), and ``tuple[int, int]`` (a list of two, e.g. a
``[min, max]`` range); ``None`` in a union is "not set" -- a profile may
write ``null`` only where the option says ``null=True``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Mapping, Sequence, TypeVar

from autotune.errors import ProfileError

T = TypeVar("T")

#: The key of ``dataclasses.field(metadata=...)`` that :func:`option` fills.
METADATA_KEY = "autotune"
#: JSON types of the Python types an option may have.
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
_SEQUENCES = (list, tuple, collections.abc.Sequence)


@dataclasses.dataclass(frozen=True)
class Declared:
    """What :func:`option` adds to a field: everything its type cannot say."""

    help: str = ""
    #: Smallest value allowed (``>=``); for a list, of each item.
    minimum: float | None = None
    #: Values must be greater than this (``>``).
    above: float | None = None
    #: The values allowed, when they are a fixed set.
    choices: tuple[Any, ...] | None = None
    #: A profile may write ``null`` (it means something: "off", "no limit").
    null: bool = False


def option(default: Any = None, help: str = "", *, minimum: float | None = None,
           above: float | None = None, choices: Sequence[Any] | None = None,
           null: bool = False) -> Any:
    """A field of a plugin's ``Options``: its default, a one-line ``help``,
    and what values a profile may give it."""
    declared = Declared(help, minimum, above, None if choices is None else tuple(choices), null)
    return dataclasses.field(default=default, metadata={METADATA_KEY: declared})


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option as the profile, the checks and the docs see it."""

    name: str
    default: Any
    help: str
    #: JSON types of a single value ("integer", ...); empty: any value.
    kinds: tuple[str, ...]
    null: bool
    minimum: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] | None = None
    #: A list of these JSON types is allowed too; ``length``: exactly that many.
    list_kinds: tuple[str, ...] = ()
    length: int | None = None


def _kinds(hint: Any) -> tuple[tuple[str, ...], tuple[str, ...], int | None, tuple[Any, ...]]:
    """An annotation -> (JSON types, list item types, list length, Literal choices)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds: list[str] = []
    items: tuple[str, ...] = ()
    length: int | None = None
    literal: tuple[Any, ...] = ()
    for arg in typing.get_args(hint) if union else (hint,):
        origin, args = typing.get_origin(arg), typing.get_args(arg)
        if arg is type(None):
            continue
        if arg in _JSON_TYPES:
            kinds.append(_JSON_TYPES[arg])
        elif origin is Literal:
            literal += args
        elif origin in _SEQUENCES and args and all(a in _JSON_TYPES for a in args if a is not ...):
            items = tuple(dict.fromkeys(_JSON_TYPES[a] for a in args if a is not ...))
            fixed = origin is tuple and ... not in args
            length = len(args) if fixed else None
        else:
            return (), (), None, ()  # a type a profile cannot spell: any value
    return tuple(kinds), items, length, literal


@functools.lru_cache(maxsize=None)
def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The options of an ``Options`` dataclass, in field order (read once
    per class: every instance's ``__post_init__`` asks)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"options must be a dataclass, got {cls!r}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # noqa: BLE001 - a name the annotations use is missing
        raise TypeError(f"{cls.__qualname__}: cannot read its annotations: {exc}") from exc
    specs = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get(METADATA_KEY, Declared())
        kinds, items, length, literal = _kinds(hints.get(f.name, Any))
        choices = declared.choices if declared.choices is not None else (literal or None)
        default = None if f.default is dataclasses.MISSING else f.default
        specs.append(OptionSpec(f.name, default, declared.help, kinds, declared.null,
                                declared.minimum, declared.above, choices, items, length))
    return tuple(specs)


# -- the profile's check ----------------------------------------------------------


def _bounded(schema: dict[str, Any], spec: OptionSpec) -> dict[str, Any]:
    if spec.minimum is not None:
        schema["minimum"] = spec.minimum
    if spec.above is not None:
        schema["exclusiveMinimum"] = spec.above
    return schema


def value_schema(spec: OptionSpec) -> dict[str, Any]:
    """The JSON schema a profile's value for ``spec`` must satisfy."""
    described = {"description": spec.help} if spec.help else {}
    if spec.choices is not None:
        allowed = [*spec.choices, *([None] if spec.null and None not in spec.choices else [])]
        return {"enum": allowed, **described}
    one: dict[str, Any] = {}
    if spec.kinds:
        kinds = [*spec.kinds, *(["null"] if spec.null else [])]
        one["type"] = kinds[0] if len(kinds) == 1 else kinds
    one = _bounded(one, spec)
    if not spec.list_kinds:
        return {**one, **described}
    item = _bounded({"type": spec.list_kinds[0] if len(spec.list_kinds) == 1
                     else list(spec.list_kinds)}, spec)
    many: dict[str, Any] = {"type": "array", "items": item, "minItems": spec.length or 1}
    if spec.length:
        many["maxItems"] = spec.length
    return {"oneOf": [one, many], **described} if spec.kinds else {**many, **described}


def option_schemas(classes: Mapping[str, type]) -> dict[str, dict[str, dict[str, Any]]]:
    """Plugin name -> {option: JSON schema}: what the profile loader checks
    each plugin's section against (``load_profiles(dirs, options=...)``)."""
    return {name: {s.name: value_schema(s) for s in option_specs(cls)}
            for name, cls in classes.items()}


def options_answer(answer: Any, asked: Any) -> type | None:
    """Check an ``autotune_options`` answer (``asked``: the manager's
    :class:`~autotune.plugin.answers.Asked`): a dataclass whose annotations
    can be read, or ``None`` (the plugin checks its section itself)."""
    if answer is None:
        return None
    if not (isinstance(answer, type) and dataclasses.is_dataclass(answer)):
        raise TypeError(f"{asked.hook} must return a dataclass (the plugin's Options) or "
                        f"None, got {answer!r}")
    option_specs(answer)  # its annotations must be readable
    return answer


# -- values built in code ---------------------------------------------------------


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def _value_error(spec: OptionSpec, value: Any) -> str | None:
    """Why ``value`` is not allowed for ``spec`` (bounds and choices), or None."""
    if value is None:
        return None  # not set: the plugin's rule decides
    if spec.choices is not None:
        return None if value in spec.choices else (
            f"{spec.name}={value!r} is not one of {', '.join(map(_shown, spec.choices))}")
    values = [value]
    if spec.list_kinds and isinstance(value, (list, tuple)):
        values = list(value)
        if spec.length and len(values) != spec.length:
            return f"{spec.name} must be a list of {spec.length}, got {value!r}"
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if spec.minimum is not None and item < spec.minimum:
            return f"{spec.name} must be >= {spec.minimum}, got {value!r}"
        if spec.above is not None and item <= spec.above:
            null = " or null" if spec.null else ""
            return f"{spec.name} must be > {spec.above}{null}, got {value!r}"
    return None


def check_values(options: Any) -> None:
    """Raise ValueError for a value of ``options`` out of its bounds or choices."""
    for spec in option_specs(type(options)):
        problem = _value_error(spec, getattr(options, spec.name))
        if problem:
            raise ValueError(problem)


class PluginOptions:
    """A base for a plugin's frozen ``Options`` dataclass: values built in
    code are checked against the fields' :func:`option` bounds and choices,
    as a profile's are when it is loaded."""

    def __post_init__(self) -> None:
        check_values(self)


def parse_options(plugin: str, cls: type[T], values: Mapping[str, Any]) -> T:
    """Build a plugin's frozen ``Options`` from profile values.

    An unknown key is an error that names the plugin and the known keys, so
    a typo in a profile is never silently ignored.
    """
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ProfileError(f"unknown option(s) {unknown} for plugin {plugin!r}; "
                           f"known options: {sorted(fields)}")
    return cls(**values)


# -- the documentation ------------------------------------------------------------


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return _shown(value)


def describe_values(spec: OptionSpec) -> str:
    """What a profile may write for ``spec``, in words: 'integer >= 1 or [a, b]'."""
    if spec.choices is not None:
        return "one of " + ", ".join(f"`{_yaml(c)}`" for c in spec.choices)
    words = {"integer": "integer", "number": "number", "string": "string",
             "boolean": "true/false"}
    bound = (f" >= {spec.minimum:g}" if spec.minimum is not None else "") + (
        f" > {spec.above:g}" if spec.above is not None else "")
    one = " or ".join(words[k] for k in spec.kinds) + bound if spec.kinds else "any value"
    if spec.list_kinds:
        item = " or ".join(words[k] for k in spec.list_kinds) + bound
        many = f"a list of {spec.length or 'any number'}"
        one = f"{one}, or {many} of them" if spec.kinds else f"{many} ({item})"
    return one + (", or `null`" if spec.null else "")


def options_table(cls: type) -> str:
    """``cls``'s options as a markdown table: key, values, default, meaning."""
    specs = option_specs(cls)
    if not specs:
        return "No options besides `enabled`.\n"
    rows = ["| option | values | default | meaning |", "| --- | --- | --- | --- |"]
    for s in specs:
        default = "—" if s.default is None and not s.null else f"`{_yaml(s.default)}`"
        rows.append(f"| `{s.name}` | {describe_values(s)} | {default} | {s.help} |")
    return "\n".join(rows) + "\n"


def options_docs(classes: Mapping[str, type], heading: str = "###") -> str:
    """One section per plugin (by name) with its :func:`options_table`."""
    return "\n".join(f"{heading} `{name}`\n\n{options_table(classes[name])}"
                     for name in sorted(classes))


# -- reading range options --------------------------------------------------------


def clamp_to(value: int, bounds: int | Sequence[int] | None) -> int:
    """Clamp ``value`` into a profile hint: an exact int or ``[min, max]``."""
    if bounds is None:
        return value
    if isinstance(bounds, int):
        return bounds
    lo, hi = bounds
    return max(lo, min(hi, value))


def describe_bounds(bounds: int | Sequence[int]) -> str:
    return str(bounds) if isinstance(bounds, int) else f"{bounds[0]}-{bounds[1]}"
