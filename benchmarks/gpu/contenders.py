"""One workload of the GPU session, in its own child process (``run_gpu.py
--one <workload>``, killed at its phase's limit): builds the contenders --
``autotune.apply`` (its up-front search, loader included), the peer's pick
rebuilt from the cache its search wrote (``peer.py``), and PyTorch defaults --
warms each up, then times them in interleaved rounds (order rotated each
round; every contender's global flags -- TF32, cudnn.benchmark, threads --
restored before its chunk) and records medians. ``<w>.json`` is written after
every stage, so a phase cut short still leaves what it measured.

Imported by ``run_gpu.py`` (which puts ``benchmarks/`` on ``sys.path``, where
``common`` and this package are found).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from common import write_json
from gpu.workloads import workloads

#: Batches drawn once and kept on the device for the step workloads.
FIXED_BATCHES = 8


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



# -- the contenders ------------------------------------------------------------------


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



def autotune_contender(spec: Any, record: dict[str, Any], *, device: str,
                       budget_s: float) -> Contender:
    """autotune: the up-front search, loader included; what it found goes to
    ``record["autotune"]``."""
    import autotune

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
    contender = Contender(
        "autotune", _winner_label(report),
        lambda n: engine.fit(stream_a, epochs=1, max_steps=n), GlobalFlags(),
        spec.batch_size, engine.close)
    record["autotune"]["flags"] = contender.flags.to_dict()
    record["autotune"]["engine"] = _jsonable(engine.describe())
    return contender


def peer_contender(spec: Any, record: dict[str, Any], *, device: str,
                   peer_cache: str) -> Contender | None:
    """The peer's pick, from the cache its search wrote (nothing measured
    here); None when it cannot be rebuilt (``record["peer"]`` says why)."""
    import torch

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

        contender = Contender("peer", peer.config.label, stepper(peer_step, stream_p),
                              GlobalFlags(), spec.batch_size)
        record["peer"]["flags"] = contender.flags.to_dict()
        return contender
    except Exception as exc:  # noqa: BLE001 - the other contenders still run
        record["peer"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        return None


def defaults_contender(spec: Any, *, device: str, flags: GlobalFlags) -> Contender:
    """PyTorch defaults, with the flags the process had before anything was tuned."""
    model_d, loader_d, opt_d = spec.build(0)
    model_d.to(device)
    stream_d = Stream(loader_d if spec.kind == "e2e" else fixed_batches(loader_d, device))
    return Contender("defaults", "PyTorch defaults",
                     stepper(plain_step(model_d, opt_d, spec.loss_fn, device), stream_d),
                     flags, spec.batch_size)


# -- timing them ---------------------------------------------------------------------


def warm_up_all(contenders: list[Contender], record: dict[str, Any], *, device: str,
                min_steps: int, chunk_s: float, left: Callable[[], float],
                save: Callable[[str], None]) -> dict[str, int]:
    """Warms each contender up; returns each one's steps per timed chunk."""
    steps: dict[str, int] = {}
    for c in contenders:
        warm = warm_up(c, device, min_steps=min_steps, max_s=max(5.0, left() * 0.25))
        steps[c.name] = max(3, int(chunk_s / max(warm["step_s"], 1e-4)))
        record["contenders"][c.name] = {"label": c.label, **warm, "chunk_steps": steps[c.name]}
        save(f"warmed {c.name}")
    return steps


def interleaved_rounds(contenders: list[Contender], steps: dict[str, int],
                       record: dict[str, Any], *, device: str, rounds: int,
                       left: Callable[[], float], save: Callable[[str], None]) -> None:
    """Times every contender once a round, the order rotated each round, until
    ``rounds`` or the time left runs out; the medians go to ``record``."""
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


# -- one workload ----------------------------------------------------------------------


def one_workload(name: str, *, smoke: bool, device: str, budget_s: float, phase_s: float,
                 rounds: int, chunk_s: float, peer_cache: str | None, out: Path) -> dict[str, Any]:
    """Search with autotune, rebuild the peer's pick, then time defaults,
    autotune and the peer interleaved. Writes ``out`` after every stage."""
    import torch  # noqa: F401 - imported before the phase's clock starts, as autotune is

    import autotune  # noqa: F401

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
    save("started")
    contenders = [autotune_contender(spec, record, device=device, budget_s=budget_s)]
    defaults_flags.restore()
    save("autotune searched")
    if peer_cache:
        peer = peer_contender(spec, record, device=device, peer_cache=peer_cache)
        if peer is not None:
            contenders.append(peer)
        defaults_flags.restore()
        save("peer rebuilt")
    else:
        record["peer"] = {"error": "no peer pick (its search did not finish; see peer_<w>.json)"}
    contenders.insert(0, defaults_contender(spec, device=device, flags=defaults_flags))

    steps = warm_up_all(contenders, record, device=device, min_steps=3 if smoke else 15,
                        chunk_s=chunk_s, left=left, save=save)
    interleaved_rounds(contenders, steps, record, device=device, rounds=rounds, left=left,
                       save=save)
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

