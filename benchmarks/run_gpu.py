"""GPU session: the CUDA tests, then PyTorch defaults vs autotune vs the peer
on one CUDA GPU, inside one hard time budget.

    python benchmarks/run_gpu.py --out benchmarks/results      # everything, ~8 min
    python benchmarks/run_gpu.py --workload resnet18 --budget 150 --total-s 560
    python benchmarks/run_gpu.py --smoke                       # same code paths, CPU, < 1 min

Phases, each under its own limit inside ``--total-s`` (the limits are
enforced: every phase but the first runs in a child process that is killed
at its limit), each writing its file as soon as it has something:

1. ``env.json``: device name, driver, torch, CUDA and cuDNN versions, CPU
   model, date, command, git commit, the peer wheel's sha256.
2. ``tests.json`` + ``tests.log``: the CUDA tests (``TESTS`` below).
3. per workload ``<w>.json``: the peer's search in its own venv
   (``benchmarks/peer.py``), then in one child process (this script with
   ``--one <w>``; its code is ``gpu/contenders.py``): ``autotune.apply``
   (up-front search, loader included), the peer's pick rebuilt from its
   cache, and PyTorch defaults, each warmed up, then timed in interleaved
   rounds (order rotated each round; every contender's global flags --
   TF32, cudnn.benchmark, threads -- restored before its chunk), medians.
4. ``summary.json`` + ``summary.txt`` + the printed summary.

Workloads (the issue's; built in ``gpu/workloads.py``): ``resnet18`` CIFAR
ResNet-18 (32 px, batch 128, AdamW), ``transformer6`` encoder LM (6 layers,
d=512, seq 128, batch 32, AdamW), ``resnet50`` (224 px, batch 64,
SGD+momentum) -- these three time the step on batches already on the GPU, as
the peer does -- and ``resnet18_e2e``: ResNet-18 with a per-sample augmenting
Dataset and a default DataLoader, timed end to end (each contender reads its
own loader).

This module is the command line, the session's phases and their time limits,
and the summary. The two tuners get the same search budget (``--budget``; by
default the share of the total left per workload x 0.28). ``--smoke`` runs the
same code on the CPU with tiny models and budgets (tests/test_run_gpu.py runs
it). Without CUDA (and without --smoke) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import DEFAULT_OUT, add_target_option, check, parse_targets, provenance, report_targets, write_json  # noqa: E402,E501
# Re-exported: peer.py's worker imports ``workloads`` from here, the tests
# read ``Stream`` and ``GlobalFlags`` here.
from gpu.contenders import GlobalFlags, Stream, one_workload  # noqa: E402,F401
from gpu.workloads import NAMES, workloads  # noqa: E402,F401

FLOOR = 0.97
#: --smoke's default: one step workload and the end-to-end one.
SMOKE_NAMES = ("resnet18", "resnet18_e2e")
#: The peer measures its baseline only with 8 s of its budget left (its code).
PEER_MIN_BUDGET_S = 10.0
#: The CUDA tests run in phase 2 (they skip themselves without CUDA).
TESTS = ("tests/test_engine_cuda.py", "tests/test_gpu_plans.py", "tests/test_detect.py")


# -- the machine -----------------------------------------------------------------


def _run_text(command: list[str], timeout: float = 20.0) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: str, argv: list[str]) -> dict[str, Any]:
    """What a result needs to be read later: which GPU, driver, software, CPU, when, how."""
    import torch

    from autotune import detect

    hardware = detect()
    env: dict[str, Any] = provenance(argv)
    env.update({
        "device": device, "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": hardware.cpu.brand, "cpu_cores": hardware.cpu.usable_cores,
        "memory_gb": round(hardware.memory.total_gb, 1),
        "gpus": [{"name": g.name, "memory_gb": round(g.memory_gb, 1),
                  "capability": list(g.compute_capability), "driver": g.driver_version,
                  "source": g.source} for g in hardware.gpus],
    })
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
        env["driver"] = next((g["driver"] for g in env["gpus"] if g["driver"]), None) or \
            _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["nvidia_smi"] = _run_text(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.max.sm,"
                                       "power.limit,persistence_mode", "--format=csv,noheader"])
    else:
        env["device_name"] = "cpu"
        env["driver"] = None
    try:
        from peer import find_wheel

        wheel = find_wheel()
        env["peer_wheel"] = {"file": wheel.name,
                             "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        env["peer_wheel"] = {"error": str(exc)}
    return env


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# -- the session -------------------------------------------------------------------


def run_child(command: list[str], timeout_s: float, log: Path) -> dict[str, Any]:
    """Run a phase's child process under a hard limit; its output goes to ``log``."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT, start_new_session=True)
        try:
            code = child.wait(timeout=max(1.0, timeout_s))
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)  # the child and its loader / compile workers
            child.wait()
            code, status = None, f"killed at its {timeout_s:.0f} s limit"
    return {"status": status, "returncode": code, "wall_s": time.perf_counter() - started,
            "log": log.name}


def tests_phase(out: Path, timeout_s: float, python: str,
                tests: tuple[str, ...] = TESTS) -> dict[str, Any]:
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests]
    result = run_child(command, timeout_s, out / "tests.log")
    text = (out / "tests.log").read_text(errors="replace")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", text)}
    result.update(command=" ".join(command), counts=counts,
                  summary=(text.strip().splitlines() or [""])[-1])
    write_json(out / "tests.json", result)
    return result

def session(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    deadline = started + args.total_s
    device = args.device or ("cpu" if args.smoke else "cuda")
    env = environment(device, argv)
    date = env["date"][:10]
    folder = args.out / f"{'smoke' if args.smoke else 'gpu'}_{date}_{slug(env['device_name'])}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "env.json", env)
    print(f"run_gpu: {env['device_name']} | driver {env['driver']} | torch {env['torch']} "
          f"(CUDA {env['cuda']}) | {env['cpu']} -> {folder}", flush=True)
    summary: dict[str, Any] = {"folder": str(folder), "env": "env.json", "phases": {}}

    def left() -> float:
        return deadline - time.perf_counter()

    def save_summary() -> None:
        summary["wall_s"] = time.perf_counter() - started
        write_json(folder / "summary.json", summary)

    if not args.no_tests:
        print(f"== tests (limit {args.tests_s:.0f} s)", flush=True)
        summary["phases"]["tests"] = tests_phase(folder, min(args.tests_s, left()), sys.executable,
                                                 TESTS[:1] if args.smoke else TESTS)
        print(f"  {summary['phases']['tests']['summary']}", flush=True)
        save_summary()

    names = args.workload or list(SMOKE_NAMES if args.smoke else NAMES)
    # The tuners' caches stay out of the results folder (which may be committed).
    cache_dir = ROOT / "runs" / "gpu-caches" / folder.name
    cache_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        share = left() / (len(names) - index)
        if share < (15 if args.smoke else 60):
            summary["phases"][name] = {"status": f"skipped: {left():.0f} s left of the total"}
            save_summary()
            continue
        entry = workload_phase(args, name, share=share, device=device, folder=folder,
                               cache_dir=cache_dir)
        summary["phases"][name] = entry
        save_summary()
        print(f"  {entry['run']['status']}", flush=True)
        for line in _summary_lines(name, entry):
            print(line, flush=True)
    save_summary()
    print(f"run_gpu: done in {time.perf_counter() - started:.0f} s of {args.total_s:.0f}; "
          f"results in {folder}", flush=True)
    write_summary_text(folder, env, summary, names)
    if args.smoke:  # tiny models on a shared CPU: the code paths are checked, not the figures
        return 0
    floor = args.targets.get("autotune_vs_defaults", FLOOR)
    checks = {f"{name}: autotune_vs_defaults": check(
        ((summary["phases"].get(name, {}).get("contenders") or {}).get("autotune") or {})
        .get("vs_defaults"), floor) for name in names}
    summary["targets"] = checks
    save_summary()
    return report_targets(checks)


def workload_phase(args: argparse.Namespace, name: str, *, share: float, device: str,
                   folder: Path, cache_dir: Path) -> dict[str, Any]:
    """One workload's phase, under ``share`` seconds: the peer's search, then
    the child process that times the contenders (``gpu/contenders.py``)."""
    budget = args.budget if args.budget is not None else (
        4.0 if args.smoke else max(20.0, round(share * 0.28)))
    phase_end = time.perf_counter() + share
    print(f"== {name} (limit {share:.0f} s, each tuner's budget {budget:.0f} s)", flush=True)
    entry: dict[str, Any] = {"budget_s": budget, "limit_s": share}
    child_python = sys.executable
    peer_cache = None
    if not args.no_peer:
        peer = peer_search(args, name, budget=budget, share=share, device=device,
                           folder=folder, cache=cache_dir / f"peer_{name}.json")
        entry["peer_search"] = {k: peer.get(k) for k in
                                ("status", "reason", "pick_label", "ms_per_step",
                                 "baseline_ms", "search_s")}
        if peer["status"] == "ok":
            child_python, peer_cache = peer["python"], str(cache_dir / f"peer_{name}.json")
    command = [child_python, str(Path(__file__).resolve()), "--one", name,
               "--json", str(folder / f"{name}.json"), "--budget", str(budget),
               "--phase-s", str(max(10.0, phase_end - time.perf_counter() - 10)),
               "--rounds", str(args.rounds), "--chunk-s", str(args.chunk_s),
               "--device", device]
    if args.smoke:
        command.append("--smoke")
    if peer_cache:
        command += ["--peer-cache", peer_cache]
    os.environ.update(AUTOTUNE_CACHE_DIR=str(cache_dir / "autotune"))
    entry["run"] = run_child(command, phase_end - time.perf_counter(), folder / f"{name}.log")
    path = folder / f"{name}.json"
    if path.exists():
        data = json.loads(path.read_text())
        entry["complete"] = data.get("complete", False)
        entry["contenders"] = {c: {k: v.get(k) for k in ("label", "ms_per_step",
                                                         "samples_per_s", "vs_defaults")}
                               for c, v in data.get("contenders", {}).items()}
        entry["autotune_search_s"] = (data.get("autotune") or {}).get("apply_s")
    return entry


def peer_search(args: argparse.Namespace, name: str, *, budget: float, share: float,
                device: str, folder: Path, cache: Path) -> dict[str, Any]:
    """The peer's search in its own venv (``peer.py``); writes ``peer_<w>.json``."""
    from peer import DEFAULT_VENV, run_peer

    peer = run_peer(name, budget_s=max(budget, PEER_MIN_BUDGET_S), device=device, smoke=args.smoke,
                    venv_dir=args.peer_venv or DEFAULT_VENV, cache_path=str(cache),
                    timeout_s=min(max(budget, PEER_MIN_BUDGET_S) * 1.5 + 30, share * 0.5))
    write_json(folder / f"peer_{name}.json", peer)
    print(f"  peer: {peer['status']} "
          f"{peer.get('pick_label') or peer.get('reason', '')[:200]}", flush=True)
    return peer


def write_summary_text(folder: Path, env: dict[str, Any], summary: dict[str, Any],
                       names: list[str]) -> None:
    lines = [f"{env['device_name']} | driver {env['driver']} | torch {env['torch']} "
             f"(CUDA {env['cuda']}) | {env['date']}"]
    if "tests" in summary["phases"]:
        lines.append(f"tests: {summary['phases']['tests']['summary']}")
    for name in names:
        lines += _summary_lines(name, summary["phases"].get(name, {}))
    (folder / "summary.txt").write_text("\n".join(lines) + "\n")


def _summary_lines(name: str, entry: dict[str, Any]) -> list[str]:
    lines = []
    for who, c in (entry.get("contenders") or {}).items():
        if c.get("ms_per_step") is None:
            lines.append(f"  {name:13s} {who:9s} not timed")
            continue
        ratio = f"{c['vs_defaults']:.2f}x" if c.get("vs_defaults") else "-"
        lines.append(f"  {name:13s} {who:9s} {c['ms_per_step']:9.2f} ms/step "
                     f"{c['samples_per_s']:10.1f} samples/s {ratio:>7s}  {c.get('label', '')}")
    if not lines:
        lines.append(f"  {name:13s} {entry.get('status') or (entry.get('run') or {}).get('status')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=NAMES,
                        help="repeatable; default: all four")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models on the CPU, the same code paths, under a minute")
    parser.add_argument("--total-s", type=float, default=None,
                        help="hard limit for everything (default 470; smoke 55)")
    parser.add_argument("--tests-s", type=float, default=None,
                        help="limit of the tests phase (default 75; smoke 15, one file)")
    parser.add_argument("--budget", type=float, default=None,
                        help="each tuner's search budget, seconds (default: from the time left)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--chunk-s", type=float, default=None,
                        help="seconds per timed chunk (default 1.0; smoke 0.1)")
    parser.add_argument("--device", default=None, help="default: cuda (smoke: cpu)")
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--peer-venv", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results go to OUT/gpu_<date>_<device>/ (default %(default)s)")
    add_target_option(parser, {"autotune_vs_defaults": f"autotune's pick / PyTorch defaults, "
                                                       f"samples/s, each workload (default {FLOOR})"})
    parser.add_argument("--one", choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase-s", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument("--peer-cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv[1:])
    args.targets = parse_targets(parser, args.target, ["autotune_vs_defaults"])
    args.total_s = args.total_s or (55.0 if args.smoke else 470.0)
    args.tests_s = args.tests_s or (15.0 if args.smoke else 75.0)
    args.chunk_s = args.chunk_s or (0.1 if args.smoke else 1.0)

    if args.one:
        one_workload(args.one, smoke=args.smoke, device=args.device or "cuda",
                     budget_s=args.budget or 30.0, phase_s=args.phase_s, rounds=args.rounds,
                     chunk_s=args.chunk_s, peer_cache=args.peer_cache, out=args.json)
        return 0
    import torch

    if not args.smoke and not torch.cuda.is_available() and (args.device or "cuda") == "cuda":
        print("run_gpu: skipped: no CUDA device (torch.cuda.is_available() is False); "
              "--smoke runs the same code on the CPU")
        return 0
    return session(args, argv)


if __name__ == "__main__":
    sys.exit(main())
