"""``autotune detect``, ``profiles``, ``plugins`` and ``plan``.

Human output is aligned tables; ``--json`` output is stable and documented
in the README ("JSON output"). Bad input raises an
:class:`~autotune.errors.AutotuneError`, which ``autotune.cli.main`` turns
into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable

import yaml

from autotune.cli.output import key_values, print_json, table, warnings_as_lines, wrapped_table
from autotune.errors import PlanError
from autotune.machine.detect import detect
from autotune.machine.hardware import GIB, Hardware
from autotune.plan.plan import Source
from autotune.planner import Planned, load_checked_profiles, make_plan
from autotune.plugin.manager import PluginManager
from autotune.profile import MatchResult, Profile, Recommendation, explain, get_profile, recommend

# Imported only when one of these commands runs (autotune.cli.COMMANDS); none
# of these modules imports torch, so detect and profiles answer without it.

#: Bumped only when a key is removed or changes meaning; new keys may appear.
JSON_VERSION = 1
_GPU_WORDS = ("gpu", "nvml", "cuda")


# -- shared helpers --------------------------------------------------------------


def _disabled(args: argparse.Namespace) -> list[str]:
    return [n.strip() for item in getattr(args, "disable", []) for n in item.split(",") if n.strip()]


def _warnings_as_lines(command: Callable[[argparse.Namespace], Any]
                       ) -> Callable[[argparse.Namespace], int]:
    """``command`` with each plugin warning printed as one line."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        with warnings_as_lines():
            return int(command(args) or 0)
    return run


def _manager(args: argparse.Namespace) -> PluginManager:
    return PluginManager(disable=_disabled(args), strict=getattr(args, "strict", False),
                         disabled_by="--disable")


def _recommend(args: argparse.Namespace) -> tuple[Hardware, dict[str, Profile], Recommendation]:
    manager = _manager(args)
    manager.load()
    hardware = manager.detect(detect())
    profiles = load_checked_profiles(args.profile_dir, manager)
    return hardware, profiles, recommend(hardware, profiles.values())


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["dataloader.num_workers=4"]`` -> ``{"dataloader": {"num_workers": 4}}``;
    values are read as YAML (``4``, ``true``, ``null``, ``[1, 2]``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        plugin, dot, key = target.strip().partition(".")
        if not sep or not dot or not plugin or not key:
            raise PlanError(f"--set {item!r}: expected PLUGIN.KEY=VALUE, "
                            "e.g. --set dataloader.num_workers=4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise PlanError(f"--set {item!r}: value is not valid YAML ({problem})") from None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            # YAML 1.1 reads off/on/yes/no as booleans; compile.mode=off means "off".
            value = raw.strip()
        out.setdefault(plugin, {})[key] = value
    return out


# -- detect ------------------------------------------------------------------------


def _gpu_reason(hardware: Hardware) -> str:
    reasons = [n.removeprefix("no GPU: ") for n in hardware.notes
               if any(w in n.lower() for w in _GPU_WORDS)]
    return "no GPU" + (f" ({'; '.join(reasons)})" if reasons else "")


def _profile_row(result: MatchResult, chosen: str) -> tuple[str, str]:
    if result.matched:
        return result.profile.name, (f"matches too, but with fewer rules "
                                     f"({result.profile.specificity})")
    failed = "; ".join(f"{v.rule}: wanted {v.wanted!r}, have {v.actual!r}"
                       for v in result.verdicts if not v.ok)
    return result.profile.name, "no: " + failed


def detect_json(hardware: Hardware, rec: Recommendation) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "hardware": hardware.to_dict(),
        "profile": {"name": rec.profile.name, "origin": rec.profile.origin,
                    "path": rec.profile.path, "why": rec.why},
        "profiles": [{"name": r.profile.name, "matched": r.matched,
                      "rules": r.profile.specificity, "reason": r.reason}
                     for r in rec.results],
    }


@_warnings_as_lines
def cmd_detect(args: argparse.Namespace) -> int:
    hardware, _, rec = _recommend(args)
    if args.json:
        print_json(detect_json(hardware, rec))
        return 0
    cpu, mem = hardware.cpu, hardware.memory
    rows: list[tuple[str, Any]] = [
        ("CPU", f"{cpu.brand} ({cpu.vendor}, {cpu.arch})"),
        ("Cores", f"{cpu.physical_cores} physical, {cpu.logical_cores} logical, "
                  f"{cpu.usable_cores:g} usable"),
        ("Flags", f"{' '.join(cpu.flags) or '(none of interest)'} "
                  f"(native bf16: {'yes' if cpu.has_bf16 else 'no'})"),
        ("Memory", f"{mem.total_bytes / GIB:.1f} GiB total, "
                   f"{mem.available_bytes / GIB:.1f} GiB available"),
    ]
    for gpu in hardware.gpus:
        cc = f"sm_{gpu.compute_capability[0]}{gpu.compute_capability[1]}"
        rows.append((f"GPU {gpu.index}", f"{gpu.name}, {gpu.memory_gb:.1f} GiB, {cc}, "
                     f"bf16 {'yes' if gpu.bf16 else 'no'}, via {gpu.source}"
                     + (f", driver {gpu.driver_version}" if gpu.driver_version else "")))
    if not hardware.gpus:
        rows.append(("GPU", _gpu_reason(hardware)))
    elif not hardware.cuda_available:
        rows.append(("CUDA", "not usable by this torch: " + _gpu_reason(hardware)))
    rows += [
        ("torch", f"{hardware.torch_version or 'not installed'} ("
                  + (f"CUDA {hardware.cuda_version}" if hardware.cuda_version
                     else "CPU-only build, no CUDA") + ")"),
        ("Python/OS", f"{hardware.python_version} / {hardware.os}"),
        ("Fingerprint", hardware.fingerprint),
        ("Profile", f"{rec.profile.name} ({rec.profile.origin}"
                    + (f", {rec.profile.path}" if rec.profile.origin == "user" else "") + ")"),
        ("Why", rec.why),
    ]
    print(key_values(rows))
    others = [_profile_row(r, rec.profile.name) for r in rec.results
              if r.profile.name != rec.profile.name]
    if others:
        print("\nOther profiles:")
        print(table(others, indent="  "))
    other_notes = [n for n in hardware.notes if not any(w in n.lower() for w in _GPU_WORDS)]
    if other_notes:
        print("\nNotes:")
        print("\n".join(f"  {n}" for n in other_notes))
    if hardware.extra:
        print("\nFacts from plugins:")
        print(table([(name, ", ".join(f"{k}={v!r}" for k, v in facts.items()))
                     for name, facts in hardware.extra.items()], indent="  "))
    return 0


# -- profiles ----------------------------------------------------------------------


def _profile_dict(profile: Profile) -> dict[str, Any]:
    return {"name": profile.name, "description": profile.description,
            "origin": profile.origin, "path": profile.path,
            "extends": list(profile.extends), "priority": profile.priority,
            "match": dict(profile.match),
            "plugins": {k: dict(v) for k, v in profile.plugins.items()}}


@_warnings_as_lines
def cmd_profiles(args: argparse.Namespace) -> int:
    hardware, profiles, rec = _recommend(args)
    if getattr(args, "profiles_command", None) == "show":
        profile = get_profile(args.name, profiles)
        verdict = explain(profile, hardware)
        data = _profile_dict(profile)
        data["this_machine"] = {"matched": verdict.matched, "chosen": profile.name == rec.profile.name,
                                "reason": verdict.reason}
        if args.json:
            print_json({"version": JSON_VERSION, **data})
            return 0
        print(f"# {profile.path or profile.name} ({profile.origin}; 'extends' already merged)")
        print(f"# on this machine: {'matches' if verdict.matched else 'does not match'}"
              f" - {verdict.reason}")
        data.pop("this_machine")
        print(yaml.safe_dump({k: v for k, v in data.items() if k not in ("origin", "path")},
                             sort_keys=False, default_flow_style=None, width=100), end="")
        return 0
    rows = []
    for result in sorted(rec.results, key=lambda r: r.profile.name):
        p = result.profile
        fits = ("chosen" if p.name == rec.profile.name else "yes") if result.matched else "no"
        rows.append({"name": p.name, "origin": p.origin, "path": p.path,
                     "extends": list(p.extends), "rules": p.specificity,
                     "matches": result.matched, "chosen": p.name == rec.profile.name,
                     "description": p.description, "_fits": fits})
    if args.json:
        print_json({"version": JSON_VERSION,
                    "profiles": [{k: v for k, v in r.items() if k != "_fits"} for r in rows]})
        return 0
    print(table([(r["name"], r["origin"], ",".join(r["extends"]) or "-", r["rules"], r["_fits"],
                  _first_sentence(r["description"])) for r in rows],
                headers=("name", "origin", "extends", "rules", "matches", "description")))
    return 0


def _first_sentence(text: str, limit: int = 70) -> str:
    sentence = text.split(". ")[0].strip()
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


# -- plugins -----------------------------------------------------------------------


def _planned(args: argparse.Namespace) -> Planned:
    overrides = parse_overrides(getattr(args, "set", []) or [])
    return make_plan(profile=getattr(args, "profile", None), overrides=overrides or None,
                     profile_dirs=args.profile_dir, manager=_manager(args), overrides_by="--set")


def plugin_rows(planned: Planned) -> list[dict[str, Any]]:
    plan = planned.plan
    rows = []
    for info in planned.manager.plugin_infos():
        if info.name in plan.settings:
            count = len(plan.settings[info.name])
            status, reason = "enabled", f"{count} setting{'s' * (count != 1)} in the plan"
        elif info.status == "loaded" and info.name in plan.disabled:
            status, reason = "disabled", plan.disabled[info.name]
        elif info.status == "loaded":
            status, reason = "loaded", "proposes no settings"
        else:
            status = info.status
            reason = plan.disabled.get(info.name, info.detail)
        rows.append({"name": info.name, "origin": info.origin, "status": status,
                     "reason": reason, "hooks": list(info.hooks)})
    return rows


def _short_hooks(hooks: list[str]) -> str:
    return ",".join(h.removeprefix("autotune_") for h in hooks) or "-"


@_warnings_as_lines
def cmd_plugins(args: argparse.Namespace) -> int:
    planned = _planned(args)
    rows = plugin_rows(planned)
    if args.json:
        print_json({"version": JSON_VERSION, "profile": planned.plan.profile, "plugins": rows})
        return 0
    print(table([(r["name"], r["origin"], r["status"], _short_hooks(r["hooks"]), r["reason"])
                 for r in rows], headers=("plugin", "origin", "status", "hooks", "why")))
    return 0


# -- plan --------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as it would be written in YAML (``null``, ``true``, ``[1, 2]``)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


@_warnings_as_lines
def cmd_plan(args: argparse.Namespace) -> int:
    planned = _planned(args)
    plan = planned.plan
    if args.json:
        print_json(plan.to_dict())
        return 0
    if args.yaml:
        print(plan.to_yaml(), end="")
        return 0
    print(key_values([("Profile", plan.profile), ("Why", planned.recommendation.why),
                      ("Hardware", plan.hardware_fingerprint)]))
    print()
    print(wrapped_table([(plugin, key, _show(s.value), s.source.value,
                          s.effect.label or "-", s.reason) for plugin, key, s in plan.rows()],
                        headers=("plugin", "key", "value", "source", "effect", "reason"),
                        wrap=(5,)))
    if not any(s.source is Source.MEASURED for _, _, s in plan.rows()):
        print("\nNothing here was measured: `autotune.apply(model, loader, optimizer=..., "
              "loss_fn=...)` measures the speed settings on your model.")
    if plan.disabled:
        print("\nOff:")
        print(table(sorted(plan.disabled.items()), indent="  "))
    return 0
