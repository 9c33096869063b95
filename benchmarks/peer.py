"""The peer: pytorch-autotune 2.0 (https://github.com/JonSnow1807/pytorch-autotune,
MIT), run in a throw-away virtual environment, never a dependency of this
project.

    python benchmarks/peer.py --workload resnet18 --budget 150      # on a GPU
    python benchmarks/peer.py --workload resnet18 --smoke --device cpu --budget 12

What the peer is (read from its wheel, ``pytorch_autotune/tuner.py``):
``autotune(model, example_batch, loss_fn=None, optimizer="adamw", lr=1e-3,
budget="balanced"|seconds, device="cuda", cache=True, allow_cudagraphs=True,
compile_modes=None, verbose=True)`` searches precision (fp32 / tf32 / amp
bf16 / amp fp16) x ``torch.compile`` mode (off / default / reduce-overhead /
max-autotune) x channels_last x fused optimizer on ONE example batch, times
medians of 3 chunks, keeps a candidate only when > 3 % faster, and returns an
``AutotuneResult`` (``.model``, ``.optimizer``, ``.scaler``, ``.config``,
``.report``, ``.step(x, y)``). It does not touch the DataLoader. It builds its
own optimizer from a name ("adamw", "adam", "sgd"; a callable would switch off
its fused-optimizer knob), so the harness passes the name matching the
workload's optimizer and its lr. On a machine without CUDA it still runs when
given ``device="cpu"``; the harness passes ``compile_modes=[]`` there (its
compile trials would take minutes on a CPU). With ``device="cuda"`` and no
CUDA, torch refuses; the harness reports that as ``status: "refused"``.

The wheel (20 kB, MIT) is committed in ``benchmarks/peer/`` so a machine
without network (the GPU machine) can install it; ``--wheel`` names another.
A winner is written to the peer's own cache (``PYTORCH_AUTOTUNE_CACHE``):
``run_gpu.py`` rebuilds the pick in its own process from that cache (the
peer's documented cache hit: no search, nothing measured) to time it
interleaved with the other contenders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEER_NAME = "pytorch-autotune"
PEER_VERSION = "2.0.0"
WHEEL_DIR = HERE / "peer"
WHEEL_NAME = "pytorch_autotune-2.0.0-py3-none-any.whl"
#: Where `prepare_venv` puts the environment unless told otherwise (ignored by git).
DEFAULT_VENV = HERE.parent / "runs" / "peer-venv"


class PeerUnavailable(RuntimeError):
    """The peer cannot be installed here (no wheel, no way to install it)."""


def find_wheel(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The peer's wheel: ``explicit``, else the committed one. Fetch another
    with ``pip download --no-deps pytorch-autotune==2.0.0 -d DIR``."""
    candidates = [Path(explicit)] if explicit else [WHEEL_DIR / WHEEL_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise PeerUnavailable(f"no peer wheel at {', '.join(map(str, candidates))}; fetch it with "
                          f"`pip download --no-deps {PEER_NAME}=={PEER_VERSION} -d {WHEEL_DIR}`")


def venv_python(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _site_dirs() -> list[str]:
    """This interpreter's site-packages (torch, autotune, ...), for the
    peer's venv to see. ``--system-site-packages`` alone would show the
    *base* interpreter's, which lacks them when this one is itself a venv."""
    dirs = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in dirs and Path(path).is_dir():
            dirs.append(path)
    return dirs


def prepare_venv(root: str | os.PathLike[str] = DEFAULT_VENV, *,
                 wheel: str | os.PathLike[str] | None = None) -> Path:
    """Create (or reuse) a venv at ``root`` that sees this interpreter's
    packages and has the peer installed from its wheel, offline (``--no-index
    --no-deps``: its dependencies, torch and numpy, come from this
    interpreter). Returns the venv's python. Raises :class:`PeerUnavailable`."""
    root = Path(root)
    wheel_path = find_wheel(wheel)
    python = venv_python(root)
    if python.exists() and peer_version(python) == PEER_VERSION:
        return python
    venv.EnvBuilder(system_site_packages=True, clear=True, with_pip=False,
                    symlinks=os.name != "nt").create(root)
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    site = Path(out.stdout.strip())
    site.mkdir(parents=True, exist_ok=True)
    # An "import" line in a .pth runs at start-up: addsitedir also reads the
    # .pth files there (an editable install of autotune is one).
    lines = [f"import site; site.addsitedir({d!r})" for d in _site_dirs()]
    (site / "_parent_site.pth").write_text("\n".join(lines) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
               "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check",
               str(wheel_path)]
    done = subprocess.run(install, capture_output=True, text=True)
    if done.returncode != 0:  # pip older than 22.3 has no --python: install into the venv's site
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                               "--no-deps", "--no-compile", "--disable-pip-version-check",
                               "--target", str(site), str(wheel_path)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise PeerUnavailable(f"installing {wheel_path.name} failed: "
                              f"{(done.stderr or done.stdout).strip()[-400:]}")
    found = peer_version(python)
    if found != PEER_VERSION:
        raise PeerUnavailable(f"installed the peer, but its venv imports version {found!r}")
    return python


def peer_version(python: str | os.PathLike[str]) -> str | None:
    """The peer's ``__version__`` as ``python`` imports it; None if it cannot."""
    done = subprocess.run([str(python), "-c",
                           "import pytorch_autotune; print(pytorch_autotune.__version__)"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


# -- in the peer's venv ---------------------------------------------------------


def peer_kwargs(spec: Any, device: str) -> dict[str, Any]:
    """The peer's optimizer and lr for a workload, and the compile modes to
    search: its defaults on CUDA, none on a CPU (see the module docstring)."""
    name = getattr(spec, "peer_optimizer", "adamw")
    kwargs: dict[str, Any] = {"optimizer": name, "lr": getattr(spec, "peer_lr", 1e-3)}
    if not device.startswith("cuda"):
        kwargs["compile_modes"] = []
    return kwargs


def example_batch(spec: Any, loader: Any) -> tuple[Any, Any]:
    """The peer tunes on one batch of the user's loader."""
    inputs, targets = next(iter(loader))
    return inputs, targets


def search(spec: Any, *, budget_s: float, device: str, cache_path: str | None = None,
           seed: int = 0) -> dict[str, Any]:
    """Run the peer's search on ``spec`` here (needs ``pytorch_autotune``
    importable). Returns its pick, ms/step and every trial."""
    import torch

    if cache_path:
        os.environ["PYTORCH_AUTOTUNE_CACHE"] = str(cache_path)
    from pytorch_autotune import __version__, autotune  # imports the cache path set above

    model, loader, _ = spec.build(seed)
    batch = example_batch(spec, loader)
    started = time.perf_counter()
    try:
        result = autotune(model, batch, loss_fn=spec.loss_fn, budget=int(round(budget_s)),
                          device=device, cache="refresh" if cache_path else False,
                          verbose=True, **peer_kwargs(spec, device))
    except (RuntimeError, AssertionError, AttributeError) as exc:
        # torch without CUDA raises "Torch not compiled with CUDA enabled"
        # (an AssertionError) or "no CUDA GPUs are available" (RuntimeError).
        return {"status": "refused", "peer_version": __version__, "device": device,
                "reason": f"{type(exc).__name__}: {exc}".strip()[:500],
                "cuda_available": torch.cuda.is_available(),
                "search_s": time.perf_counter() - started}
    report = result.report.to_dict()
    winner = result.report.winner
    return {"status": "ok", "peer_version": __version__, "device": device,
            "budget_s": int(round(budget_s)), "search_s": time.perf_counter() - started,
            "pick": result.config.to_dict(), "pick_label": result.config.label,
            "ms_per_step": winner.ms_per_step if winner else None,
            "baseline_ms": report["baseline_ms"], "trials": report["trials"],
            "interrupted": report["interrupted"], "summary": result.report.summary(),
            "report_text": str(result.report), "batch_size": spec.batch_size}


def rebuild(spec: Any, model: Any, batch: tuple[Any, Any], *, device: str,
            cache_path: str) -> Any:
    """The peer's pick for ``spec`` rebuilt from its cache (a documented cache
    hit: nothing measured). Needs ``pytorch_autotune`` importable and the
    cache written by :func:`search` with the same model and batch shapes.
    Returns the peer's ``AutotuneResult``."""
    os.environ["PYTORCH_AUTOTUNE_CACHE"] = str(cache_path)
    import pytorch_autotune.cache as peer_cache
    from pytorch_autotune import autotune

    peer_cache._CACHE_PATH = Path(cache_path)  # read at its import; this process may have imported it
    result = autotune(model, batch, loss_fn=spec.loss_fn, budget=1, device=device, cache=True,
                      verbose=False, **peer_kwargs(spec, device))
    if result.report.trials:
        raise RuntimeError("the peer's cache had no entry for this workload: it searched again")
    return result


# -- from here ------------------------------------------------------------------


def run_peer(workload: str, *, budget_s: float, device: str, smoke: bool = False,
             venv_dir: str | os.PathLike[str] = DEFAULT_VENV,
             wheel: str | os.PathLike[str] | None = None, cache_path: str | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
    """Install the peer into its venv and run its search on ``workload`` in
    a child process there. Never raises for the peer's sake: the result's
    ``status`` is ok, refused (it would not run here), unavailable (no wheel
    or install failed), failed or timeout, with a ``reason``."""
    try:
        python = prepare_venv(venv_dir, wheel=wheel)
    except (PeerUnavailable, subprocess.CalledProcessError, OSError) as exc:
        return {"status": "unavailable", "reason": str(exc), "workload": workload}
    out = Path(venv_dir) / f"result_{workload}_{os.getpid()}.json"
    command = [str(python), str(Path(__file__).resolve()), "worker", "--workload", workload,
               "--budget", str(budget_s), "--device", device, "--out", str(out)]
    if smoke:
        command.append("--smoke")
    if cache_path:
        command += ["--cache", str(cache_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        log = (exc.stdout or b"")
        log = log.decode(errors="replace") if isinstance(log, bytes) else log
        return {"status": "timeout", "workload": workload, "reason":
                f"the peer's search ran past {timeout_s:.0f} s", "log_tail": log[-3000:]}
    if not out.exists():
        return {"status": "failed", "workload": workload, "returncode": done.returncode,
                "reason": (done.stderr or done.stdout).strip()[-1500:]}
    data = json.loads(out.read_text())
    out.unlink()
    data.update(workload=workload, python=str(python), wall_s=time.perf_counter() - started,
                log_tail=done.stdout[-3000:])
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "worker", "install"),
                        help="run (default): install and search; install: only install; "
                             "worker: search here (inside the peer's venv)")
    parser.add_argument("--workload", default="resnet18")
    parser.add_argument("--budget", type=float, default=150.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU-sized workloads")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--wheel", default=None)
    parser.add_argument("--cache", default=None, help="the peer's cache file (its pick lands there)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the result's JSON file (default runs/benchmarks/peer_<workload>.json)")
    args = parser.parse_args(argv)

    if args.mode == "install":
        try:
            print(f"peer installed: {prepare_venv(args.venv, wheel=args.wheel)}")
        except PeerUnavailable as exc:
            print(f"peer unavailable: {exc}")
            return 1
        return 0
    if args.mode == "worker":
        from run_gpu import workloads

        spec = workloads(smoke=args.smoke)[args.workload]
        result = search(spec, budget_s=args.budget, device=args.device, cache_path=args.cache)
    else:
        result = run_peer(args.workload, budget_s=args.budget, device=args.device,
                          smoke=args.smoke, venv_dir=args.venv, wheel=args.wheel,
                          cache_path=args.cache)
        if result["status"] == "ok":
            print(result.get("report_text", ""))
            print(f"peer pick: {result['pick_label']}: {result['ms_per_step']:.2f} ms/step "
                  f"(its baseline {result['baseline_ms']:.2f})")
        else:
            print(f"peer {result['status']}: {result.get('reason', '')}")
    out = args.out or HERE.parent / "runs" / "benchmarks" / f"peer_{args.workload}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["status"] in ("ok", "refused") else 1


if __name__ == "__main__":
    sys.exit(main())
