"""How a bridge turns a plan into a framework's options: a table of
:class:`Row`, one per planned setting, walked by :func:`options` (the
keyword arguments) and :func:`lines` (one line per planned change: applied,
or not and what to do instead).

A bridge is its table plus what is its framework's alone (a callback, a
check of the arguments it was given); adding an option to a bridge is one
row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from autotune.plan.knobs import PROCESS

__all__ = ["ANY_KEY", "Change", "Row", "callback_rows", "changes", "describe", "device_type",
           "generic_hint", "lines", "loader_row", "norm_type_row", "options", "planned_as",
           "report", "scaler_row", "tf32_call", "value_in"]


@dataclass(frozen=True)
class Change:
    """One planned setting whose value is not PyTorch's behaviour."""

    plugin: str
    key: str
    value: Any
    #: What PyTorch does without autotune (the plugin's knob ``off``).
    off: Any = None

    @property
    def name(self) -> str:
        return f"{self.plugin}.{self.key}"

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}"


def changes(tuned: Any) -> list[Change]:
    """The settings of ``tuned.plan`` that differ from PyTorch's behaviour,
    in plan order: a bridge applies these or says it cannot.

    "PyTorch's behaviour" is each plugin's own declaration (its knobs'
    ``off``; for loader settings, the loader the user gave
    ``autotune.apply``). Settings of a whole process (cross-validation's
    fold schedule) are not a trainer's business and are left out. A key
    without a knob counts as a change when its value is set (not None or
    False)."""
    plan = tuned.plan
    try:
        knobs = tuned.manager.knobs(tuned.context, plan)
    except Exception:  # noqa: BLE001 - a plan without its manager still bridges
        knobs = {}
    out: list[Change] = []
    for plugin, key, setting in plan.rows():
        knob = knobs.get(plugin, {}).get(key)
        if knob is None:
            if setting.value not in (None, False):
                out.append(Change(plugin, key, setting.value))
            continue
        if knob.phase == PROCESS or setting.value == knob.off:
            continue
        out.append(Change(plugin, key, setting.value, knob.off))
    return out


def device_type(tuned: Any) -> str | None:
    """``"cpu"``, ``"cuda"``...: the device ``autotune.apply`` planned for
    (None when unknown)."""
    device = getattr(tuned, "device", None)
    return getattr(device, "type", None)


def describe(change: Change, how: str) -> str:
    """One line: the setting, then what happens to it."""
    return f"{change}: {how}"


def report(log: logging.Logger, applied: Iterable[str], unsupported: Iterable[str]) -> None:
    """One INFO line per applied setting, one WARNING line per setting not applied."""
    for line in applied:
        log.info("%s", line)
    for line in unsupported:
        log.warning("%s", line)


def generic_hint(change: Change, trainer: str) -> str:
    """The line for a setting no row covers (a third-party plugin's)."""
    return describe(change, f"applied by autotune's own engine (tuned.engine); {trainer} has no "
                            "equivalent, so it is not applied")


# -- the table -------------------------------------------------------------------

#: A line's text: a ``str.format`` template (fields ``{value}``, ``{key}``
#: and ``{options}``, the options the row sets as ``k=v, ...``), or
#: ``text(change, tuned)`` where more than the value is needed.
Text = Union[str, Callable[[Change, Any], str]]
#: Whether the framework takes this change: ``takes(change, tuned)``.
Takes = Callable[[Change, Any], bool]

#: ``Row.key`` for every key of the plugin that has no row of its own.
ANY_KEY = "*"


@dataclass(frozen=True)
class Row:
    """How one planned setting, ``plugin.key``, reaches a framework.

    ``options(value, tuned)`` gives the framework's options for the planned
    value (None where the plan has none): it is asked for every plan, so an
    option the framework is always given (``precision="32-true"``) comes
    from the plan's default too; ``{}`` sets nothing. ``says`` is the line
    when the framework takes the setting (default: the options it sets),
    ``instead`` the line when it cannot, saying what to do instead.
    ``takes`` decides between them; without it, a row with an ``instead``
    never takes the setting and one without always does. Where the chosen
    line is missing, the setting gets :func:`generic_hint`'s line.

    A row whose ``key`` is :data:`ANY_KEY` covers the plugin's keys that
    have no row of their own, for their lines only: it sets no option."""

    plugin: str
    key: str
    options: Callable[[Any, Any], Mapping[str, Any]] | None = None
    says: Text | None = None
    instead: Text | None = None
    takes: Takes | None = None


def options(table: Sequence[Row], tuned: Any) -> dict[str, Any]:
    """The framework's keyword arguments for ``tuned.plan``, in table order."""
    out: dict[str, Any] = {}
    for row in table:
        if row.options is not None and row.key != ANY_KEY:
            out.update(row.options(tuned.plan.get(row.plugin, row.key), tuned))
    return out


def lines(table: Sequence[Row], tuned: Any, framework: str) -> tuple[list[str], list[str]]:
    """``(applied, unsupported)``: one line per planned change, in plan
    order, sorted by whether its row says ``framework`` takes it."""
    rows = {(row.plugin, row.key): row for row in table}
    applied: list[str] = []
    missing: list[str] = []
    for change in changes(tuned):
        row = rows.get((change.plugin, change.key)) or rows.get((change.plugin, ANY_KEY))
        ok, text = _line(row, change, tuned, framework)
        (applied if ok else missing).append(text)
    return applied, missing


def _line(row: Row | None, change: Change, tuned: Any, framework: str) -> tuple[bool, str]:
    if row is None:
        return False, generic_hint(change, framework)
    ok = row.takes(change, tuned) if row.takes is not None else row.instead is None
    text = row.says if ok else row.instead
    if ok and text is None and row.options is not None:
        text = "{options}"
    if text is None:
        return False, generic_hint(change, framework)
    if callable(text):
        return ok, describe(change, text(change, tuned))
    fields = {"value": change.value, "key": change.key}
    if "{options}" in text:  # only then: some options import their framework
        fields["options"] = ", ".join(f"{name}={value!r}" for name, value
                                      in row.options(change.value, tuned).items())
    return ok, describe(change, text.format(**fields))


# -- rows and tests more than one bridge's table has --------------------------------


def planned_as(plugin: str, key: str, *values: Any) -> Takes:
    """Takes the change when the plan's ``plugin.key`` is one of ``values``."""
    return lambda change, tuned: tuned.plan.get(plugin, key) in values


def value_in(values: Iterable[Any]) -> Takes:
    """Takes the change when its value is one of ``values``."""
    known = tuple(values)
    return lambda change, tuned: change.value in known


#: The thread counts and channels_last: what a callback (no trainer option) applies.
RUNTIME_KEYS = (("threads", "intra_op"), ("threads", "inter_op"), ("threads", "set_env"),
                ("channels_last", "enabled"))


def norm_type_row(instead: Text) -> Row:
    """``clipping.norm_type``: nothing to apply without a ``max_norm``, else
    ``instead`` (no bridge's framework takes a norm other than 2)."""
    return Row("clipping", "norm_type", says="no norm clipping planned: nothing to apply",
               instead=instead, takes=planned_as("clipping", "max_norm", None))


def scaler_row(option: str, framework: str) -> Row:
    """``mixed_precision.grad_scaler``: the framework's own GradScaler comes
    with its fp16 ``option``, and only with it."""
    return Row("mixed_precision", "grad_scaler", says=f"{option} brings {framework}'s GradScaler",
               instead=f"{framework} scales the loss only with {option}; not applied",
               takes=planned_as("mixed_precision", "dtype", "fp16"))


def callback_rows(callback: str) -> tuple[Row, ...]:
    """The rows of what ``callback`` applies while the framework runs."""
    return tuple(Row(plugin, key, says=f"applied by {callback}") for plugin, key in RUNTIME_KEYS)


def loader_row(kept: str) -> Row:
    """A loader setting, in ``tuned.loader`` when ``autotune.apply`` rebuilt
    one (``kept``: how the framework keeps it), else stated."""
    def says(change: Change, tuned: Any) -> str:
        value = getattr(tuned.loader, change.key, change.value)
        return f"in tuned.loader ({change.key}={value!r}){kept}"

    return Row("dataloader", ANY_KEY, says=says,
               instead="autotune.apply had no DataLoader to rebuild; build yours with "
                       "{key}={value!r}",
               takes=lambda change, tuned: tuned.loader is not None)


def tf32_call(change: Change, when: str) -> str:
    """What to call instead of a TF32 option the framework lacks."""
    precision = "high" if change.value else "highest"
    return f"call torch.set_float32_matmul_precision({precision!r}) before {when}"
