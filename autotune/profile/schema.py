"""What a profile file may say: the envelope schema, and each plugin's section.

``profiles/profile.schema.json`` checks the envelope only: ``name``,
``description``, ``extends``, ``priority``, the ``match`` rules, and that each
``plugins.<name>`` section is a mapping whose ``enabled`` is true/false.
What else a section may hold is the plugin's: the plugin layer, which knows
the installed plugins, hands :func:`validate` each one's options as JSON
schemas (made from its ``Options`` dataclass), and they are checked here
with the envelope, in one pass, so that every error reads the same way.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from autotune.errors import ProfileError
from autotune.profile.messages import SHORT, clip

#: plugin name -> {option name: JSON schema of its value}: what each plugin's
#: section may hold besides ``enabled``.
PluginOptions = Mapping[str, Mapping[str, Mapping[str, Any]]]


def schema_path() -> Path:
    return Path(str(resources.files("autotune.profiles"))) / "profile.schema.json"


@functools.lru_cache(maxsize=1)
def _envelope_text() -> str:
    return schema_path().read_text()


def section_schema(options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The schema of one plugin's section: ``enabled`` (as the envelope says)
    and the plugin's ``options``, nothing else."""
    free_form = json.loads(_envelope_text())["properties"]["plugins"]["additionalProperties"]
    return {**free_form, "additionalProperties": False,
            "properties": {**free_form["properties"], **copy.deepcopy(dict(options))}}


def profile_schema(options: PluginOptions | None = None) -> dict[str, Any]:
    """The whole schema a profile is checked against: the envelope, and a
    closed section for each plugin in ``options`` (any other plugin's
    section is free-form)."""
    schema = json.loads(_envelope_text())
    if options:
        schema["properties"]["plugins"]["properties"] = {
            name: section_schema(values) for name, values in sorted(options.items())}
    return schema


@functools.lru_cache(maxsize=8)
def _validator(options_json: str) -> Any:
    import jsonschema  # only when a profile is loaded: `autotune --version` stays fast

    return jsonschema.Draft202012Validator(profile_schema(json.loads(options_json)))


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


def validate(data: Any, file: str, options: PluginOptions | None = None) -> None:
    """Raise :class:`ProfileError` naming file, key and reason for the first
    violation (the one nearest the top of the document) of the envelope or,
    for each plugin in ``options``, of that plugin's section."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"a profile must be a mapping, got {type(data).__name__}", file=file)
    validator = _validator(json.dumps(options or {}, sort_keys=True))
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), e.message))
    if not errors:
        return
    err = _explain_error(errors[0])
    key = ".".join(str(p) for p in err.absolute_path) or None
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            key = clip(".".join([*(str(p) for p in err.absolute_path), str(extra[0])]), 120)
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            raise ProfileError(f"unknown key; allowed here: {allowed}", file=file, key=key)
    if err.validator == "oneOf":
        expected = " or ".join(_describe(b) for b in err.schema["oneOf"])
        raise ProfileError(f"{SHORT.repr(err.instance)} is not valid; expected {expected}",
                           file=file, key=key)
    # jsonschema repeats the whole value; a long one is shortened.
    message = err.message.replace(repr(err.instance), SHORT.repr(err.instance), 1)
    raise ProfileError(clip(message, 300), file=file, key=key)
