"""The supervisor: open the study, hold the global budget, run workers, stop cleanly.

``--trials N`` is the study's total of finished trials (complete + pruned). Local workers
share one counter of claimed trial slots, so a study ends with exactly N finished trials.
Failed trials give their slot back and their params are retried once. A worker that dies
(SIGKILL, OOM-kill) has its running trial failed at once and re-queued. Ctrl-C and SIGTERM
fail the running trials with reason ``interrupted``; the next ``study run`` resumes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune import interrupts
from signtune.errors import Problem, StudyError
from signtune.hosts import host_id
from signtune.objective import EpochCallback, Objective
from signtune.runner.budget import SharedBudget
from signtune.runner.placement import plan_workers
from signtune.runner.reaping import INTERRUPT_ORPHAN_AGE_S, reap_dead, reap_gone
from signtune.runner.worker import MAX_CONSECUTIVE_FAILURES, WORKER_GAVE_UP, _worker_main, worker_loop
from signtune.space import SearchSpace
from signtune.spec import StudySpec
from signtune.study import (
    STARTED,
    best_of,
    best_params,
    count_finished,
    count_states,
    enqueue_defaults,
    intermediate_metric,
    open_study,
)
from signtune.tasks import Task
from signtune.tracking import MetricLogger, make_tracker

POLL_S = 0.5
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class RunEvents:
    """Hooks the CLI uses to draw progress; the runner itself never prints."""

    on_start: Callable[[int, int], None] | None = None  # (finished, total)
    on_progress: Callable[[int, float | None, str], None] | None = None  # (finished, best, status)
    on_epoch: EpochCallback | None = None  # in-process worker only
    # (trial, best value, best trial) for each trial that ends (complete, pruned or failed)
    on_trial: Callable[[FrozenTrial, float | None, int | None], None] | None = None


@dataclass
class RunSummary:
    study_name: str
    total: int
    finished_before: int
    finished: int = 0
    started: int = 0
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    wall_time_s: float = 0.0
    stopped_by: str = "budget"  # budget | timeout | interrupted | failures
    workers: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    reaped: list[int] = field(default_factory=list)  # trials of dead processes failed at start
    tracking_error: str | None = None  # the study run's own MLflow calls that failed
    tracking_gaps: list[int] = field(default_factory=list)  # trials MLflow still misses after back-fill
    backfilled: list[int] = field(default_factory=list)  # trials this run logged to MLflow after the fact


def run_study(
    spec: StudySpec,
    space: SearchSpace,
    task: Task,
    *,
    workers: int = 1,
    gpus: list[int] | None = None,
    workers_per_gpu: int = 1,
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
    interrupts.checkpoint()
    study = open_study(spec)
    for key, value in {"spec_hash": spec.hash(), "task": spec.task, "metric": spec.objective.metric}.items():
        study.set_user_attr(key, value)
    if data_summary:
        study.set_user_attr("data", data_summary)
    # Trials left RUNNING by processes of this host that are gone (a killed `study run` and its
    # workers) or by a host whose heartbeat stopped: failed (and retried once) before counting.
    reaped = reap_gone(spec, study)
    interrupts.checkpoint()
    finished_before = count_finished(study)
    summary = RunSummary(spec.name, total, finished_before, finished_before, data=data_summary or {}, reaped=reaped)
    summary.best_value, summary.best_trial = best_of(study)
    if events.on_start:
        events.on_start(finished_before, total)
    if finished_before >= total:
        summary.wall_time_s = time.perf_counter() - t0
        return summary
    enqueue_defaults(study, spec)
    # Who runs the study now: if this process dies without its clean-up, the next run here
    # ends the MLflow run it leaves RUNNING (see reap_gone).
    study.set_user_attr("supervisor", {"host": host_id(), "pid": os.getpid()})

    tracker = make_tracker(spec)
    # The parent run is created when first needed: after the first epoch in-process, or by the
    # supervisor once its workers are training; MLflow's start-up cost stays off the first step.
    tracker.defer_study(
        study_name=spec.name,
        storage=spec.storage,
        params={**task.fixed_config(spec), "budget.trials": total},
        tags={"signtune.spec_hash": spec.hash()},
    )
    deadline = time.time() + spec.budget.timeout if spec.budget.timeout else None
    plan = plan_workers(workers, gpus, workers_per_gpu)
    summary.workers = len(plan)
    status = "FINISHED"
    try:
        if len(plan) == 1 and not gpus:
            _run_in_process(study, spec, space, task, tracker, summary, deadline, events)
        else:
            _supervise(study, spec, space, plan, tracker, summary, deadline, events)
    except KeyboardInterrupt:
        summary.stopped_by = "interrupted"
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        summary.wall_time_s = time.perf_counter() - t0
        summary.finished = count_finished(study)
        summary.best_value, summary.best_trial = best_of(study)
        export_dir = None
        try:
            if status == "FINISHED":
                from signtune.export import export_study

                with interrupts.interruptible():  # the export folder is swapped in whole
                    export_dir = export_study(study, spec)
        finally:
            _close_tracking(spec, study, tracker, summary, status, export_dir)
            with contextlib.suppress(Exception):
                study.set_user_attr("supervisor", {})
    return summary


def _close_tracking(
    spec: StudySpec,
    study: optuna.Study,
    tracker: MetricLogger,
    summary: RunSummary,
    status: str,
    export_dir: Path | None,
) -> None:
    """End the study's MLflow run and back-fill trials MLflow missed; failures only go to ``summary``."""
    if not tracker.enabled:
        return
    from signtune.tracking import trials_missing

    try:
        summary.backfilled = tracker.backfill(study, spec.objective.metric, epochs_as=intermediate_metric(spec))
        tracker.end_study(
            best_value=summary.best_value, best_params=best_params(study), export_dir=export_dir, status=status
        )
    except Exception as exc:
        summary.tracking_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    try:
        summary.tracking_gaps = [t.number for t in trials_missing(study)]
    except Exception:
        summary.tracking_gaps = []


def _run_in_process(
    study: optuna.Study,
    spec: StudySpec,
    space: SearchSpace,
    task: Task,
    tracker: MetricLogger,
    summary: RunSummary,
    deadline: float | None,
    events: RunEvents,
) -> None:
    claimed = mp.Value("i", summary.finished_before)
    objective = Objective(spec, space, task, tracker, on_epoch=events.on_epoch)

    def on_trial_end(trial: FrozenTrial) -> None:
        best, best_trial = best_of(study)
        if events.on_progress:
            events.on_progress(count_finished(study), best, "")
        if events.on_trial:
            events.on_trial(trial, best, best_trial)

    stats = worker_loop(
        study, objective, SharedBudget(spec.budget.trials, claimed), deadline=deadline, on_trial_end=on_trial_end
    )
    summary.started, summary.failed, summary.stopped_by = stats.started, stats.failed, stats.stopped_by


def _supervise(
    study: optuna.Study,
    spec: StudySpec,
    space: SearchSpace,
    plan: list[dict[str, str]],
    tracker: MetricLogger,
    summary: RunSummary,
    deadline: float | None,
    events: RunEvents,
) -> None:
    ctx = mp.get_context("spawn")
    claimed = ctx.Value("i", summary.finished_before)
    parent_box: Any = ctx.Array("c", 64)  # the study's MLflow run id, filled once workers run
    started_before = len(study.get_trials(deepcopy=False, states=STARTED))
    failed_before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    procs: dict[int, Any] = {}
    envs: dict[int, dict[str, str]] = {}
    restarts = 0

    def start(slot: int) -> None:
        p = ctx.Process(
            target=_worker_main,
            args=(spec, space, f"{slot}", slot + 1000 * restarts, claimed, deadline, parent_box, plan[slot]),
            name=f"signtune-worker-{slot}",
        )
        with interrupts.children_ignore_sigint():  # a Ctrl-C must not land in its start-up
            p.start()
        procs[slot] = p
        envs[slot] = plan[slot]

    dead_pids: set[int] = set()
    # trials that ended before this run, or whose end the events have told
    reported = {t.number for t in study.get_trials(deepcopy=False, states=ENDED)}
    max_restarts = 3 * len(plan)
    try:
        for slot in range(len(plan)):
            start(slot)
        if tracker.enabled:  # while the workers import torch and load data
            try:
                tracker.ensure_study()  # creates (and migrates) the MLflow store before any worker uses it
            except Exception as exc:  # tracking never stops training: the trials record the gap
                summary.tracking_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            finally:
                parent_box.value = (tracker.parent_run_id or "-").encode()
        while procs:
            interrupts.sleep(POLL_S)
            for slot, p in list(procs.items()):
                if p.exitcode is None:
                    continue
                del procs[slot]
                if p.exitcode == 0:
                    continue
                if p.exitcode == WORKER_GAVE_UP:
                    _stop_workers(procs)
                    last = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
                    error = last[-1].user_attrs.get("error", "see the trials' user attrs") if last else "unknown"
                    raise StudyError(
                        Problem(
                            f"worker {slot}",
                            f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row. Last error: {error}",
                            "fix the cause (each failed trial has its `error` and `traceback` user attrs), then run "
                            "the same command to resume",
                        )
                    )
                # Died without cleaning up (SIGKILL, OOM-kill, crash) or lost its CUDA context
                # (DEVICE_LOST, its trial already failed): fail its running trial now,
                # give its slot back, and start a replacement if work remains.
                dead_pids.add(p.pid)
                reap_dead(spec, study, {p.pid})
                # Recount the slots from storage (finished + running) rather than trusting the
                # dead worker's bookkeeping: it may have died between claiming and asking.
                counts = count_states(study)
                with claimed.get_lock():
                    claimed.value = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING]
                if restarts >= max_restarts:
                    _stop_workers(procs)
                    raise StudyError(
                        Problem(
                            "workers",
                            f"died {restarts} times (last exit code {p.exitcode}), so the study stops",
                            "run `study status` and check the failed trials' error attrs (an OOM-killer in the "
                            "system log is a common cause), then run the same command to resume",
                        )
                    )
                if claimed.value < spec.budget.trials and (deadline is None or time.time() < deadline):
                    restarts += 1
                    start(slot)
            if events.on_progress or events.on_trial:
                try:
                    trials = study.get_trials(deepcopy=False)
                    best, best_trial = best_of(study)
                except Exception:  # storage briefly unreachable (e.g. a server restart): draw later
                    continue
                ended = [t for t in trials if t.state in ENDED and t.number not in reported]
                for t in ended:
                    reported.add(t.number)
                    if events.on_trial:
                        events.on_trial(t, best, best_trial)
                if events.on_progress:
                    running = sum(t.state == TrialState.RUNNING for t in trials)
                    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
                    events.on_progress(finished, best, f"{len(procs)} workers, {running} running")
    except KeyboardInterrupt:
        _stop_workers(procs)
        # Every local worker has stopped: an unnamed trial a moment old is one they left (killed
        # inside Optuna's ask()), so Ctrl-C need not wait the full orphan age.
        pids = {p.pid for p in procs.values()} | dead_pids
        reap_dead(spec, study, pids, reason="interrupted", orphan_age_s=INTERRUPT_ORPHAN_AGE_S)
        raise
    trials = study.get_trials(deepcopy=False, states=STARTED)
    summary.started = len(trials) - started_before
    summary.failed = sum(t.state == TrialState.FAIL for t in trials) - failed_before
    if deadline is not None and time.time() >= deadline and count_finished(study) < spec.budget.trials:
        summary.stopped_by = "timeout"


def _stop_workers(procs: dict[int, Any], grace_s: float = 20.0) -> None:
    """Ask the workers to stop (SIGTERM, once), wait for them to mark their trials, then kill.

    A worker still in its start-up ends at once (its SIGTERM is still the default action), and
    one that also got the terminal's Ctrl-C counts two stop requests, below the forced third.
    """
    for p in procs.values():
        if p.exitcode is None and p.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    end = time.time() + grace_s
    for p in procs.values():
        p.join(max(0.0, end - time.time()))
        if p.exitcode is None:
            p.kill()
            p.join(5)
