"""The supervisor: create or load the study, hold the global budget, run workers, stop cleanly.

``--trials N`` is the study's total of finished trials (complete + pruned). Local workers
share one counter of claimed trial slots, so a study ends with exactly N finished trials.
Failed trials give their slot back and their params are retried once. A worker that dies
(SIGKILL, OOM-kill) has its running trial failed at once and re-queued. Ctrl-C fails the
running trials with reason ``interrupted``; the next ``study run`` resumes.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune import interrupts
from signtune.errors import ConfigError, DeviceLost, Problem, StudyError
from signtune.objective import EpochCallback, Objective, free_accelerator_memory
from signtune.space import SearchSpace, check_params
from signtune.spec import StudySpec
from signtune.storage import create_storage, mask_url
from signtune.tasks import Task, get_task
from signtune.tracking import NullTracker, Tracker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_STARTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
MAX_CONSECUTIVE_FAILURES = 5
POLL_S = 0.5
ORPHAN_AGE_S = 20.0  # how long a RUNNING trial may go without naming its worker (see reap_dead)
INTERRUPT_ORPHAN_AGE_S = 2.0  # the same after Ctrl-C, once every local worker has stopped
WORKER_GAVE_UP = 3  # exit code of a worker that stopped after too many failures in a row
DEVICE_LOST = 4  # exit code of a worker whose CUDA context broke: the supervisor starts a fresh one


@dataclass
class RunEvents:
    """Hooks the CLI uses to draw progress; the runner itself never prints."""

    on_start: Callable[[int, int], None] | None = None  # (finished, total)
    on_progress: Callable[[int, float | None, str], None] | None = None  # (finished, best, status)
    on_epoch: EpochCallback | None = None  # in-process worker only


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


# --------------------------------------------------------------------------------------------
# Study construction


def build_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. Each worker process passes its own ``seed_offset``: samplers seeded
    alike in several processes would propose the same configs in parallel."""
    s = spec.sampler
    seed = s.seed + seed_offset
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Optuna 5's TPE is multivariate with constant liar by default: parallel workers
    # do not all sample the same point while earlier trials are still running.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource=spec.epochs, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def open_study(spec: StudySpec, *, create: bool = True, seed_offset: int = 0) -> optuna.Study:
    """Create (or load) the study named in ``spec`` on its storage."""
    if not create:
        path = spec.storage.split(":///", 1)[1] if spec.storage.startswith(("sqlite:///", "journal:///")) else None
        if path is not None and not Path(path).exists():  # don't leave an empty database behind
            raise StudyError(
                f"no study named {spec.name!r}: {mask_url(spec.storage)} does not exist yet; "
                f"run `study run --study {spec.name}` first"
            )
    storage = create_storage(spec.storage)
    if not create:
        try:
            return optuna.load_study(
                study_name=spec.name,
                storage=storage,
                sampler=build_sampler(spec, seed_offset),
                pruner=build_pruner(spec),
            )
        except KeyError:
            raise StudyError(
                f"no study named {spec.name!r} in {mask_url(spec.storage)}; run `study run --study {spec.name}` first"
            ) from None
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=build_sampler(spec, seed_offset),
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


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_of(study: optuna.Study) -> tuple[float | None, int | None]:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None, None
    best = study.best_trial
    return best.value, best.number


def enqueue_defaults(study: optuna.Study, spec: StudySpec, space: SearchSpace) -> None:
    """Queue the spec's known-good configs once (skipped when a trial already used them)."""
    problems = []
    for i, params in enumerate(spec.enqueue):
        problems += check_params(space, params, f"{spec.path}: enqueue[{i}]")
    if problems:
        raise ConfigError(problems)
    for params in spec.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)


# A trial stopped from outside (Ctrl-C, SIGTERM, its supervisor gone) says nothing about its
# params: the next run samples afresh rather than repeating it.
NOT_RETRIED = ("interrupted", "supervisor_gone")


def retry_once(study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> bool:
    """Re-queue a failed trial's params once (not a retry's, not a stopped one's); whether it did.

    An out-of-memory failure is retried with half the batch size and twice the gradient
    accumulation, which keeps the effective batch. ``reason`` overrides the trial's own
    (a trial failed by another process has not recorded it yet in ``trial``).
    """
    reason = reason or trial.user_attrs.get("reason")
    if "retry_of" in trial.user_attrs or reason in NOT_RETRIED or not trial.params:
        return False
    attrs: dict[str, Any] = {"retry_of": trial.number}
    if reason == "oom":
        attrs["oom_retry"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs)
    return True


# --------------------------------------------------------------------------------------------
# Budgets


class Budget(Protocol):
    def claim(self) -> bool:
        """Take one trial slot; False when the study's budget is spent."""
        ...

    def release(self) -> None:
        """Give a slot back (its trial failed, so it does not count)."""
        ...


class SharedBudget:
    """Exact budget for the workers of one supervisor: a counter of claimed slots in shared memory."""

    def __init__(self, total: int, claimed: Any) -> None:
        self.total = total
        self.claimed = claimed  # multiprocessing.Value("i") holding finished + running

    def claim(self) -> bool:
        with self.claimed.get_lock():
            if self.claimed.value >= self.total:
                return False
            self.claimed.value += 1
            return True

    def release(self) -> None:
        with self.claimed.get_lock():
            self.claimed.value -= 1


class StorageBudget:
    """Budget for independent workers (other hosts): finished + running < total, read from storage.

    Workers claim without a lock between them, so each may start at most one trial too many.
    """

    def __init__(self, study: optuna.Study, total: int) -> None:
        self.study = study
        self.total = total

    def claim(self) -> bool:
        counts = count_states(self.study)
        return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING] < self.total

    def release(self) -> None:
        return None


# --------------------------------------------------------------------------------------------
# One worker


@dataclass
class WorkerStats:
    started: int = 0
    failed: int = 0
    stopped_by: str = "budget"


def worker_loop(
    study: optuna.Study,
    objective: Objective,
    budget: Budget,
    *,
    deadline: float | None = None,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
) -> WorkerStats:
    """Run trials one at a time while the budget and the deadline allow."""
    stats = WorkerStats()
    consecutive_failures = 0
    last: list[FrozenTrial] = []
    while True:
        interrupts.checkpoint()  # between trials: a stop requested during the last one's bookkeeping
        if deadline is not None and time.time() >= deadline:
            stats.stopped_by = "timeout"
            break
        if not budget.claim():
            break
        last.clear()
        # Trials of hosts whose heartbeat stopped are failed (and retried once) first, as
        # Optuna's own heartbeat would on RDB storages, but on every storage and with a reason.
        with contextlib.suppress(Exception):  # the storage briefly unreachable: next time
            reap_stale(objective.spec, study)
        # n_trials=1 per call keeps the budget in our hands. If it raises (Ctrl-C, storage
        # gone), the slot is not given back here: a trial left RUNNING is reaped by the
        # supervisor, which gives its slot back then.
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda _s, t: last.append(t)])
        stats.started += 1
        trial = last[-1] if last else None
        # The trial's frames are gone now, so what it held can be freed before the next one
        # (an OOM retry needs the failed attempt's model and activations released first).
        free_accelerator_memory(collect=trial is None or trial.state != TrialState.COMPLETE)
        if trial is not None and trial.state == TrialState.FAIL:
            stats.failed += 1
            budget.release()
            retry_once(study, trial)
            if trial.user_attrs.get("reason") == "cuda_error":
                # CUDA cannot recover in this process: every later trial here would fail too.
                raise DeviceLost(
                    f"trial {trial.number} hit an unrecoverable CUDA error, which leaves this process's GPU "
                    f"unusable: {trial.user_attrs.get('error', '')}. Its params are queued again; run the same "
                    "command to resume in a fresh process."
                )
            consecutive_failures += 1
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                stats.stopped_by = "failures"
                error = trial.user_attrs.get("error", "see the trials' user attrs")
                raise StudyError(
                    f"{consecutive_failures} trials in a row failed; stopping. Last error (trial {trial.number}): "
                    f"{error}. The full traceback is in the trial's `traceback` user attr."
                )
        else:
            consecutive_failures = 0
        if on_trial_end is not None and trial is not None:
            on_trial_end(trial)
    return stats


def _worker_main(
    spec: StudySpec,
    worker_id: str,
    seed_offset: int,
    claimed: Any,
    deadline: float | None,
    parent_box: Any,
    env: dict[str, str],
) -> None:
    """Entry point of a local worker process (spawned).

    ``parent_box`` is a shared char array the supervisor fills with the study's MLflow run id
    once its workers are started; a worker reads it when it creates its first trial run.

    The process starts with SIGINT ignored (see ``interrupts.children_ignore_sigint``); it takes
    Ctrl-C and SIGTERM as stop requests from here on, and stops by itself, failing its running
    trial with reason ``supervisor_gone``, if the supervisor dies (a SIGKILL, an OOM-kill).
    Every phase ends quietly with exit code 130/143 when a stop is requested: no traceback.
    """
    interrupts.install(child=True)
    _watch_supervisor()
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES / thread counts, before torch is imported
    import warnings

    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore")
        from signtune.space import parse

        task = get_task(spec.task)
        space = parse(spec.search_space, known_keys=task.config_keys())
        interrupts.checkpoint()
        with interrupts.interruptible():  # reads the data; writes only through renamed temp files
            task.prepare(spec)
        threads = int(env.get("SIGNTUNE_THREADS", "0"))
        if threads > 0 and "torch" in sys.modules:
            # A task that never imports torch (a plug-in) does not pay for its import here;
            # one that imports it later gets the same count from OMP_NUM_THREADS.
            sys.modules["torch"].set_num_threads(threads)
        interrupts.checkpoint()
        study = open_study(spec, create=False, seed_offset=seed_offset)
        tracker = make_tracker(spec)
        if isinstance(tracker, Tracker):
            tracker.parent_from(lambda: _wait_for_parent(parent_box))
        objective = Objective(spec, space, task, tracker, worker_id=worker_id, supervisor_pid=os.getppid())
        stats = worker_loop(study, objective, SharedBudget(spec.budget.trials, claimed), deadline=deadline)
    except KeyboardInterrupt:
        code = interrupts.exit_code() or 130
    except DeviceLost:
        code = DEVICE_LOST  # the supervisor replaces this worker
    except StudyError:
        code = WORKER_GAVE_UP
    else:
        code = 0 if stats.stopped_by != "failures" else WORKER_GAVE_UP
    interrupts.ignore_from_now()  # exiting: a late signal must not turn a clean exit into -SIGINT
    raise SystemExit(code)


def _watch_supervisor() -> None:
    """Stop this worker as soon as the process that started it is gone.

    A daemon thread waits on the parent's sentinel (a pipe that closes when the parent exits,
    however it dies) and then requests a stop, which ends the running trial with reason
    ``supervisor_gone``. Without it, a SIGKILLed ``study run`` would leave its workers training
    against the budget while the same command, run again, starts new ones.
    """
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        interrupts.request("supervisor_gone")

    threading.Thread(target=watch, name="signtune-supervisor-watch", daemon=True).start()


def _wait_for_parent(box: Any, timeout_s: float = 120.0) -> str | None:
    """The parent run id the supervisor writes into ``box``; None if it never comes, or when
    this worker is stopping (its last run is then logged without a parent)."""
    end = time.time() + timeout_s
    while time.time() < end and not interrupts.pending():
        value = box.value.decode()
        if value:
            return value if value != "-" else None
        time.sleep(0.05)
    return None


def make_tracker(spec: StudySpec, parent_run_id: str | None = None) -> Tracker | NullTracker:
    if not spec.tracking.enabled:
        return NullTracker()
    tracker = Tracker(spec.tracking_uri, spec.experiment, artifact_dir=spec.dir / "mlartifacts")
    tracker.parent_run_id = parent_run_id
    return tracker


# --------------------------------------------------------------------------------------------
# Worker placement


def plan_workers(workers: int, gpus: list[int] | None, workers_per_gpu: int) -> list[dict[str, str]]:
    """One environment per worker: a GPU each (round robin), or a share of the CPU threads.

    GPU ids count the GPUs this process sees, as torch does: under ``CUDA_VISIBLE_DEVICES=2,3``,
    ``--gpus 0`` is the device named ``2`` (a UUID or MIG name works the same way).

    Raises:
        ConfigError: a GPU id past the devices ``CUDA_VISIBLE_DEVICES`` makes visible.
    """
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
        if names is not None and max(gpus) >= len(names):
            raise ConfigError(
                Problem(
                    "--gpus",
                    f"asks for GPU {max(gpus)}, but CUDA_VISIBLE_DEVICES={visible} makes {len(names)} visible",
                    f"use ids 0 to {len(names) - 1} (they count the visible GPUs), or --gpus all",
                )
            )
        return [
            {"CUDA_VISIBLE_DEVICES": names[g] if names else str(g), "SIGNTUNE_GPU": names[g] if names else str(g)}
            for g in gpus
            for _ in range(workers_per_gpu)
        ]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    return [
        {"CUDA_VISIBLE_DEVICES": "", "SIGNTUNE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        for _ in range(workers)
    ]


def host_id() -> str:
    """This machine's name in trial user attrs (``SIGNTUNE_HOST`` overrides the hostname)."""
    return os.environ.get("SIGNTUNE_HOST") or socket.gethostname()


def reap_dead(
    spec: StudySpec,
    study: optuna.Study,
    pids: set[int],
    *,
    reason: str = "worker_died",
    orphan_age_s: float | None = None,
    end_runs: bool = True,
) -> list[int]:
    """Fail the RUNNING trials of dead local worker processes and re-queue their params once.

    Their MLflow runs are ended too, and with ``end_runs`` the runs of any trial or ``study run``
    that died (MLflow is opened only then, so a start with nothing to reap stays fast).

    Also fails orphans: trials that never named a worker, ``ORPHAN_AGE_S`` after they started.
    """
    host = host_id()
    noticed = datetime.datetime.now()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = [t for t in running if t.user_attrs.get("pid") in pids and t.user_attrs.get("host", host) == host]
    # A worker that died between creating a trial and recording its pid (a storage outage in
    # that instant) leaves a RUNNING trial that names no owner. A live worker names itself as
    # the first thing its objective does, right after Optuna's ask(); a trial still unnamed
    # ORPHAN_AGE_S after it started is an orphan. Wait until the unnamed ones are that old.
    unnamed = {t.number: t.datetime_start or noticed for t in running if "pid" not in t.user_attrs}
    if unnamed:
        age = ORPHAN_AGE_S if orphan_age_s is None else orphan_age_s
        wait = (max(unnamed.values()) - datetime.datetime.now()).total_seconds() + age
        if wait > 0:  # a Ctrl-C meanwhile ends the wait, unless this is already the Ctrl-C's clean-up
            (time.sleep if interrupts.pending() else interrupts.sleep)(wait)
        mine += [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number in unnamed and "pid" not in t.user_attrs and (t.datetime_start or noticed) <= noticed
        ]
    failed = [t.number for t in mine if fail_trial(spec, study, t, reason)]
    if failed or end_runs:
        _end_abandoned_runs(spec, study, failed, reason)
    return [t.number for t in mine]


def _end_abandoned_runs(spec: StudySpec, study: optuna.Study, failed: list[int], reason: str) -> None:
    """End the MLflow runs the dead left RUNNING: their trials' runs, and a dead `study run`'s.

    Only with tracking on. Covers every failed trial with a ``reason`` whose run is still
    RUNNING, so a later ``study reap`` repairs what an earlier reap could not log. A tracking
    error is a warning: the trials stay reaped.
    """
    tracking = getattr(spec, "tracking", None)
    if tracking is None or not tracking.enabled:
        return
    import warnings

    from signtune.tracking import FailedTrial, end_abandoned_runs

    try:
        trials = study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING))
        gone = [
            FailedTrial(
                t.number,
                str(t.user_attrs.get("reason", reason)),
                t.user_attrs.get("mlflow_run_id"),
                t.user_attrs.get("host"),
                t.user_attrs.get("pid"),
            )
            for t in trials
            if t.state == TrialState.FAIL and (t.number in failed or "reason" in t.user_attrs)
        ]
        end_abandoned_runs(
            Tracker(spec.tracking_uri, spec.experiment, artifact_dir=spec.dir / "mlartifacts"),
            study_name=study.study_name,
            failed=gone,
            host=host_id(),
            pid_alive=pid_alive,
            trials_running=any(t.state == TrialState.RUNNING for t in trials),
            reason=reason,
        )
    except Exception as exc:
        warnings.warn(
            f"could not end the MLflow runs of reaped trials {failed} ({type(exc).__name__}: {exc}); "
            "`study reap` ends them later",
            stacklevel=3,
        )


def fail_trial(spec: StudySpec, study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark another process's RUNNING trial failed with ``reason``; re-queue it once.

    Uses the storage's public API (the trial belongs to no ``Trial`` object in this process).
    """
    storage = create_storage(spec.storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    try:
        storage.set_trial_user_attr(trial_id, "reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except Exception:  # finished in the meantime: nothing to reap
        return False
    retry_once(study, trial, reason)
    return True


# --------------------------------------------------------------------------------------------
# The supervisor


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
    enqueue_defaults(study, spec, space)
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
            _supervise(study, spec, plan, tracker, summary, deadline, events)
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
    tracker: Tracker | NullTracker,
    summary: RunSummary,
    status: str,
    export_dir: Path | None,
) -> None:
    """End the study's MLflow run and back-fill trials MLflow missed; failures only go to ``summary``."""
    if not isinstance(tracker, Tracker):
        return
    from signtune.tracking import backfill, trials_missing

    try:
        summary.backfilled = backfill(tracker, study, spec.objective.metric)
        tracker.end_study(
            best_value=summary.best_value, best_params=_best_params(study), export_dir=export_dir, status=status
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
    tracker: Tracker | NullTracker,
    summary: RunSummary,
    deadline: float | None,
    events: RunEvents,
) -> None:
    claimed = mp.Value("i", summary.finished_before)
    objective = Objective(spec, space, task, tracker, on_epoch=events.on_epoch)

    def on_trial_end(trial: FrozenTrial) -> None:
        if events.on_progress:
            best, _ = best_of(study)
            events.on_progress(count_finished(study), best, "")

    stats = worker_loop(
        study, objective, SharedBudget(spec.budget.trials, claimed), deadline=deadline, on_trial_end=on_trial_end
    )
    summary.started, summary.failed, summary.stopped_by = stats.started, stats.failed, stats.stopped_by


def _supervise(
    study: optuna.Study,
    spec: StudySpec,
    plan: list[dict[str, str]],
    tracker: Tracker | NullTracker,
    summary: RunSummary,
    deadline: float | None,
    events: RunEvents,
) -> None:
    ctx = mp.get_context("spawn")
    claimed = ctx.Value("i", summary.finished_before)
    parent_box: Any = ctx.Array("c", 64)  # the study's MLflow run id, filled once workers run
    started_before = len(study.get_trials(deepcopy=False, states=_STARTED))
    failed_before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    procs: dict[int, Any] = {}
    envs: dict[int, dict[str, str]] = {}
    restarts = 0

    def start(slot: int) -> None:
        p = ctx.Process(
            target=_worker_main,
            args=(spec, f"{slot}", slot + 1000 * restarts, claimed, deadline, parent_box, plan[slot]),
            name=f"signtune-worker-{slot}",
        )
        with interrupts.children_ignore_sigint():  # a Ctrl-C must not land in its start-up
            p.start()
        procs[slot] = p
        envs[slot] = plan[slot]

    dead_pids: set[int] = set()
    max_restarts = 3 * len(plan)
    try:
        for slot in range(len(plan)):
            start(slot)
        if isinstance(tracker, Tracker):  # while the workers import torch and load data
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
                        f"worker {slot} stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row. "
                        f"Last error:\n{error}"
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
                        f"workers died {restarts} times (last exit code {p.exitcode}); stopping. "
                        "Run `study status` and check the failed trials' error attrs."
                    )
                if claimed.value < spec.budget.trials and (deadline is None or time.time() < deadline):
                    restarts += 1
                    start(slot)
            if events.on_progress:
                try:
                    counts = count_states(study)
                    best, _ = best_of(study)
                except Exception:  # storage briefly unreachable (e.g. a server restart): draw later
                    continue
                events.on_progress(
                    counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
                    best,
                    f"{len(procs)} workers, {counts[TrialState.RUNNING]} running",
                )
    except KeyboardInterrupt:
        _stop_workers(procs)
        # Every local worker has stopped: an unnamed trial a moment old is one they left (killed
        # inside Optuna's ask()), so Ctrl-C need not wait the full orphan age.
        pids = {p.pid for p in procs.values()} | dead_pids
        reap_dead(spec, study, pids, reason="interrupted", orphan_age_s=INTERRUPT_ORPHAN_AGE_S)
        raise
    trials = study.get_trials(deepcopy=False, states=_STARTED)
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


def _best_params(study: optuna.Study) -> dict[str, Any]:
    try:
        return dict(study.best_params)
    except ValueError:
        return {}


def run_worker(
    spec: StudySpec,
    space: SearchSpace,
    task: Task,
    *,
    worker_id: str,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
) -> WorkerStats:
    """One independent worker (another host, SLURM, compose) on an existing or new study.

    It honours the study's budget by reading it from storage before each trial; with W such
    workers the study may end with up to W - 1 trials over the budget.
    """
    import zlib

    study = open_study(spec, seed_offset=zlib.crc32(f"{worker_id}-{os.getpid()}".encode()) % 100_000)
    enqueue_defaults(study, spec, space)
    tracker = make_tracker(spec)
    objective = Objective(spec, space, task, tracker, worker_id=worker_id)
    deadline = time.time() + spec.budget.timeout if spec.budget.timeout else None
    return worker_loop(
        study, objective, StorageBudget(study, spec.budget.trials), deadline=deadline, on_trial_end=on_trial_end
    )


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host runs. A zombie (exited, not yet reaped by a parent,
    e.g. a worker whose supervisor was killed) counts as gone."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here (macOS): signal 0 is all there is
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def reap(spec: StudySpec) -> list[int]:
    """Fail trials left RUNNING by workers that are gone: on this host by pid, elsewhere by heartbeat."""
    return reap_gone(spec, open_study(spec, create=False))


def reap_gone(spec: StudySpec, study: optuna.Study) -> list[int]:
    """Fail (and retry once) the RUNNING trials whose process is gone: dead pids on this host
    (reason ``worker_died``), and any host's trials with a stale heartbeat (``heartbeat``).

    Workers of a ``study run`` that was killed stop by themselves within moments; they are
    waited for first, so that a trial one of them is just finishing is not counted twice.
    """
    host = host_id()
    _wait_for_orphaned_workers(study, host)
    gone = {
        t.user_attrs.get("pid")
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("host") == host and not pid_alive(t.user_attrs.get("pid"))
    }
    # A `study run` of this host that died (SIGKILL, OOM-kill) left its MLflow run RUNNING.
    last = study.user_attrs.get("supervisor") or {}
    dead_run = last.get("host") == host and not pid_alive(last.get("pid")) and last.get("pid") != os.getpid()
    reaped = reap_dead(spec, study, {p for p in gone if isinstance(p, int)}, end_runs=dead_run)
    if dead_run:
        study.set_user_attr("supervisor", {})
    return sorted(set(reaped) | set(reap_stale(spec, study)))


ORPHANED_WORKER_WAIT_S = 30.0


def _wait_for_orphaned_workers(study: optuna.Study, host: str) -> None:
    """Wait (at most ``ORPHANED_WORKER_WAIT_S``) for live workers on this host whose
    supervisor is dead: they are failing their trials (``supervisor_gone``) and exiting."""
    end = time.monotonic() + ORPHANED_WORKER_WAIT_S
    while time.monotonic() < end:
        orphaned = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("host") == host
            and pid_alive(t.user_attrs.get("pid"))
            and "supervisor" in t.user_attrs
            and not pid_alive(t.user_attrs["supervisor"])
        ]
        if not orphaned:
            return
        interrupts.sleep(0.1)


def reap_stale(spec: StudySpec, study: optuna.Study, *, now: float | None = None) -> list[int]:
    """Fail the RUNNING trials whose last heartbeat is older than ``GRACE_PERIOD_S``.

    A trial that never beat (its worker died at once) is judged by its start time. Works the
    same on SQLite, PostgreSQL and journal storages; the failed trials get reason
    ``heartbeat``, their params are retried once, and their MLflow runs are ended.
    """
    from signtune.storage import GRACE_PERIOD_S

    now = time.time() if now is None else now
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat")
        start = t.datetime_start or datetime.datetime.now()
        last = float(beat) if isinstance(beat, int | float) else start.timestamp()
        if now - last > GRACE_PERIOD_S:
            stale.append(t)
    failed = [t.number for t in stale if fail_trial(spec, study, t, "heartbeat")]
    if failed:
        _end_abandoned_runs(spec, study, failed, "heartbeat")
    return failed
