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
   (``benchmarks/peer.py``), then in one child process: ``autotune.apply``
   (up-front search, loader included), the peer's pick rebuilt from its
   cache, and PyTorch defaults, each warmed up, then timed in interleaved
   rounds (order rotated each round; every contender's global flags --
   TF32, cudnn.benchmark, threads -- restored before its chunk), medians.
4. ``summary.json`` + the printed summary.

Workloads (the issue's): ``resnet18`` CIFAR ResNet-18 (32 px, batch 128,
AdamW), ``transformer6`` encoder LM (6 layers, d=512, seq 128, batch 32,
AdamW), ``resnet50`` (224 px, batch 64, SGD+momentum) -- these three time
the step on batches already on the GPU, as the peer does -- and
``resnet18_e2e``: ResNet-18 with a per-sample augmenting Dataset and a
default DataLoader, timed end to end (each contender reads its own loader).

The two tuners get the same search budget (``--budget``; by default the
share of the total left per workload x 0.28). ``--smoke`` runs the same
code on the CPU with tiny models and budgets (tests/test_run_gpu.py runs it).
Without CUDA (and without --smoke) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import DEFAULT_OUT, add_target_option, check, parse_targets, provenance, report_targets, write_json  # noqa: E402,E501

FLOOR = 0.97
NAMES = ("resnet18", "transformer6", "resnet50", "resnet18_e2e")
#: --smoke's default: one step workload and the end-to-end one.
SMOKE_NAMES = ("resnet18", "resnet18_e2e")
#: The peer measures its baseline only with 8 s of its budget left (its code).
PEER_MIN_BUDGET_S = 10.0
#: The CUDA tests run in phase 2 (they skip themselves without CUDA).
TESTS = ("tests/test_engine_cuda.py", "tests/test_gpu_plans.py", "tests/test_detect.py")
#: Batches drawn once and kept on the device for the step workloads.
FIXED_BATCHES = 8


# -- workloads -------------------------------------------------------------------


def workloads(smoke: bool = False) -> dict[str, Any]:
    """The four workloads; ``smoke``: the same shapes of code, CPU-sized."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from autotune.workloads import (AugmentedImages, ReferenceWorkload, TokenSequences,
                                    TransformerLM, lm_loss, resnet18_cifar, resnet50)

    @dataclass(frozen=True)
    class BenchWorkload(ReferenceWorkload):
        #: "step": timed on batches already on the device; "e2e": through the loader.
        kind: str = "step"
        #: The optimizer the peer builds itself (its own API takes a name and an lr).
        peer_optimizer: str = "adamw"
        peer_lr: float = 1e-3

    def adamw(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def tensors(n: int, size: int, classes: int) -> Callable[[], TensorDataset]:
        def make() -> TensorDataset:
            generator = torch.Generator().manual_seed(0)
            return TensorDataset(torch.randn(n, 3, size, size, generator=generator),
                                 torch.randint(0, classes, (n,), generator=generator))
        return make

    ce = nn.functional.cross_entropy
    if smoke:
        def tiny_cnn() -> nn.Module:  # convolutions and batch norm, as a ResNet has, in 1 ms
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

        return {
            "resnet18": BenchWorkload(
                "resnet18", "smoke: conv-BN CNN, 16 px, batch 8, AdamW, tensor data", 8,
                tiny_cnn, tensors(64, 16, 10), adamw, ce),
            "transformer6": BenchWorkload(
                "transformer6", "smoke: Transformer LM 1 layer, d=32, seq 16, batch 4", 4,
                lambda: TransformerLM(vocab=64, d_model=32, heads=2, layers=1, seq_len=16),
                lambda: TokenSequences(64, 16, 64), adamw, lm_loss),
            "resnet50": BenchWorkload(
                "resnet50", "smoke: conv-BN CNN, 16 px, batch 8, SGD, tensor data", 8,
                tiny_cnn, tensors(64, 16, 10), sgd, ce,
                peer_optimizer="sgd", peer_lr=0.1),
            "resnet18_e2e": BenchWorkload(
                "resnet18_e2e", "smoke: conv-BN CNN, 16 px, batch 8, augmenting Dataset, "
                "default DataLoader", 8, tiny_cnn,
                lambda: AugmentedImages(64, size=16), adamw, ce, kind="e2e"),
        }
    return {
        "resnet18": BenchWorkload(
            "resnet18", "CIFAR ResNet-18 (width 64, 32 px), batch 128, AdamW, tensor data",
            128, resnet18_cifar, tensors(4096, 32, 10), adamw, ce),
        "transformer6": BenchWorkload(
            "transformer6", "Transformer encoder LM (6 layers, d=512, 8 heads, seq 128, "
            "vocab 8192), batch 32, AdamW", 32,
            lambda: TransformerLM(vocab=8192, d_model=512, heads=8, layers=6, seq_len=128),
            lambda: TokenSequences(2048, 128, 8192), adamw, lm_loss),
        "resnet50": BenchWorkload(
            "resnet50", "ResNet-50 (224 px), batch 64, SGD+momentum, tensor data", 64,
            resnet50, tensors(1024, 224, 1000), sgd, ce, peer_optimizer="sgd", peer_lr=0.1),
        "resnet18_e2e": BenchWorkload(
            "resnet18_e2e", "CIFAR ResNet-18/32 px/batch 128, AdamW, per-sample augmenting "
            "Dataset (crop+flip+normalise), default DataLoader", 128, resnet18_cifar,
            lambda: AugmentedImages(16384), adamw, ce, kind="e2e"),
    }


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


# -- timing ----------------------------------------------------------------------


class Stream:
    """Batches without end from a loader (a new epoch when one ends) or a
    list, through ONE iterator: timed chunks never pay for starting
    DataLoader workers. ``persistent_workers`` tells the engine's loop not
    to stop them after each chunk."""

    persistent_workers = True

    def __init__(self, source: Any) -> None:
        self.source = source
        self._it: Iterator[Any] = iter(source)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.source)
            return next(self._it)


class GlobalFlags:
    """The process-wide settings the contenders change (TF32, cuDNN autotuning,
    threads), captured after each one was built and put back before its chunks,
    so one contender's flags never time another."""

    def __init__(self) -> None:
        import torch

        self.values = (torch.get_float32_matmul_precision(),
                       torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                       torch.backends.cudnn.benchmark, torch.get_num_threads())

    def restore(self) -> None:
        import torch

        precision, matmul, cudnn_tf32, benchmark, threads = self.values
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cudnn.benchmark = benchmark
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def to_dict(self) -> dict[str, Any]:
        keys = ("float32_matmul_precision", "matmul_allow_tf32", "cudnn_allow_tf32",
                "cudnn_benchmark", "threads")
        return dict(zip(keys, self.values))


@dataclass
class Contender:
    name: str
    label: str
    run: Callable[[int], None]      # n training steps
    flags: GlobalFlags
    samples_per_step: int
    close: Callable[[], None] = lambda: None


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(contender: Contender, steps: int, device: str) -> float:
    contender.flags.restore()
    synchronize(device)
    started = time.perf_counter()
    contender.run(steps)
    synchronize(device)
    return time.perf_counter() - started


def warm_up(contender: Contender, device: str, *, min_steps: int, max_s: float) -> dict[str, Any]:
    """Steps until three in a row agree within 1.5x (compilation, CUDA-graph
    capture and cuDNN autotuning are behind us), at least ``min_steps``, at
    most ``max_s`` seconds. Returns the warm-up's cost and the last step time."""
    started = time.perf_counter()
    times: list[float] = []
    while True:
        times.append(timed(contender, 1, device))
        spent = time.perf_counter() - started
        recent = times[-3:]
        if len(times) >= min_steps and max(recent) < 1.5 * min(recent):
            break
        if spent >= max_s:
            break
    return {"warmup_s": time.perf_counter() - started, "warmup_steps": len(times),
            "first_step_s": times[0], "step_s": statistics.median(times[-3:]),
            "stable": max(times[-3:]) < 1.5 * min(times[-3:])}


# -- one workload (a child process) --------------------------------------------------


def plain_step(model: Any, optimizer: Any, loss_fn: Callable[[Any, Any], Any],
               device: str) -> Callable[[Any], None]:
    """PyTorch defaults: what a user writes."""
    def step(batch: Any) -> None:
        inputs, targets = batch
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
    return step


def stepper(step: Callable[[Any], None], stream: Stream) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            step(next(stream))
    return run


def fixed_batches(loader: Any, device: str, count: int = FIXED_BATCHES) -> list[Any]:
    return [(x.to(device), y.to(device)) for x, y in itertools.islice(loader, count)]


def one_workload(name: str, *, smoke: bool, device: str, budget_s: float, phase_s: float,
                 rounds: int, chunk_s: float, peer_cache: str | None, out: Path) -> dict[str, Any]:
    """Search with autotune, rebuild the peer's pick, then time defaults,
    autotune and the peer interleaved. Writes ``out`` after every stage."""
    import torch

    import autotune

    started = time.perf_counter()
    deadline = started + phase_s

    def left() -> float:
        return deadline - time.perf_counter()

    spec = workloads(smoke)[name]
    record: dict[str, Any] = {"workload": name, "description": spec.description,
                              "kind": spec.kind, "batch_size": spec.batch_size, "device": device,
                              "budget_s": budget_s, "phase_s": phase_s, "stages": [],
                              "contenders": {}, "rounds": [], "complete": False}

    def save(stage: str) -> None:
        record["stages"].append({"stage": stage, "at_s": round(time.perf_counter() - started, 2)})
        write_json(out, record)
        print(f"  [{name}] {stage} ({time.perf_counter() - started:.0f} s)", flush=True)

    defaults_flags = GlobalFlags()
    contenders: list[Contender] = []
    save("started")

    # 1. autotune: the up-front search, loader included.
    model_a, loader_a, opt_a = spec.build(0)
    t0 = time.perf_counter()
    tuned = autotune.apply(model_a, loader_a, optimizer=opt_a, loss_fn=spec.loss_fn,
                           budget_s=budget_s, device=device, remeasure=True)
    report = tuned.tuning
    record["autotune"] = {
        "apply_s": time.perf_counter() - t0,
        "search_s": getattr(report, "search_s", None),
        "winner_settings": dict(getattr(report, "winner_settings", {}) or {}),
        "summary": report.summary() if report is not None else "nothing measured",
        "trials": [t.to_dict() for t in getattr(report, "trials", ())],
        "plan": tuned.plan.to_dict() if hasattr(tuned.plan, "to_dict") else None,
    }
    engine = tuned.engine(opt_a, progress=False)
    if spec.kind == "e2e":
        stream_a = Stream(tuned.loader)
    else:
        stream_a = Stream(fixed_batches(loader_a, device))
    contenders.append(Contender(
        "autotune", _winner_label(report),
        lambda n: engine.fit(stream_a, epochs=1, max_steps=n), GlobalFlags(),
        spec.batch_size, engine.close))
    record["autotune"]["flags"] = contenders[-1].flags.to_dict()
    record["autotune"]["engine"] = _jsonable(engine.describe())
    defaults_flags.restore()
    save("autotune searched")

    # 2. the peer's pick, from the cache its search wrote (nothing measured here).
    if peer_cache:
        try:
            from peer import example_batch, rebuild

            model_p, loader_p, _ = spec.build(0)
            batch = example_batch(spec, loader_p)
            peer = rebuild(spec, model_p, batch, device=device, cache_path=peer_cache)
            record["peer"] = {"pick": peer.config.to_dict(), "label": peer.config.label}
            if spec.kind == "e2e":
                stream_p = Stream(loader_p)   # its README's loop: the user's loader, x.cuda()
            else:
                fixed = fixed_batches(loader_p, device)
                if peer.config.channels_last:  # as its own trials time it
                    fixed = [(x.to(memory_format=torch.channels_last), y) for x, y in fixed]
                stream_p = Stream(fixed)

            def peer_step(batch: Any, peer: Any = peer) -> None:
                x, y = batch
                peer.step(x.to(device), y.to(device))

            contenders.append(Contender("peer", peer.config.label, stepper(peer_step, stream_p),
                                        GlobalFlags(), spec.batch_size))
            record["peer"]["flags"] = contenders[-1].flags.to_dict()
        except Exception as exc:  # noqa: BLE001 - the other contenders still run
            record["peer"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        defaults_flags.restore()
        save("peer rebuilt")
    else:
        record["peer"] = {"error": "no peer pick (its search did not finish; see peer_<w>.json)"}

    # 3. PyTorch defaults.
    model_d, loader_d, opt_d = spec.build(0)
    model_d.to(device)
    stream_d = Stream(loader_d if spec.kind == "e2e" else fixed_batches(loader_d, device))
    contenders.insert(0, Contender("defaults", "PyTorch defaults",
                                   stepper(plain_step(model_d, opt_d, spec.loss_fn, device), stream_d),
                                   defaults_flags, spec.batch_size))

    # 4. warm-up, then interleaved rounds.
    min_steps = 3 if smoke else 15
    steps: dict[str, int] = {}
    for c in contenders:
        warm = warm_up(c, device, min_steps=min_steps, max_s=max(5.0, left() * 0.25))
        steps[c.name] = max(3, int(chunk_s / max(warm["step_s"], 1e-4)))
        record["contenders"][c.name] = {"label": c.label, **warm, "chunk_steps": steps[c.name]}
        save(f"warmed {c.name}")
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        chunk_cost = sum(steps[c.name] * record["contenders"][c.name]["step_s"] for c in contenders)
        if r > 0 and left() < 2 * chunk_cost + 2:
            record["rounds_cut"] = f"{r} of {rounds}: out of time"
            break
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        row = {}
        for c in order:
            seconds = timed(c, steps[c.name], device)
            times[c.name].append(seconds / steps[c.name])
            row[c.name] = seconds / steps[c.name] * 1000
        record["rounds"].append(row)
        _headline(record, contenders, times)
        save(f"round {r + 1}")
    for c in contenders:
        with contextlib.suppress(Exception):
            c.close()
    record["complete"] = True
    record["wall_s"] = time.perf_counter() - started
    save("done")
    return record


def _headline(record: dict[str, Any], contenders: list[Contender],
              times: dict[str, list[float]]) -> None:
    base = statistics.median(times["defaults"]) if times["defaults"] else None
    for c in contenders:
        if not times[c.name]:
            continue
        step = statistics.median(times[c.name])
        entry = record["contenders"][c.name]
        entry.update(ms_per_step=step * 1000, samples_per_s=c.samples_per_step / step,
                     rounds_ms=[t * 1000 for t in times[c.name]],
                     vs_defaults=(base / step) if base else None)


def _winner_label(report: Any) -> str:
    """What the pick changes from PyTorch defaults (the search's winning trial)."""
    winner = getattr(report, "winner", None) if report is not None else None
    baseline = getattr(report, "baseline", None) if report is not None else None
    if winner is None or winner is baseline or not winner.changes:
        return "PyTorch defaults (nothing beat them)"
    return winner.label


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


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
    import torch

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
        budget = args.budget if args.budget is not None else (
            4.0 if args.smoke else max(20.0, round(share * 0.28)))
        phase_end = time.perf_counter() + share
        print(f"== {name} (limit {share:.0f} s, each tuner's budget {budget:.0f} s)", flush=True)
        entry: dict[str, Any] = {"budget_s": budget, "limit_s": share}
        child_python = sys.executable
        peer_cache = None
        if not args.no_peer:
            from peer import DEFAULT_VENV, run_peer

            cache = cache_dir / f"peer_{name}.json"
            peer = run_peer(name, budget_s=max(budget, PEER_MIN_BUDGET_S), device=device, smoke=args.smoke,
                            venv_dir=args.peer_venv or DEFAULT_VENV, cache_path=str(cache),
                            timeout_s=min(max(budget, PEER_MIN_BUDGET_S) * 1.5 + 30, share * 0.5))
            write_json(folder / f"peer_{name}.json", peer)
            entry["peer_search"] = {k: peer.get(k) for k in
                                    ("status", "reason", "pick_label", "ms_per_step",
                                     "baseline_ms", "search_s")}
            print(f"  peer: {peer['status']} "
                  f"{peer.get('pick_label') or peer.get('reason', '')[:200]}", flush=True)
            if peer["status"] == "ok":
                child_python, peer_cache = peer["python"], str(cache)
        command = [child_python, str(Path(__file__).resolve()), "--one", name,
                   "--json", str(folder / f"{name}.json"), "--budget", str(budget),
                   "--phase-s", str(max(10.0, phase_end - time.perf_counter() - 10)),
                   "--rounds", str(args.rounds), "--chunk-s", str(args.chunk_s),
                   "--device", device]
        if args.smoke:
            command.append("--smoke")
        if peer_cache:
            command += ["--peer-cache", peer_cache]
        child_env = dict(os.environ, AUTOTUNE_CACHE_DIR=str(cache_dir / "autotune"))
        os.environ.update(AUTOTUNE_CACHE_DIR=child_env["AUTOTUNE_CACHE_DIR"])
        entry["run"] = run_child(command, phase_end - time.perf_counter(),
                                 folder / f"{name}.log")
        path = folder / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            entry["complete"] = data.get("complete", False)
            entry["contenders"] = {c: {k: v.get(k) for k in ("label", "ms_per_step",
                                                             "samples_per_s", "vs_defaults")}
                                   for c, v in data.get("contenders", {}).items()}
            entry["autotune_search_s"] = (data.get("autotune") or {}).get("apply_s")
        summary["phases"][name] = entry
        save_summary()
        print(f"  {entry['run']['status']}", flush=True)
        for line in _summary_lines(name, entry):
            print(line, flush=True)
    save_summary()
    print(f"run_gpu: done in {time.perf_counter() - started:.0f} s of {args.total_s:.0f}; "
          f"results in {folder}", flush=True)
    lines = [f"{env['device_name']} | driver {env['driver']} | torch {env['torch']} "
             f"(CUDA {env['cuda']}) | {env['date']}"]
    if "tests" in summary["phases"]:
        lines.append(f"tests: {summary['phases']['tests']['summary']}")
    for name in names:
        lines += _summary_lines(name, summary["phases"].get(name, {}))
    (folder / "summary.txt").write_text("\n".join(lines) + "\n")
    del torch
    if args.smoke:  # tiny models on a shared CPU: the code paths are checked, not the figures
        return 0
    floor = args.targets.get("autotune_vs_defaults", FLOOR)
    checks = {f"{name}: autotune_vs_defaults": check(
        ((summary["phases"].get(name, {}).get("contenders") or {}).get("autotune") or {})
        .get("vs_defaults"), floor) for name in names}
    summary["targets"] = checks
    save_summary()
    return report_targets(checks)


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
