"""The checks of plugins' answers: one function per kind of answer.

A hook's specification names its check (``@checked_by(answers.settings)``,
see :mod:`autotune.plugin.markers`); the manager's generic calls run it on
every plugin's answer. A check returns the answer as the caller gets it
(``None``: no answer, the plugin said nothing) or raises ``TypeError`` /
``ValueError`` for a malformed one, and the manager then counts the plugin
as failed, named with the reason. Each check sees one :class:`Asked`: which
hook, whose answer, and the plan the answer is about.

Plans and hardware facts are saved as JSON, so every value a plugin
proposes must be plain JSON data (:func:`check_json`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from autotune.plan.knobs import Knob
from autotune.plan.plan import Plan
from autotune.plan.resources import FoldPlan, Share
from autotune.plan.setting import Setting, Source

#: The longest plugin failure message; the rest is cut (the CLI prints one line).
MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Asked:
    """What a check knows about the answer in front of it."""

    #: The hook answered (``"autotune_configure"``).
    hook: str
    #: The plugin that answered.
    plugin: str
    #: The plan the answer is about (the hook's ``plan`` argument, or the
    #: plan the caller named): a plugin may only answer for keys it proposed.
    plan: Plan | None = None

    def proposed(self) -> set[str]:
        """The keys this plugin proposed in :attr:`plan`."""
        return set(self.plan.values(self.plugin)) if self.plan is not None else set()


#: ``check(answer, asked) -> answer or None``; raises for a malformed answer.
Check = Callable[[Any, Asked], Any]


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message as one line: lines joined with "; ", runs of whitespace
    collapsed, cut to ``limit`` characters. pluggy's PluginValidationError
    and many exceptions span several lines; a warning or error the CLI prints
    must not."""
    lines = (" ".join(line.split()) for line in str(text).splitlines())
    folded = "; ".join(line for line in lines if line)
    return folded if len(folded) <= limit else folded[:limit - 3].rstrip() + "..."


def check_json(value: Any, what: str) -> None:
    """Plans and hardware facts are saved as JSON; refuse what would not
    round-trip (a tuple comes back as a list, a dtype not at all)."""
    try:
        if json.loads(json.dumps(value)) != value:
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be plain JSON data (str, int, float, bool, None, "
                        f"list, dict with str keys), got {value!r}") from None


# -- planning ---------------------------------------------------------------------------


def facts(answer: Any, asked: Asked) -> Mapping[str, Any] | None:
    """Hardware facts (``autotune_detect``): a JSON mapping."""
    if not answer:
        return None
    if not isinstance(answer, Mapping):
        raise TypeError(f"{asked.hook} must return a mapping of facts, "
                        f"got {type(answer).__name__}")
    check_json(dict(answer), f"{asked.hook} facts")
    return answer


def settings(answer: Any, asked: Asked) -> dict[str, Setting] | None:
    """``{key: Setting}`` (a bare value becomes a default setting)."""
    if not answer:
        return None
    if not isinstance(answer, Mapping):
        raise TypeError(f"{asked.hook} must return a mapping of key -> Setting, "
                        f"got {type(answer).__name__}")
    out = {}
    for key, value in answer.items():
        setting = value if isinstance(value, Setting) else Setting(
            value, Source.DEFAULT, f"proposed by {asked.plugin}")
        check_json(setting.value, f"{asked.plugin}.{key}")
        out[str(key)] = setting
    return out


def own_settings(answer: Any, asked: Asked) -> dict[str, Setting] | None:
    """:func:`settings`, for keys the plugin proposed in the plan only: a
    hook that changes a plugin's own settings may not add new ones."""
    checked = settings(answer, asked)
    if checked is None:
        return None
    unknown = sorted(set(checked) - asked.proposed())
    if unknown:
        raise TypeError(f"{asked.hook} set key(s) {unknown} that {asked.plugin} did not propose")
    return checked


def knobs(answer: Any, asked: Asked) -> dict[str, Knob] | None:
    """``{key: Knob}``, kept for the keys the plugin proposed this time."""
    if not answer:
        return None
    if not isinstance(answer, Mapping):
        raise TypeError(f"{asked.hook} must return a mapping of key -> Knob, "
                        f"got {type(answer).__name__}")
    known = asked.proposed()
    out = {}
    for key, knob in answer.items():
        if not isinstance(knob, Knob):
            raise TypeError(f"{asked.hook}: {asked.plugin}.{key} must be an "
                            f"autotune.plan.knobs.Knob, got {type(knob).__name__}")
        if key not in known:
            continue  # a setting the plugin did not propose this time
        check_json(knob.off, f"{asked.plugin}.{key} off value")
        out[str(key)] = knob
    return out


def candidates(answer: Any, asked: Asked) -> list[dict[str, Any]] | None:
    """A list of ``{key: value}`` over keys the plugin proposed."""
    if not answer:
        return None
    if isinstance(answer, Mapping) or not isinstance(answer, (list, tuple)):
        raise TypeError(f"{asked.hook} must return a list of {{key: value}} "
                        f"mappings, got {type(answer).__name__}")
    known = asked.proposed()
    out = []
    for candidate in answer:
        if not isinstance(candidate, Mapping):
            raise TypeError(f"a candidate must be a mapping, got {candidate!r}")
        unknown = sorted(set(candidate) - known)
        if unknown:
            raise TypeError(f"candidate {dict(candidate)!r} has key(s) {unknown} that "
                            f"{asked.plugin} did not propose; known: {sorted(known)}")
        check_json(dict(candidate), f"{asked.plugin} candidate")
        out.append(dict(candidate))
    return out


# -- the search space ---------------------------------------------------------------------


def prior(answer: Any, asked: Asked) -> tuple[float, str] | None:
    """``(gain, reason)``: a number >= 0 and a one-line reason."""
    if answer is None:
        return None
    if isinstance(answer, (str, bytes, Mapping)) or not isinstance(answer, (tuple, list)) \
            or len(answer) != 2:
        raise TypeError(f"{asked.hook} must return (gain, reason) or None, got {answer!r}")
    gain, why = answer
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) \
            or gain < 0:
        raise ValueError(f"{asked.hook}: the gain must be a number >= 0, got {gain!r}")
    if not isinstance(why, str):
        raise TypeError(f"{asked.hook}: the reason must be a str, got {why!r}")
    return float(gain), one_line(why)


def reason(answer: Any, asked: Asked) -> str | None:
    """A one-line reason (``""`` counts as none)."""
    if answer is None or answer == "":
        return None
    if not isinstance(answer, str):
        raise TypeError(f"{asked.hook} must return a reason (str) or None, "
                        f"got {type(answer).__name__}")
    return one_line(answer)


def micro_batches(answer: Any, asked: Asked) -> int | None:
    """An integer >= 1."""
    if answer is None:
        return None
    if isinstance(answer, bool) or not isinstance(answer, int) or answer < 1:
        raise TypeError(f"{asked.hook} must return an integer >= 1 or None, got {answer!r}")
    return answer


# -- resources and the engine --------------------------------------------------------------


def instance_of(kind: type) -> Check:
    """A check: an instance of ``kind``, or ``None``."""
    def check(answer: Any, asked: Asked) -> Any:
        if answer is not None and not isinstance(answer, kind):
            raise TypeError(f"{asked.hook} must return an {kind.__module__}.{kind.__name__} "
                            f"or None, got {type(answer).__name__}")
        return answer
    return check


share = instance_of(Share)


def fold_plan(answer: Any, asked: Asked) -> FoldPlan | None:
    """A :class:`FoldPlan` whose ``settings`` are the plugin's own settings."""
    checked = instance_of(FoldPlan)(answer, asked)
    if checked is None:
        return None
    return replace(checked, settings=settings(checked.settings, asked) or {})


def optimizer(answer: Any, asked: Asked) -> Any:
    """A ``torch.optim.Optimizer``, or ``None`` to keep the one there is."""
    if answer is None:
        return None
    import torch  # here, not above: planning and the command line need no torch

    if not isinstance(answer, torch.optim.Optimizer):
        raise TypeError(f"{asked.hook} returned {type(answer).__name__}, "
                        "not a torch.optim.Optimizer")
    return answer
