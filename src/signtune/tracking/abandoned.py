"""What dead processes leave in MLflow, and what MLflow missed while it failed."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from signtune.tracking.client import Tracker


class FailedTrial(NamedTuple):
    """A trial failed by another process (reaped): what finds its MLflow run and how it ended."""

    number: int
    reason: str
    run_id: str | None = None  # the trial's ``mlflow_run_id`` user attr
    host: str | None = None
    pid: int | None = None


def end_abandoned_runs(
    tracker: Tracker,
    *,
    study_name: str,
    failed: Sequence[FailedTrial],
    host: str,
    pid_alive: Callable[[int], bool],
    trials_running: bool,
    reason: str = "worker_died",
) -> list[str]:
    """End the runs that dead processes left RUNNING; the ids of the runs ended.

    - the run of each ``failed`` trial, as its worker would have (``end_trial``: FAILED, or
      KILLED for ``interrupted``, tags ``signtune.state`` and ``signtune.reason``). A run
      created just before its worker died, before the trial recorded its id, is found by its
      ``signtune.trial``, ``signtune.host`` and ``signtune.pid`` tags;
    - the study's parent run, KILLED with ``signtune.reason``, once the ``study run`` process
      that created it (tags ``signtune.host``/``signtune.pid``) is gone from this host and
      none of its child runs has a live worker here. A parent run without those tags (made by
      an older version) is ended only when no trial of the study is running.

    Runs that already ended are left as they are.
    """
    runs = tracker.running_runs()
    if not runs:
        return []
    ended: list[str] = []
    by_id = {r.info.run_id: r for r in runs}
    by_owner = {
        (r.data.tags.get("signtune.trial"), r.data.tags.get("signtune.host"), r.data.tags.get("signtune.pid")): r
        for r in runs
        if r.data.tags.get("signtune.role") == "trial"
    }
    for t in failed:
        if t.run_id:
            run = by_id.get(t.run_id)
        elif t.host and t.pid:
            run = by_owner.get((str(t.number), t.host, str(t.pid)))
        else:
            run = None
        if run is None or run.info.run_id in ended:
            continue  # ended by its worker, or never created
        state = "interrupted" if t.reason == "interrupted" else "failed"
        tracker.end_trial(run.info.run_id, state=state, reason=t.reason)
        ended.append(run.info.run_id)

    def alive_here(tags: dict[str, str]) -> bool | None:
        """Whether the process named by the tags lives (None: not named, or on another host)."""
        try:
            pid = int(tags["signtune.pid"])
        except (KeyError, ValueError):
            return None
        if tags.get("signtune.host") != host:
            return None
        return pid == os.getpid() or pid_alive(pid)

    for r in runs:
        tags = r.data.tags
        if tags.get("signtune.role") != "study" or tags.get("signtune.study") != study_name:
            continue
        if "signtune.pid" in tags:
            if alive_here(tags) is not False:
                continue  # its `study run` lives, or runs on another host (whose `study reap` ends it)
        elif trials_running:
            continue
        children = [
            c for c in runs if c.data.tags.get("mlflow.parentRunId") == r.info.run_id and c.info.run_id not in ended
        ]
        if any(alive_here(c.data.tags) for c in children):
            continue  # a worker of the dead `study run` still trains
        tracker.client.set_tag(r.info.run_id, "signtune.reason", reason)
        tracker.client.set_terminated(r.info.run_id, status="KILLED")
        ended.append(r.info.run_id)
    return ended


def trials_missing(study: Any) -> list[Any]:
    """The finished trials whose tracking failed (``tracking_gap``) and that no back-fill logged yet."""
    from optuna.trial import TrialState

    done = set(study.user_attrs.get("tracking_backfilled", []))
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if "tracking_gap" in t.user_attrs and t.number not in done
    ]
