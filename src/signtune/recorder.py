"""A trial's bookkeeping: who runs it, what it ran at, its MLflow run, and how it ended.

Every write goes to the trial's user attrs (Optuna is the record) and, when tracking is on,
to the trial's MLflow run. Tracking never fails training: a failed MLflow call is recorded
as the trial's ``tracking_gap`` (back-filled from the study later) and the trial goes on
untracked.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna

from signtune.tracking import MetricLogger

T = TypeVar("T")
# After this many trials in a row whose tracking failed, a worker stops calling MLflow (each
# failing call can take a while against a server that is down); later trials record the gap.
TRACKING_OFF_AFTER = 3


@dataclass
class TrackingHealth:
    """How tracking fares in this process: trials in a row whose tracking failed."""

    failures: int = 0

    @property
    def off(self) -> bool:
        return self.failures >= TRACKING_OFF_AFTER


class TrialRecorder:
    """Writes one trial's attrs and MLflow run; one per trial."""

    def __init__(self, trial: optuna.Trial, tracker: MetricLogger, health: TrackingHealth) -> None:
        self.trial = trial
        self.tracker = tracker
        self.health = health
        self.started = time.perf_counter()
        self.params: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.run_id: str | None = None  # created when the trial first has something to log
        self.gap: str | None = None  # the first tracking failure of this trial
        self.epochs_seen = 0

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        """User attrs of the trial, also the tags of its MLflow run when that is created."""
        for key, value in attrs.items():
            self.trial.set_user_attr(key, value)
        self.tags.update({k: str(v) for k, v in attrs.items()})

    def track(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None once this trial's tracking failed (the failure is recorded)."""
        if self.gap is not None:
            return None
        if self.health.off:
            self._record_gap(f"tracking off in this worker after {TRACKING_OFF_AFTER} failed trials")
            return None
        try:
            return call()
        except Exception as exc:
            self._record_gap(f"{what}: {type(exc).__name__}: {exc}"[:500])
            self.health.failures += 1
            return None

    def _record_gap(self, text: str) -> None:
        self.gap = text
        self.trial.set_user_attr("tracking_gap", text)

    def run(self) -> str:
        """The trial's MLflow run id ("" when tracking is off or failed)."""
        if self.run_id is None:
            number, params, tags = self.trial.number, self.params, self.tags
            made = self.track("create the run", lambda: self.tracker.start_trial(number, params=params, tags=tags))
            self.run_id = made or ""
            if self.run_id:
                run_id = self.run_id
                self.trial.set_user_attr("mlflow_run_id", run_id)
                url = self.track("read the run's URL", lambda: self.tracker.run_url(run_id))
                _save_note(self.trial, f"MLflow run [`{run_id}`]({url}) (open with `study mlflow-ui`)")
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs_seen = epoch
        run = self.run()
        if run:
            self.track(f"log epoch {epoch}", lambda: self.tracker.log_epoch(run, metrics, epoch))

    def finish(self, state: str, reason: str = "", **extra: Any) -> None:
        """Record how the trial ended (wall time, epochs, reason, extra attrs) and end its run."""
        wall = round(time.perf_counter() - self.started, 3)
        self.trial.set_user_attr("wall_time_s", wall)
        self.trial.set_user_attr("epochs_run", extra.pop("epochs_run", self.epochs_seen))
        if reason:
            self.trial.set_user_attr("reason", reason)
        for key, value in extra.items():
            self.trial.set_user_attr(key, value)
        run = self.run()
        if run:
            self.track("end the run", lambda: self.tracker.end_trial(run, state=state, reason=reason, wall_time_s=wall))
        if self.gap is None:
            self.health.failures = 0

    def log_summary(self, metrics: dict[str, float]) -> None:
        run = self.run()
        if run:
            self.track("log the summary", lambda: self.tracker.log_summary(run, metrics))


class Heartbeat:
    """Records the running trial's ``heartbeat`` user attr (epoch seconds) every
    ``HEARTBEAT_INTERVAL_S`` from a daemon thread, so that ``runner.reap_stale`` can tell a
    trial whose host died from a slow one, on every storage. A failed write is retried at the
    next beat."""

    def __init__(self, trial: optuna.Trial) -> None:
        from signtune.storage import HEARTBEAT_INTERVAL_S

        self.trial = trial
        self.interval = HEARTBEAT_INTERVAL_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="signtune-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.trial.set_user_attr("heartbeat", round(time.time(), 1))

    def __enter__(self) -> Heartbeat:
        with contextlib.suppress(Exception):
            self.trial.set_user_attr("heartbeat", round(time.time(), 1))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _save_note(trial: optuna.Trial, body: str) -> None:
    """A note on the trial's page in optuna-dashboard; never fails the trial."""
    try:
        from optuna_dashboard import save_note

        save_note(trial, body)
    except Exception:
        return
