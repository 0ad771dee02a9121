"""The supervisor: create or load the study, hold the global budget, run trials, stop cleanly.

``--trials N`` is the study's total of finished trials (complete + pruned). Failed trials do
not count; their params are retried once. Ctrl-C fails the running trial with reason
``interrupted`` (Optuna never leaves it RUNNING) and the next ``study run`` resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune.config import flatten
from signtune.errors import StudyError
from signtune.objective import EpochCallback, Objective
from signtune.space import SearchSpace, check_params
from signtune.spec import StudySpec
from signtune.storage import create_storage, mask_url
from signtune.tasks import Task
from signtune.tracking import NullTracker, Tracker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 5


@dataclass
class RunEvents:
    """Hooks the CLI uses to draw progress; the runner itself never prints."""

    on_start: Callable[[int, int], None] | None = None  # (finished, total)
    on_trial_end: Callable[[FrozenTrial, int, float | None], None] | None = None  # (trial, finished, best)
    on_epoch: EpochCallback | None = None


@dataclass
class RunSummary:
    study_name: str
    total: int
    finished_before: int
    finished: int
    started: int
    failed: int
    best_value: float | None
    best_trial: int | None
    wall_time_s: float
    stopped_by: str = "budget"  # budget | timeout | interrupted
    data: dict[str, Any] = field(default_factory=dict)


def build_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    # Optuna 5's TPE is multivariate with constant liar by default: parallel workers
    # do not all sample the same point while earlier trials are still running.
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=spec.base.run.epochs, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def open_study(spec: StudySpec, *, create: bool = True, heartbeat: bool = True) -> optuna.Study:
    """Create (or load) the study named in ``spec`` on its storage."""
    storage = create_storage(spec.storage, heartbeat=heartbeat)
    if not create:
        try:
            return optuna.load_study(
                study_name=spec.name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec)
            )
        except KeyError:
            raise StudyError(
                f"no study named {spec.name!r} in {mask_url(spec.storage)}; run `study run --study {spec.name}` first"
            ) from None
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=build_sampler(spec),
        pruner=build_pruner(spec),
        direction=spec.objective.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.objective.direction:
        raise StudyError(
            f"study {spec.name!r} in {mask_url(spec.storage)} was created to {study.direction.name.lower()} "
            f"but the spec says objective.direction: {spec.objective.direction}; use another study name or fix the spec"
        )
    return study


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_of(study: optuna.Study) -> tuple[float | None, int | None]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None, None
    best = study.best_trial
    return best.value, best.number


def enqueue_defaults(study: optuna.Study, spec: StudySpec, space: SearchSpace) -> None:
    """Queue the spec's known-good configs once (skipped when a trial already used them)."""
    from signtune.errors import ConfigError

    problems = []
    for i, params in enumerate(spec.enqueue):
        problems += check_params(space, params, f"{spec.path}: enqueue[{i}]")
    if problems:
        raise ConfigError(problems)
    for params in spec.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)


def run_study(
    spec: StudySpec,
    space: SearchSpace,
    task: Task,
    *,
    events: RunEvents | None = None,
    data_summary: dict[str, Any] | None = None,
) -> RunSummary:
    """Run trials until the study has ``spec.budget.trials`` finished ones (or time runs out).

    The task's data must already be prepared (``task.prepare``), so bad data stops the run
    before anything is written to storage.
    """
    events = events or RunEvents()
    t0 = time.perf_counter()
    total = spec.budget.trials
    study = open_study(spec)
    study.set_user_attr("spec_hash", spec.hash())
    study.set_user_attr("task", spec.task)
    study.set_user_attr("metric", spec.objective.metric)
    study.set_user_attr("search_space", str(spec.search_space))
    if data_summary:
        study.set_user_attr("data", data_summary)
    finished_before = count_finished(study)
    summary = RunSummary(
        spec.name, total, finished_before, finished_before, 0, 0, *best_of(study), 0.0, data=data_summary or {}
    )
    if finished_before >= total:
        summary.wall_time_s = time.perf_counter() - t0
        return summary
    enqueue_defaults(study, spec, space)

    tracker: Tracker | NullTracker = NullTracker()
    if spec.tracking.enabled:
        tracker = Tracker(spec.tracking_uri, spec.experiment, artifact_dir=spec.dir / "mlartifacts")
        tracker.start_study(
            study_name=spec.name,
            storage=spec.storage,
            params={**flatten(spec.base), "budget.trials": total, "budget.subset": spec.budget.subset},
            tags={"signtune.spec_hash": spec.hash()},
        )
    objective = Objective(spec, space, task, tracker, on_epoch=events.on_epoch)
    if events.on_start:
        events.on_start(finished_before, total)

    deadline = t0 + spec.budget.timeout if spec.budget.timeout else None
    consecutive_failures = 0
    status = "FINISHED"
    try:
        while summary.finished < total:
            if deadline is not None and time.perf_counter() >= deadline:
                summary.stopped_by = "timeout"
                break
            # n_trials=1 per call: the budget is re-counted from storage between trials, and
            # optimize() keeps the heartbeat thread and stale-trial reaping of RDB storages.
            study.optimize(objective, n_trials=1, catch=(Exception,))
            trial = _last_trial_of(study, objective)
            summary.started += 1
            summary.finished = count_finished(study)
            summary.best_value, summary.best_trial = best_of(study)
            if trial is not None and trial.state == TrialState.FAIL:
                summary.failed += 1
                consecutive_failures += 1
                _retry_once(study, trial)
                if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    reason = trial.user_attrs.get("error", "see the trials' user attrs")
                    raise StudyError(f"{consecutive_failures} trials in a row failed; stopping. Last error:\n{reason}")
            else:
                consecutive_failures = 0
            if events.on_trial_end and trial is not None:
                events.on_trial_end(trial, summary.finished, summary.best_value)
    except KeyboardInterrupt:
        summary.stopped_by = "interrupted"
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        summary.wall_time_s = time.perf_counter() - t0
        export_dir = None
        if status == "FINISHED":
            from signtune.export import export_study

            export_dir = export_study(study, spec)
        tracker.end_study(
            best_value=summary.best_value, best_params=_best_params(study), export_dir=export_dir, status=status
        )
    return summary


def _last_trial_of(study: optuna.Study, objective: Objective) -> FrozenTrial | None:
    trials = study.get_trials(deepcopy=False)
    mine = [
        t for t in trials if t.user_attrs.get("pid") == _pid() and t.user_attrs.get("worker") == objective.worker_id
    ]
    return mine[-1] if mine else (trials[-1] if trials else None)


def _pid() -> int:
    import os

    return os.getpid()


def _retry_once(study: optuna.Study, trial: FrozenTrial) -> None:
    """Re-queue a failed trial's params once (not its retries, not interrupted ones)."""
    if "retry_of" in trial.user_attrs or trial.user_attrs.get("reason") == "interrupted" or not trial.params:
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _best_params(study: optuna.Study) -> dict[str, Any]:
    try:
        return dict(study.best_params)
    except ValueError:
        return {}
