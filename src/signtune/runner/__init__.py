"""Running a study: the supervisor, its workers, their budget and placement, and reaping.

| module | owns |
|---|---|
| ``supervisor`` | ``run_study``: the study's run, local worker processes, Ctrl-C, export at the end |
| ``worker`` | ``worker_loop`` (trials one at a time), the worker process, ``run_worker`` (other hosts) |
| ``budget`` | exact (shared counter) and storage-read budgets |
| ``placement`` | one environment per worker: GPU pinning or a share of the CPU threads |
| ``reaping`` | failing trials of processes that are gone (dead pid, stale heartbeat, orphans) |
"""

from signtune.runner.budget import Budget, SharedBudget, StorageBudget
from signtune.runner.placement import parse_gpus, plan_workers
from signtune.runner.reaping import fail_trial, pid_alive, reap, reap_dead, reap_gone, reap_stale
from signtune.runner.supervisor import RunEvents, RunSummary, run_study
from signtune.runner.worker import DEVICE_LOST, WORKER_GAVE_UP, WorkerStats, run_worker, worker_loop

__all__ = [
    "DEVICE_LOST",
    "WORKER_GAVE_UP",
    "Budget",
    "RunEvents",
    "RunSummary",
    "SharedBudget",
    "StorageBudget",
    "WorkerStats",
    "fail_trial",
    "parse_gpus",
    "pid_alive",
    "plan_workers",
    "reap",
    "reap_dead",
    "reap_gone",
    "reap_stale",
    "run_study",
    "run_worker",
    "worker_loop",
]
