"""MLflow tracking: every MLflow call of signtune lives in this package.

| module | owns |
|---|---|
| ``client`` | ``Tracker`` (experiment, runs, back-fill), ``NullTracker``, ``MetricLogger`` |
| ``store`` | the local SQLite store: atomic creation, damage and schema checks without importing MLflow |
| ``abandoned`` | ending the runs dead processes left RUNNING; the trials MLflow missed |
| ``promotion`` | promote-best's run |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from signtune.tracking.abandoned import FailedTrial, end_abandoned_runs, trials_missing
from signtune.tracking.client import RUN_STATUS, MetricLogger, NullTracker, Tracker, check_tracking_uri
from signtune.tracking.promotion import log_promotion
from signtune.tracking.store import StoreProblem, create_sqlite_store, schema_revisions, store_problem

if TYPE_CHECKING:
    from signtune.spec import StudySpec

__all__ = [
    "RUN_STATUS",
    "FailedTrial",
    "MetricLogger",
    "NullTracker",
    "StoreProblem",
    "Tracker",
    "check_tracking_uri",
    "create_sqlite_store",
    "end_abandoned_runs",
    "log_promotion",
    "make_tracker",
    "schema_revisions",
    "store_problem",
    "trials_missing",
]


def make_tracker(spec: StudySpec, parent_run_id: str | None = None) -> MetricLogger:
    """The study's logger: MLflow at ``spec.tracking_uri``, or nothing when tracking is off."""
    if not spec.tracking.enabled:
        return NullTracker()
    tracker = Tracker(spec.tracking_uri, spec.experiment, artifact_dir=spec.dir / "mlartifacts")
    tracker.parent_run_id = parent_run_id
    return tracker
