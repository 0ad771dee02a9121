"""One worker: trials one at a time while the budget and the deadline allow, in a local worker
process started by the supervisor, in ``study run``'s own process, or as ``study worker``."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune import interrupts
from signtune.errors import DeviceLost, Problem, StudyError
from signtune.objective import Objective, free_accelerator_memory
from signtune.runner.budget import Budget, SharedBudget, StorageBudget
from signtune.runner.reaping import reap_stale
from signtune.space import SearchSpace
from signtune.spec import StudySpec
from signtune.study import enqueue_defaults, open_study, retry_once
from signtune.tasks import Task, get_task
from signtune.tracking import make_tracker

MAX_CONSECUTIVE_FAILURES = 5

WORKER_GAVE_UP = 3  # exit code of a worker that stopped after too many failures in a row

DEVICE_LOST = 4  # exit code of a worker whose CUDA context broke: the supervisor starts a fresh one


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
                    Problem(
                        f"trial {trial.number}",
                        "hit an unrecoverable CUDA error, which leaves this process's GPU unusable: "
                        f"{trial.user_attrs.get('error', '')} (its params are queued again)",
                        "run the same command to resume in a fresh process",
                    )
                )
            consecutive_failures += 1
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                stats.stopped_by = "failures"
                error = trial.user_attrs.get("error", "see the trials' user attrs")
                raise StudyError(
                    Problem(
                        f"trial {trial.number}",
                        f"is failed trial {consecutive_failures} in a row, so the study stops. Its error: {error}",
                        "fix the cause (the full traceback is in the trial's `traceback` user attr, `study status` "
                        "lists the trials), then run the same command to resume",
                    )
                )
        else:
            consecutive_failures = 0
        if on_trial_end is not None and trial is not None:
            on_trial_end(trial)
    return stats


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
    enqueue_defaults(study, spec)
    tracker = make_tracker(spec)
    objective = Objective(spec, space, task, tracker, worker_id=worker_id)
    deadline = time.time() + spec.budget.timeout if spec.budget.timeout else None
    return worker_loop(
        study, objective, StorageBudget(study, spec.budget.trials), deadline=deadline, on_trial_end=on_trial_end
    )


def _worker_main(
    spec: StudySpec,
    space: SearchSpace,
    worker_id: str,
    seed_offset: int,
    claimed: Any,
    deadline: float | None,
    parent_box: Any,
    env: dict[str, str],
) -> None:
    """Entry point of a local worker process (spawned).

    ``space`` is the one the supervisor was given (a stage's searches part of the file's).
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
        task = get_task(spec.task, study_dir=spec.dir)
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
        if tracker.enabled:
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
