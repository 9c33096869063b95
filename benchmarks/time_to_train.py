"""Time to train, search included: PyTorch defaults, an up-front search, a
rehearsal and online tuning, each training the same workload for the same
planned epochs.

    python benchmarks/time_to_train.py                      # cnn, mlp, input; short and long
    python benchmarks/time_to_train.py --workload input --length short --repeats 3
    python benchmarks/time_to_train.py --smoke              # everything tiny, under a minute

The arms, each in a fresh process with an empty tuning cache and an empty
torch compiler (inductor) cache, as a first run on a new machine:

  defaults  ``autotune.Engine(model, optimizer, loss_fn)`` with no plan (it
            trains bitwise like a plain PyTorch loop), ``fit(loader, epochs=E)``
  upfront   ``autotune.apply(model, loader, ..., budget_s=B)`` (--budget),
            then ``tuned.engine(optimizer).fit(tuned.loader, epochs=E)``
  online    ``autotune.apply(model, loader, ..., tune="online")``, the same
            engine and fit: the search runs on the run's own steps
  rehearse  ``autotune.apply(..., tune="rehearse", budget_s=B)``: the online
            search before training, for up to the same budget, then the
            same engine and fit with its winner

The clock runs from just before ``apply`` (for defaults: before the engine
is built) to ``fit`` returning; the model, loader and optimizer are built
and autotune's modules imported before it starts. Each run records time to
train, apply and train seconds, samples/s of the whole fit and of its LAST
HALF (the samples of the last ceil(E/2) epochs over their summed epoch
times, from ``engine.history``: the speed the run settled at) and the plan
it trained with.

Workloads (--workload): ``cnn`` and ``mlp`` from autotune.bench.workloads,
and ``input``, an input-bound job: each sample is built from a seeded
generator and blurred in the frequency domain (~1.5 ms of CPU a sample), for
a 4x4 average pool and a 2-layer MLP (~3 ms a step), batch 32, Adam:
loading dominates and loader workers win.

Lengths (--length): "short" ~ --short-s and "long" ~ --long-s seconds at
default speed. One calibration per workload (a fresh process: 3 warm-up
steps, then 10 timed, defaults) gives seconds per epoch; E = max(2,
round(target / epoch)). Where one epoch is longer than a quarter of the
target, the dataset is cut (the first n samples) so that E >= 4. All arms
are told E through ``fit(epochs=E)``; online tuning plans with it.

The arms of one case run back to back in --order, --repeats times, the
order rotated each repeat; medians are reported. Targets, for each case:
online's time / defaults' <= 1.03 (online_vs_defaults_<workload>_<length>)
and online's time / upfront's <= 1.0 (online_vs_upfront_...); on the long
length, where the up-front search shipped something other than PyTorch
defaults, online's last-half samples/s / upfront's >= 0.97
(online_last_half_vs_upfront_<workload>). The rehearsal is recorded beside
them, with no target of its own. --target NAME=VALUE changes one for every
case; the exit code is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (DEFAULT_OUT, Disturbance, add_target_option, check, cold_env,  # noqa: E402
                    parse_targets, provenance, report_targets, utc_now, wait_for_quiet,
                    write_json)

ARMS = ("defaults", "online", "upfront", "rehearse")
#: The arms whose ``tuned.tuning`` shows an online report.
PAIRED = ("online", "rehearse")
WORKLOADS = ("cnn", "mlp", "input")
LENGTHS = ("short", "long")
DEFAULTS_LABEL = "PyTorch defaults"
TARGETS = {"online_vs_defaults": 1.03, "online_vs_upfront": 1.0,
           "online_last_half_vs_upfront": 0.97}
AT_MOST = ("online_vs_defaults", "online_vs_upfront")
#: Samples per dataset: cnn and mlp as their ReferenceWorkload builds them.
DATASET_SIZE = {"cnn": 2048, "mlp": 8192, "input": 2048}
#: Calibration: steps not timed, then steps timed (defaults).
WARMUP_STEPS, TIMED_STEPS = 3, 10
#: --smoke: what a quick check runs unless told otherwise.
SMOKE = {"workloads": ("mlp", "input"), "lengths": ("short",), "short_s": 2.0, "long_s": 4.0,
         "budget": 5.0, "sizes": {"cnn": 128, "mlp": 512, "input": 256},
         "warmup": 1, "timed": 3}
INPUT_BATCH = 32


# -- the input-bound workload ------------------------------------------------------------


class BlurredImages:
    """A map-style dataset (``__len__`` / ``__getitem__``, what DataLoader
    needs) whose samples cost real CPU: a 3x64x64 image drawn from a
    generator seeded by (seed, index), blurred 4 times through an FFT with a
    tanh between, maybe flipped, normalised. Deterministic and picklable
    (plain attributes; numpy is imported where it is used, so that --help
    imports neither numpy nor torch)."""

    def __init__(self, n: int = DATASET_SIZE["input"], size: int = 64, classes: int = 10,
                 seed: int = 0, passes: int = 4) -> None:
        self.n, self.size, self.classes, self.seed, self.passes = n, size, classes, seed, passes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import numpy as np

        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(self.classes))
        image = rng.standard_normal((3, self.size, self.size), dtype=np.float32)
        fy = np.fft.fftfreq(self.size)[:, None]
        fx = np.fft.rfftfreq(self.size)[None, :]
        lowpass = np.exp(-(fx ** 2 + fy ** 2) / (2 * 0.08 ** 2)).astype(np.float32)
        for _ in range(self.passes):
            image = np.fft.irfft2(np.fft.rfft2(image) * lowpass, s=(self.size, self.size))
            image = np.tanh(3.0 * image).astype(np.float32)
        image[label % 3] += label / self.classes  # something to learn
        if rng.random() < 0.5:
            image = image[:, :, ::-1]
        image = (image - image.mean(axis=(1, 2), keepdims=True)) / (
            image.std(axis=(1, 2), keepdims=True) + 1e-6)
        return np.ascontiguousarray(image, dtype=np.float32), label


def build(workload: str, size: int, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """Fresh model (seeded), loader, optimizer and loss of ``workload`` with
    ``size`` samples (cnn / mlp: the first ``size`` of the reference
    dataset, loader as ``ReferenceWorkload.build`` makes it)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset

    torch.manual_seed(seed)
    if workload == "input":
        model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 16 * 16, 256),
                              nn.ReLU(), nn.Linear(256, 10))
        loader = DataLoader(BlurredImages(size, seed=seed), batch_size=INPUT_BATCH, shuffle=True,
                            drop_last=True)
        return model, loader, torch.optim.Adam(model.parameters(), lr=1e-3), \
            nn.functional.cross_entropy
    from autotune.bench.workloads import get_workload

    spec = get_workload(workload)
    model = spec.make_model()
    dataset = spec.make_dataset()
    if size < len(dataset):
        dataset = Subset(dataset, range(size))
    loader = DataLoader(dataset, batch_size=spec.batch_size, shuffle=True, drop_last=True,
                        **spec.loader_kwargs)
    return model, loader, spec.make_optimizer(model), spec.loss_fn


# -- the children (fresh processes) ---------------------------------------------------------


def child_calibrate(job: dict[str, Any]) -> dict[str, Any]:
    """Seconds per step of defaults, after warm-up steps."""
    import autotune

    model, loader, optimizer, loss_fn = build(job["workload"], job["dataset_size"])
    engine = autotune.Engine(model, optimizer, loss_fn, progress=False)
    batches = len(loader)

    def steps(count: int) -> None:
        engine.fit(loader, epochs=math.ceil(count / batches), max_steps=count)

    steps(job["warmup_steps"])
    started = time.perf_counter()
    steps(job["timed_steps"])
    step_s = (time.perf_counter() - started) / job["timed_steps"]
    engine.close()
    return {"dataset_size": job["dataset_size"], "batch_size": loader.batch_size,
            "batches_per_epoch": batches, "warmup_steps": job["warmup_steps"],
            "timed_steps": job["timed_steps"], "step_s": step_s, "epoch_s": step_s * batches}


def run_figures(history: Any, epochs: int, train_s: float) -> dict[str, Any]:
    """Whole-fit and last-half samples/s from the engine's history."""
    rows = list(history)
    samples = sum(e.samples for e in rows)
    tail = rows[-math.ceil(epochs / 2):]
    tail_s = sum(e.epoch_time_s for e in tail)
    return {"samples": samples, "samples_per_s": samples / train_s if train_s > 0 else None,
            "last_half_epochs": len(tail),
            "last_half_samples_per_s": sum(e.samples for e in tail) / tail_s if tail_s > 0
            else None,
            "epoch_samples_per_s": [e.samples_per_s for e in rows]}


def tuning_facts(arm: str, tuned: Any) -> dict[str, Any]:
    """The plan an arm trained with, and what its search found."""
    if arm == "defaults":
        return {"winner": DEFAULTS_LABEL}
    report = tuned.tuning
    if arm in PAIRED:
        data = report.to_dict()
        data["chunk_count"] = len(data.pop("chunks"))
        return {"winner": report.report.winner_label, "tuning": data,
                "summary": report.summary()}
    if report is None:  # nothing was measured
        return {"winner": None, "tuning": None}
    data = report.to_dict()
    confirmation = data.get("confirmation") or {}
    return {"winner": report.winner.label if report.winner is not None else None,
            "tuning": {"winner_settings": data["winner_settings"], "search_s": data["search_s"],
                       "speedup": data["speedup"], "complete": data["complete"],
                       "confirmation_verdict": confirmation.get("verdict")}}


def child_arm(job: dict[str, Any]) -> dict[str, Any]:
    """One arm: build, then time apply (or the engine) and the whole fit."""
    import autotune

    arm, epochs = job["arm"], job["epochs"]
    apply, engine_class = autotune.apply, autotune.Engine  # imported before the clock
    model, loader, optimizer, loss_fn = build(job["workload"], job["dataset_size"])
    tuned = None
    started = time.perf_counter()
    if arm == "defaults":
        applied = started
        engine = engine_class(model, optimizer, loss_fn, progress=False)
        fit_loader = loader
    else:
        how = {"upfront": {"budget_s": job["budget_s"]}, "online": {"tune": "online"},
               "rehearse": {"budget_s": job["budget_s"], "tune": "rehearse"}}[arm]
        tuned = apply(model, loader, optimizer=optimizer, loss_fn=loss_fn, device="cpu", **how)
        applied = time.perf_counter()
        engine = tuned.engine(optimizer, progress=False)
        fit_loader = tuned.loader
    fit_started = time.perf_counter()
    engine.fit(fit_loader, epochs=epochs)
    ended = time.perf_counter()
    engine.close()
    train_s = ended - fit_started
    result = {"arm": arm, "workload": job["workload"], "time_to_train_s": ended - started,
              "apply_s": applied - started, "train_s": train_s, "epochs": epochs,
              "steps": engine.micro_steps, **run_figures(engine.history, epochs, train_s),
              **tuning_facts(arm, tuned)}
    if arm == "online" and job.get("plot"):
        result["plot"] = str(tuned.tuning.plot(job["plot"]))
    return result


def run_child(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True, env=env)


def in_fresh_process(kind: str, job: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Run ``job`` in a new process with cold caches; what it wrote."""
    cold = Path(tempfile.mkdtemp(dir=scratch))
    job = {**job, "out": str(cold / "result.json")}
    (cold / "job.json").write_text(json.dumps(job))
    env = cold_env(cold)
    run_child([f"--child-{kind}", str(cold / "job.json")], env)
    return json.loads(Path(job["out"]).read_text())


# -- the harness ---------------------------------------------------------------------------


def plan_length(calibration: dict[str, Any], target_s: float) -> dict[str, Any]:
    """Epochs (and dataset size) for a run of ~``target_s`` at default speed."""
    step_s, batches = calibration["step_s"], calibration["batches_per_epoch"]
    size = calibration["dataset_size"]
    if step_s * batches > target_s / 4:  # cut the dataset so that E >= 4
        batches = max(1, min(batches, int(target_s / 4 / step_s)))
        size = batches * calibration["batch_size"]
    epochs = max(2, round(target_s / (step_s * batches)))
    return {"target_s": target_s, "dataset_size": size, "batches_per_epoch": batches,
            "epochs": epochs, "estimated_defaults_s": epochs * batches * step_s}


def rotated(order: tuple[str, ...], repeat: int) -> tuple[str, ...]:
    shift = repeat % len(order)
    return order[shift:] + order[:shift]


def run_case(workload: str, length: str, plan: dict[str, Any], args: argparse.Namespace,
             scratch: Path) -> list[dict[str, Any]]:
    runs = []
    for repeat in range(1, args.repeats + 1):
        for arm in rotated(args.order, repeat - 1):
            job = {"arm": arm, "workload": workload, "dataset_size": plan["dataset_size"],
                   "epochs": plan["epochs"], "budget_s": args.budget}
            if arm == "online" and args.plot:
                again = f"_r{repeat}" if args.repeats > 1 else ""
                job["plot"] = str(args.plot.with_name(
                    f"{args.plot.stem}_online_{workload}_{length}{again}.png"))
            run = {**in_fresh_process("arm", job, scratch), "repeat": repeat}
            runs.append(run)
            print(f"  {workload}/{length} #{repeat} {arm:<8} {describe(run)}", flush=True)
    return runs


def describe(run: dict[str, Any]) -> str:
    def shown(key: str, width: int = 0) -> str:
        value = run.get(key)
        return "-".rjust(width) if value is None else f"{value:{width}.1f}"

    return (f"{shown('time_to_train_s', 7)} s to train (apply {shown('apply_s')} s, train "
            f"{shown('train_s')} s), last half {shown('last_half_samples_per_s')} samples/s, "
            f"winner {run.get('winner') or '-'}")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians per arm over the repeats."""
    def median(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        out[arm] = {key: median([r.get(key) for r in mine])
                    for key in ("time_to_train_s", "apply_s", "train_s", "samples_per_s",
                                "last_half_samples_per_s")}
        out[arm]["winners"] = [r.get("winner") for r in mine]
    return out


def case_checks(workload: str, length: str, summary: dict[str, dict[str, Any]],
                wanted: dict[str, float]) -> dict[str, dict[str, Any]]:
    def ratio(arm: str, other: str, key: str) -> float | None:
        a, b = summary[arm][key], summary[other][key]
        return a / b if a is not None and b else None

    checks = {f"{name}_{workload}_{length}": check(ratio("online", other, "time_to_train_s"),
                                                   wanted[name], at_most=True)
              for name, other in (("online_vs_defaults", "defaults"),
                                  ("online_vs_upfront", "upfront"))}
    if length == "long" and any(w not in (None, DEFAULTS_LABEL)
                                for w in summary["upfront"]["winners"]):
        checks[f"online_last_half_vs_upfront_{workload}"] = check(
            ratio("online", "upfront", "last_half_samples_per_s"),
            wanted["online_last_half_vs_upfront"])
    return checks


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    """Time to train per case and arm, grouped bars (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(max(6.0, 1.8 * len(cases) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(ARMS)
    for i, arm in enumerate(ARMS):
        values = [case["summary"][arm]["time_to_train_s"] or 0.0 for case in cases]
        offset = (i - (len(ARMS) - 1) / 2) * width
        bars = ax.bar([x + offset for x in range(len(cases))], values, width, label=arm)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(cases)), [f"{c['workload']}\n{c['length']}, {c['plan']['epochs']} "
                                      "epochs" for c in cases])
    ax.set(ylabel="seconds to train, search included (median)",
           title="Time to train: defaults, online tuning, an up-front search, a rehearsal")
    ax.legend()
    fig.savefig(path, dpi=100)


def parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=WORKLOADS,
                        help="repeatable (default: cnn, mlp and input)")
    parser.add_argument("--length", action="append", choices=LENGTHS,
                        help="repeatable (default: short and long)")
    parser.add_argument("--short-s", type=float, help="seconds of a short run at default "
                        "speed (default 60)")
    parser.add_argument("--long-s", type=float, help="seconds of a long run (default 300)")
    parser.add_argument("--budget", type=float, help="upfront's and rehearse's budget_s "
                        "(default 60)")
    parser.add_argument("--order", default=",".join(ARMS),
                        help="the arms' order in the first repeat (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each arm, the order rotated each time (default 1)")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="wait for a 1-minute load average below this (default 0.5)")
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds to wait for a quiet machine (default 600)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "time_to_train.json",
                        help="the result file (default %(default)s; the committed one is "
                             "benchmarks/results/time_to_train.json)")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="also draw the times here, and each online run's search beside "
                             "it (<stem>_online_<workload>_<length>.png)")
    parser.add_argument("--smoke", action="store_true",
                        help="everything tiny (mlp and input, a few hundred samples, short "
                             f"runs of {SMOKE['short_s']:g} s, budget {SMOKE['budget']:g} s): "
                             "a quick check of every arm")
    add_target_option(parser, {
        "online_vs_defaults": "online's time / defaults', at most (default "
                              f"{TARGETS['online_vs_defaults']:g})",
        "online_vs_upfront": "online's time / upfront's, at most (default "
                             f"{TARGETS['online_vs_upfront']:g})",
        "online_last_half_vs_upfront": "long runs where upfront shipped a change: online's "
                                       "last-half samples/s / upfront's, at least (default "
                                       f"{TARGETS['online_last_half_vs_upfront']:g})"})
    parser.add_argument("--child-calibrate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-arm", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    order = tuple(a.strip() for a in args.order.split(","))
    if sorted(order) != sorted(ARMS):
        parser.error(f"--order {args.order!r}: name each of {', '.join(ARMS)} once")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    smoke = args.smoke
    args.order = order
    args.workload = tuple(dict.fromkeys(args.workload or (SMOKE["workloads"] if smoke
                                                          else WORKLOADS)))
    args.length = tuple(dict.fromkeys(args.length or (SMOKE["lengths"] if smoke else LENGTHS)))
    for name, normal in (("short_s", 60.0), ("long_s", 300.0), ("budget", 60.0)):
        if getattr(args, name) is None:
            setattr(args, name, SMOKE[name] if smoke else normal)
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse(argv)
    for kind, path in (("calibrate", args.child_calibrate), ("arm", args.child_arm)):
        if path:
            job = json.loads(path.read_text())
            result = child_calibrate(job) if kind == "calibrate" else child_arm(job)
            Path(job["out"]).write_text(json.dumps(result, default=str))
            return 0
    wanted = {**TARGETS, **parse_targets(parser, args.target, tuple(TARGETS))}
    sizes = SMOKE["sizes"] if args.smoke else DATASET_SIZE
    warmup, timed = (SMOKE["warmup"], SMOKE["timed"]) if args.smoke else (WARMUP_STEPS,
                                                                            TIMED_STEPS)
    load_before = wait_for_quiet(args.max_load, args.max_wait)
    started = utc_now()
    watch = Disturbance()
    calibration, cases, checks = {}, [], {}
    with tempfile.TemporaryDirectory(prefix="time-to-train-") as scratch:
        for workload in args.workload:
            print(f"== {workload}: calibrating ({warmup} + {timed} steps of defaults)",
                  flush=True)
            calibration[workload] = calib = in_fresh_process("calibrate", {
                "workload": workload, "dataset_size": sizes[workload], "warmup_steps": warmup,
                "timed_steps": timed}, Path(scratch))
            print(f"  {calib['step_s'] * 1000:.1f} ms a step, {calib['epoch_s']:.2f} s an epoch "
                  f"of {calib['batches_per_epoch']} batches", flush=True)
            for length in args.length:
                plan = plan_length(calib, args.short_s if length == "short" else args.long_s)
                print(f"== {workload}/{length}: {plan['epochs']} epochs of "
                      f"{plan['batches_per_epoch']} batches (~{plan['estimated_defaults_s']:.0f} "
                      f"s at default speed); order {', '.join(args.order)}", flush=True)
                runs = run_case(workload, length, plan, args, Path(scratch))
                summary = summarize(runs)
                cases.append({"workload": workload, "length": length, "plan": plan,
                              "summary": summary, "runs": runs})
                checks.update(case_checks(workload, length, summary, wanted))
    record = {**provenance(sys.argv if argv is None else [__file__, *argv], date=started,
                           load_before=load_before, foreign_cpu_share=watch.share()),
              "benchmark": "time_to_train",
              "settings": {"budget_s": args.budget, "short_s": args.short_s,
                           "long_s": args.long_s, "order": list(args.order),
                           "repeats": args.repeats, "smoke": args.smoke},
              "calibration": calibration, "cases": cases, "targets": checks}
    write_json(args.out, record)
    print_summary(cases)
    if args.plot:
        plot(cases, args.plot)
    code = report_targets(checks)
    print(f"  wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return code


def print_summary(cases: list[dict[str, Any]]) -> None:
    print("== medians", flush=True)
    for case in cases:
        for arm in ARMS:
            s = case["summary"][arm]
            row = {**s, "winner": " / ".join(dict.fromkeys(str(w) for w in s["winners"]))}
            print(f"  {case['workload']}/{case['length']} {arm:<8} {describe(row)}")
        for run in case["runs"]:
            if run["arm"] in PAIRED and run.get("summary"):
                print("    {} #{}: {}".format(run["arm"], run["repeat"], run["summary"].replace(
                    "\n", "\n      ")))


if __name__ == "__main__":
    sys.exit(main())
