"""``autotune.cross_validate``: k folds, trained with one plan, in parallel
where the machine allows, each stored the moment it finishes."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import torch

from autotune.plugin.context import Context, Workload
from autotune.cv.backends import BackendFailure, run_dask, run_joblib, run_sequential
from autotune.cv.errors import CrossValidationError
from autotune.cv.fold import (FoldOutcome, FoldTask, default_loss, default_optimizer,
                              estimate_fold_seconds, fold_seed, measure_step_memory, seeded)
from autotune.cv.result import CVResult, FoldFailure, FoldResult, aggregate
from autotune.cv.schedule import Schedule, decide
from autotune.cv.splits import fold_assignment, kfold, labels_from_dataset, split_digest
from autotune.cv.store import Manifest, RunStore, plan_digest
from autotune.machine.hardware import Hardware
from autotune.plugin.manager import PluginManager
from autotune.plan.plan import Plan
from autotune.display.progress import bar, progress_enabled

log = logging.getLogger("autotune.cv")


def context_for_plan(plan: Plan, workload: Workload | None = None,
                     hardware: Hardware | None = None) -> Context:
    """A planning context for a plan made elsewhere: this machine's hardware
    and the profile the plan names (the matching one when it names none
    that is known here)."""
    from autotune.machine.detect import detect
    from autotune.errors import ProfileError
    from autotune.profile import get_profile, load_profiles, recommend

    hardware = hardware if hardware is not None else detect()
    profiles = load_profiles()
    try:
        profile = get_profile(plan.profile, profiles) if plan.profile else None
    except ProfileError:
        profile = None
    if profile is None:
        profile = recommend(hardware, profiles.values()).profile
    return Context(hardware=hardware, profile=profile, workload=workload or Workload())


def _check_inputs(model_fn: Any, dataset: Any, epochs: Any, batch_size: Any,
                  max_steps: Any) -> int:
    if not callable(model_fn):
        raise CrossValidationError(f"model_fn must be a function that returns a new model, got "
                                   f"{type(model_fn).__name__}")
    try:
        n = len(dataset)
    except TypeError:
        raise CrossValidationError(f"dataset must have a length (a map-style torch Dataset), "
                                   f"got {type(dataset).__name__}") from None
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CrossValidationError(f"{name} must be an integer >= 1, got {value!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise CrossValidationError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
    return n


def _plan_and_context(model_fn: Callable[[], torch.nn.Module], dataset: Any, plan: Plan | None,
                      batch_size: int, seed: int, profile: str | None, disable: Iterable[str],
                      overrides: Mapping[str, Mapping[str, Any]] | None,
                      plugins: Iterable[Any] = ()) -> tuple[Plan, Context, PluginManager]:
    from torch.utils.data import DataLoader

    from autotune.planner import make_plan

    if plan is not None:
        if not isinstance(plan, Plan):
            raise CrossValidationError(f"plan must be an autotune.Plan (e.g. tuned.plan), got "
                                       f"{type(plan).__name__}")
        manager = PluginManager(disable=disable, plugins=plugins)
        manager.load()
        # Each fold inspects its own model and loader; no sample model here.
        context = context_for_plan(plan, Workload(batch_size=batch_size,
                                                  dataset_length=len(dataset)))
        if overrides:
            plan = manager.with_overrides(context, plan, overrides)
        return plan, context, manager
    # The plugins reason about the model (Conv2d? size?) and the batch size.
    with seeded(seed):
        sample_model = model_fn()
    workload = Workload.inspect(sample_model, DataLoader(dataset, batch_size=batch_size))
    planned = make_plan(profile=profile, workload=workload, disable=disable, overrides=overrides,
                        plugins=plugins)
    return planned.plan, replace(planned.context, workload=replace(workload, model=None,
                                                                   loader=None)), planned.manager


def _check_picklable(tasks: list[FoldTask], backend: str) -> None:
    """Process backends pickle every task; say which part cannot be, up front."""
    if backend not in ("loky", "dask") or not tasks:
        return
    try:
        import cloudpickle  # what loky and Dask pickle tasks with
    except ImportError:  # pragma: no cover - loky then falls back to pickle
        import pickle as cloudpickle

    task = tasks[0]
    for name in ("model_fn", "dataset", "optimizer_fn", "loss_fn", "metrics", "plugins"):
        try:
            cloudpickle.dumps(getattr(task, name))
        except Exception as exc:  # noqa: BLE001 - any pickling error
            raise CrossValidationError(
                f"{name} cannot be sent to {backend} worker processes: {type(exc).__name__}: "
                f"{exc}. HINT: define it at module level, or use backend='threading' or "
                "'sequential'") from None


def _outcomes(tasks: list[FoldTask], schedule: Schedule) -> Iterable[FoldOutcome]:
    if schedule.backend == "sequential":
        return run_sequential(tasks)
    if schedule.backend == "dask":
        return run_dask(tasks, schedule.client, schedule.concurrency)
    return run_joblib(tasks, schedule.backend, schedule.concurrency, schedule.threads_per_fold)


def cross_validate(model_fn: Callable[[], torch.nn.Module], dataset: Any, *, k: int = 5,
                   plan: Plan | None = None, epochs: int, stratify: Any = None,
                   run_dir: str | None = None, backend: Any = None,
                   optimizer_fn: Callable[[Any], torch.optim.Optimizer] | None = None,
                   loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                   batch_size: int = 32, seed: int = 0,
                   metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
                   max_concurrent: int | None = None, threads_per_fold: int | None = None,
                   device: str | torch.device | None = None, checkpoint: bool = False,
                   resume: bool = True, max_steps: int | None = None,
                   best_by: str = "val_loss", higher_is_better: bool = False,
                   profile: str | None = None, disable: Iterable[str] = (),
                   overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   plugins: Iterable[Any] = (), progress: bool = True) -> CVResult:
    """k-fold cross-validation with the shared engine and one plan.

    :param model_fn: returns a fresh model; called once per fold under the
        fold's seed (module-level, so worker processes can unpickle it).
    :param dataset: a map-style dataset of ``(inputs, target)`` samples.
    :param plan: the plan every fold trains with (e.g. ``tuned.plan``);
        default: ``autotune.make_plan(...)`` for this machine and model.
    :param stratify: labels (one per sample) to stratify the folds by, or
        ``True`` to read them from the dataset.
    :param run_dir: store each fold as it finishes; a rerun resumes.
    :param backend: ``None`` (what the scheduling plugin chooses: the
        built-in one reads its ``backend`` setting), ``"sequential"``,
        ``"loky"``, ``"threading"``, ``"dask"`` (the current Dask client) or a
        ``dask.distributed.Client``. Without a plugin that schedules folds
        (``autotune_fold_schedule``), they run one after another.
    :param metrics: ``{name: fn(outputs, targets)}`` evaluated on each
        validation fold, reported as ``val_<name>``.
    :param max_concurrent: folds at once (default: the plan's).
    :param threads_per_fold: CPU threads per fold (default: the plan's).
    :param device: ``"cuda"`` spreads folds over the GPUs; default: CUDA
        when available, else the CPU.
    :param checkpoint: also store each fold's engine state (needs run_dir).
    :param resume: reuse folds finished in ``run_dir``; False retrains all.
    :param max_steps: stop each fold after this many micro-batches in total.
    :param best_by: the metric that picks :attr:`CVResult.best_fold`.
    :param plugins: plugin objects to register beside the installed ones
        (as for :func:`autotune.apply`); they plan, schedule and train every
        fold (picklable, for worker processes).
    :raises CrossValidationError: on bad input or a run_dir of another run.
    """
    started = time.perf_counter()
    n = _check_inputs(model_fn, dataset, epochs, batch_size, max_steps)
    if checkpoint and run_dir is None:
        raise CrossValidationError("checkpoint=True needs run_dir= (where the checkpoints go)")
    labels = labels_from_dataset(dataset) if stratify is True else (
        None if stratify is None or stratify is False else stratify)
    assignment = fold_assignment(n, k, seed, labels)
    folds = kfold(n, k, seed, labels)
    disable = tuple(disable)
    plugins = tuple(plugins)
    plan, context, manager = _plan_and_context(model_fn, dataset, plan, batch_size, seed, profile,
                                               disable, overrides, plugins)
    store = RunStore(run_dir) if run_dir is not None else None
    done: dict[int, FoldResult] = {}
    if store is not None:
        manifest = Manifest(k=k, seed=int(seed), dataset_length=n, stratified=labels is not None,
                            split_digest=split_digest(assignment), epochs=epochs,
                            batch_size=batch_size, plan_digest=plan_digest(plan.to_dict()))
        done = {i: replace(r, resumed=True) for i, r in store.open(manifest, resume=resume).items()}
        if done:
            log.info("run_dir %s: %d of %d folds already finished, skipped", run_dir, len(done), k)
    todo = [fold for fold in folds if fold.index not in done]

    def base_task(fold_index: int, device: str) -> FoldTask:
        return FoldTask(fold=folds[fold_index], model_fn=model_fn, dataset=dataset,
                        plan=plan.to_dict(), context=context, epochs=epochs,
                        batch_size=batch_size, seed=fold_seed(seed, fold_index), device=device,
                        threads=context.hardware.cpu.worker_budget,
                        optimizer_fn=optimizer_fn or default_optimizer,
                        loss_fn=loss_fn or default_loss, metrics=dict(metrics or {}),
                        disable=disable, checkpoint=checkpoint, max_steps=max_steps,
                        plugins=plugins)

    def measure(device: str) -> int:
        return measure_step_memory(base_task(todo[0].index, device))

    def estimate() -> float:
        return estimate_fold_seconds(base_task(todo[0].index, "cpu"))

    schedule = decide(plan, context.hardware, folds_to_run=len(todo), backend=backend,
                      max_concurrent=max_concurrent, threads_per_fold=threads_per_fold,
                      device=device, measure_fold_memory=measure if todo else None,
                      estimate_fold_seconds=estimate if todo else None, context=context,
                      manager=manager)
    fold_plan = schedule.plan.to_dict()
    tasks = [replace(base_task(fold.index, schedule.device_for(fold.index)), plan=fold_plan,
                     threads=schedule.threads_per_fold, shared_process=schedule.shared_process)
             for fold in todo]
    _check_picklable(tasks, schedule.backend)
    results, failures = dict(done), {}
    folds_bar = bar(k, "folds", enabled=progress_enabled(progress), unit="fold", initial=len(done))
    try:
        try:
            for outcome in _outcomes(tasks, schedule):
                folds_bar.update(1)
                if outcome.result is not None:
                    result = outcome.result
                    if store is not None:
                        result = store.write_result(result, outcome.checkpoint)
                    results[outcome.fold] = result
                    log.info("fold %d finished in %.1f s: %s", outcome.fold, result.duration_s,
                             ", ".join(f"{m} {v:.4f}" for m, v in result.metrics.items()))
                elif outcome.failure is not None:
                    if store is not None:
                        store.write_failure(outcome.failure)
                    failures[outcome.fold] = outcome.failure
        except BackendFailure as exc:
            log.error("%s; %d fold(s) did not come back", exc,
                      len(tasks) - len(results) - len(failures) + len(done))
            for task in tasks:
                index = task.fold.index
                if index not in results and index not in failures:
                    failures[index] = FoldFailure(fold=index, error="BackendFailure",
                                                  message=str(exc), traceback=repr(exc.__cause__))
                    if store is not None:
                        store.write_failure(failures[index])
    except KeyboardInterrupt:
        if store is not None:
            log.warning("interrupted: %d finished fold(s) are stored in %s; rerun to resume",
                        len(results), run_dir)
        raise
    finally:
        folds_bar.close()
    finished = tuple(results[i] for i in sorted(results))
    result = CVResult(k=k, folds=finished, failed=tuple(failures[i] for i in sorted(failures)),
                      plan=schedule.plan, backend=schedule.backend,
                      concurrency=schedule.concurrency, threads_per_fold=schedule.threads_per_fold,
                      best_by=best_by, higher_is_better=higher_is_better,
                      run_dir=str(run_dir or ""), wall_time_s=time.perf_counter() - started,
                      seed=int(seed), aggregate=aggregate(finished))
    if finished and result.best_fold is None:
        log.warning("best_by=%r: no fold reports that metric (they have %s)", best_by,
                    sorted(finished[0].metrics))
    for failure in result.failed:
        log.warning("fold %d failed: %s: %s", failure.fold, failure.error, failure.message)
    return result
