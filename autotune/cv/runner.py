"""``autotune.cross_validate``: k folds, trained with one plan, in parallel
where the machine allows, each stored the moment it finishes."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import cloudpickle  # what loky and Dask pickle tasks with
import torch
from torch.utils.data import DataLoader

from autotune.cv.backends import BackendFailure, run_dask, run_joblib, run_sequential
from autotune.cv.context import context_for_plan
from autotune.cv.errors import CrossValidationError
from autotune.cv.fold import (FoldOutcome, FoldTask, default_loss, default_optimizer,
                              estimate_fold_seconds, fold_seed, measure_step_memory, seeded)
from autotune.cv.result import CVResult, FoldFailure, FoldResult, aggregate
from autotune.cv.schedule import Schedule, decide
from autotune.cv.splits import Fold, fold_assignment, kfold, labels_from_dataset, split_digest
from autotune.cv.store import Manifest, RunStore, plan_digest
from autotune.display.progress import bar, progress_enabled
from autotune.plan.plan import Plan
from autotune.planner import make_plan
from autotune.plugin.context import Context, Workload
from autotune.plugin.manager import PluginManager

log = logging.getLogger("autotune.cv")

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


def _labels(dataset: Any, stratify: Any) -> Any:
    """The labels to stratify by: read from the dataset (``True``), given, or none."""
    if stratify is True:
        return labels_from_dataset(dataset)
    return None if stratify is None or stratify is False else stratify


def _resumed(store: RunStore | None, manifest: Manifest, resume: bool,
             run_dir: str | None) -> dict[int, FoldResult]:
    """The folds a previous run into the same ``run_dir`` finished."""
    if store is None:
        return {}
    done = {i: replace(r, resumed=True) for i, r in store.open(manifest, resume=resume).items()}
    if done:
        log.info("run_dir %s: %d of %d folds already finished, skipped", run_dir, len(done),
                 manifest.k)
    return done


def _schedule(template: FoldTask, todo: Sequence[Fold], plan: Plan, context: Context,
              manager: PluginManager, **asked: Any) -> Schedule:
    """:func:`~autotune.cv.schedule.decide` for the folds still to run, with
    the first of them to measure (a CUDA step's memory peak) and time (how
    long a fold takes alone) when the scheduling plugin asks."""

    def measure(device: str) -> int:
        return measure_step_memory(replace(template, device=device))

    def estimate() -> float:
        return estimate_fold_seconds(replace(template, device="cpu"))

    return decide(plan, context.hardware, folds_to_run=len(todo),
                  measure_fold_memory=measure if todo else None,
                  estimate_fold_seconds=estimate if todo else None, context=context,
                  manager=manager, **asked)


class _Collected:
    """The folds as they come back, each stored at once when there is a run_dir."""

    def __init__(self, store: RunStore | None, run_dir: str | None,
                 done: Mapping[int, FoldResult]) -> None:
        self.store = store
        self.run_dir = run_dir
        self.resumed = len(done)
        self.results: dict[int, FoldResult] = dict(done)
        self.failures: dict[int, FoldFailure] = {}

    def add(self, outcome: FoldOutcome) -> None:
        if outcome.result is not None:
            result = outcome.result
            if self.store is not None:
                result = self.store.write_result(result, outcome.checkpoint)
            self.results[outcome.fold] = result
            log.info("fold %d finished in %.1f s: %s", outcome.fold, result.duration_s,
                     ", ".join(f"{m} {v:.4f}" for m, v in result.metrics.items()))
        elif outcome.failure is not None:
            self.fail(outcome.failure)

    def fail(self, failure: FoldFailure) -> None:
        if self.store is not None:
            self.store.write_failure(failure)
        self.failures[failure.fold] = failure

    def lost(self, tasks: Sequence[FoldTask], exc: BackendFailure) -> None:
        """The backend broke: every fold that did not come back failed with it."""
        log.error("%s; %d fold(s) did not come back", exc,
                  len(tasks) - len(self.results) - len(self.failures) + self.resumed)
        for task in tasks:
            index = task.fold.index
            if index not in self.results and index not in self.failures:
                self.fail(FoldFailure(fold=index, error="BackendFailure", message=str(exc),
                                      traceback=repr(exc.__cause__)))


def _run_folds(tasks: list[FoldTask], schedule: Schedule, collected: _Collected, k: int,
               progress: bool) -> None:
    """Run the folds, collecting each as it finishes; after Ctrl-C the folds
    finished so far stay stored."""
    folds_bar = bar(k, "folds", enabled=progress_enabled(progress), unit="fold",
                    initial=collected.resumed)
    try:
        try:
            for outcome in _outcomes(tasks, schedule):
                folds_bar.update(1)
                collected.add(outcome)
        except BackendFailure as exc:
            collected.lost(tasks, exc)
    except KeyboardInterrupt:
        if collected.store is not None:
            log.warning("interrupted: %d finished fold(s) are stored in %s; rerun to resume",
                        len(collected.results), collected.run_dir)
        raise
    finally:
        folds_bar.close()


def _fold_tasks(template: FoldTask, todo: Sequence[Fold], schedule: Schedule,
                seed: int) -> list[FoldTask]:
    """One task per fold to run, on its device, with the schedule's plan and threads."""
    fold_plan = schedule.plan.to_dict()
    return [replace(template, fold=fold, seed=fold_seed(seed, fold.index),
                    device=schedule.device_for(fold.index), plan=fold_plan,
                    threads=schedule.threads_per_fold, shared_process=schedule.shared_process)
            for fold in todo]


def _result(collected: _Collected, schedule: Schedule, *, k: int, best_by: str,
            higher_is_better: bool, run_dir: str | None, seed: int,
            wall_time_s: float) -> CVResult:
    """The run's result, with a warning per failed fold and for a ``best_by``
    that no fold reports."""
    results, failures = collected.results, collected.failures
    finished = tuple(results[i] for i in sorted(results))
    result = CVResult(k=k, folds=finished, failed=tuple(failures[i] for i in sorted(failures)),
                      plan=schedule.plan, backend=schedule.backend,
                      concurrency=schedule.concurrency, threads_per_fold=schedule.threads_per_fold,
                      best_by=best_by, higher_is_better=higher_is_better,
                      run_dir=str(run_dir or ""), wall_time_s=wall_time_s,
                      seed=int(seed), aggregate=aggregate(finished))
    if finished and result.best_fold is None:
        log.warning("best_by=%r: no fold reports that metric (they have %s)", best_by,
                    sorted(finished[0].metrics))
    for failure in result.failed:
        log.warning("fold %d failed: %s: %s", failure.fold, failure.error, failure.message)
    return result


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
    labels = _labels(dataset, stratify)
    folds = kfold(n, k, seed, labels)
    disable, plugins = tuple(disable), tuple(plugins)
    plan, context, manager = _plan_and_context(model_fn, dataset, plan, batch_size, seed, profile,
                                               disable, overrides, plugins)
    store = RunStore(run_dir) if run_dir is not None else None
    manifest = Manifest(k=k, seed=int(seed), dataset_length=n, stratified=labels is not None,
                        split_digest=split_digest(fold_assignment(n, k, seed, labels)),
                        epochs=epochs, batch_size=batch_size,
                        plan_digest=plan_digest(plan.to_dict()))
    done = _resumed(store, manifest, resume, run_dir)
    todo = [fold for fold in folds if fold.index not in done]
    first = (todo or folds)[0]
    template = FoldTask(fold=first, model_fn=model_fn, dataset=dataset, plan=plan.to_dict(),
                        context=context, epochs=epochs, batch_size=batch_size,
                        seed=fold_seed(seed, first.index),
                        threads=context.hardware.cpu.worker_budget,
                        optimizer_fn=optimizer_fn or default_optimizer,
                        loss_fn=loss_fn or default_loss, metrics=dict(metrics or {}),
                        disable=disable, checkpoint=checkpoint, max_steps=max_steps,
                        plugins=plugins)
    schedule = _schedule(template, todo, plan, context, manager, backend=backend,
                         max_concurrent=max_concurrent, threads_per_fold=threads_per_fold,
                         device=device)
    tasks = _fold_tasks(template, todo, schedule, seed)
    _check_picklable(tasks, schedule.backend)
    collected = _Collected(store, run_dir, done)
    _run_folds(tasks, schedule, collected, k, progress)
    return _result(collected, schedule, k=k, best_by=best_by, higher_is_better=higher_is_better,
                   run_dir=run_dir, seed=seed, wall_time_s=time.perf_counter() - started)
