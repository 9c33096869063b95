"""Which profile fits this machine, and why, rule by rule.

Matching follows Linux tuned's ``recommend``: every rule of a profile must
hold; among the profiles that match, the one with the most rules (after
``extends`` merging) wins, then the higher ``priority``, then the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from autotune.errors import ProfileError
from autotune.machine.hardware import Hardware
from autotune.profile.model import Profile


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
