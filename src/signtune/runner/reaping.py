"""Reaping: trials left RUNNING by processes that are gone are failed with a reason, retried
once, and their MLflow runs ended.

- a dead pid on this host (``worker_died``), found by the supervisor at once or by the next
  ``study run`` / ``study reap``;
- a stale heartbeat on any host and any storage (``heartbeat``);
- an orphan: a trial that never named its worker (its process died inside Optuna's ask()).
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune import interrupts
from signtune.hosts import host_id
from signtune.spec import StudySpec
from signtune.storage import create_storage
from signtune.study import open_study, retry_once

ORPHAN_AGE_S = 20.0  # how long a RUNNING trial may go without naming its worker (see reap_dead)

INTERRUPT_ORPHAN_AGE_S = 2.0  # the same after Ctrl-C, once every local worker has stopped

ORPHANED_WORKER_WAIT_S = 30.0


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
    """Fail trials left RUNNING by workers that are gone: on this host by pid, elsewhere by heartbeat.

    Also ends every MLflow run that dead processes left RUNNING, including those an earlier
    reap could not end (MLflow was down then).
    """
    return reap_gone(spec, open_study(spec, create=False), end_runs=True)


def reap_gone(spec: StudySpec, study: optuna.Study, *, end_runs: bool = False) -> list[int]:
    """Fail (and retry once) the RUNNING trials whose process is gone: dead pids on this host
    (reason ``worker_died``), and any host's trials with a stale heartbeat (``heartbeat``).

    Workers of a ``study run`` that was killed stop by themselves within moments; they are
    waited for first, so that a trial one of them is just finishing is not counted twice.
    MLflow is opened to end abandoned runs only when something was reaped, a ``study run`` of
    this host died, or ``end_runs`` asks for it (``study reap``): a clean start stays fast.
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
    reaped = reap_dead(spec, study, {p for p in gone if isinstance(p, int)}, end_runs=end_runs or dead_run)
    if dead_run:
        study.set_user_attr("supervisor", {})
    return sorted(set(reaped) | set(reap_stale(spec, study)))


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

    from signtune.tracking import FailedTrial, Tracker, end_abandoned_runs

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
