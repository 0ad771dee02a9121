"""MLflow tracking: one experiment per study, a parent run per `study run`, a child per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so the
same code serves one process or many."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from signtune.errors import ConfigError, Problem
from signtune.hosts import host_id
from signtune.storage import check_scheme, mask_url
from signtune.tracking.quiet import quiet_mlflow
from signtune.tracking.store import create_sqlite_store

# Trial states -> MLflow run states. Pruned runs end FINISHED and carry the tag
# ``signtune.state=pruned``; MLflow has no pruned state of its own.
RUN_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

_TRACKING_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "mysql", "http", "https", "file", "databricks")


def check_tracking_uri(uri: str) -> tuple[str, str] | None:
    """Return ``(rule and value, fix)`` if ``uri`` is not a tracking URI signtune can use."""
    return check_scheme(uri, _TRACKING_SCHEMES, "e.g. sqlite:///studies/demo/mlflow.db or http://127.0.0.1:5000")


class MetricLogger(Protocol):
    """What the runner and the objective log through: MLflow (``Tracker``) or nothing (``NullTracker``)."""

    parent_run_id: str | None

    @property
    def enabled(self) -> bool: ...

    def defer_study(self, *, study_name: str, storage: str, params: dict[str, Any], tags: dict[str, str]) -> None: ...

    def start_study(
        self, *, study_name: str, storage: str, params: dict[str, Any], tags: dict[str, str]
    ) -> str | None: ...

    def parent_from(self, source: Callable[[], str | None]) -> None: ...

    def ensure_study(self) -> str | None: ...

    def start_trial(self, number: int, *, params: dict[str, Any], tags: dict[str, str]) -> str: ...

    def run_url(self, run_id: str) -> str: ...

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None: ...

    def log_summary(self, run_id: str, metrics: dict[str, float]) -> None: ...

    def end_trial(self, run_id: str, *, state: str, reason: str = "", wall_time_s: float = 0.0) -> None: ...

    def end_study(
        self, *, best_value: float | None, best_params: dict[str, Any], export_dir: Path | None, status: str = ...
    ) -> None: ...

    def backfill(
        self, study: Any, metric: str, numbers: set[int] | None = None, epochs_as: tuple[str, float] | None = None
    ) -> list[int]: ...


class NullTracker:
    """Used when tracking is disabled; every call is a no-op."""

    parent_run_id: str | None = None
    enabled = False

    def start_study(self, **_: Any) -> None:
        return None

    def defer_study(self, **_: Any) -> None:
        return None

    def parent_from(self, source: Callable[[], str | None]) -> None:
        return None

    def ensure_study(self) -> str | None:
        return None

    def backfill(
        self, study: Any, metric: str, numbers: set[int] | None = None, epochs_as: tuple[str, float] | None = None
    ) -> list[int]:
        return []

    def start_trial(self, number: int, *, params: dict[str, Any], tags: dict[str, str]) -> str:
        return ""

    def run_url(self, run_id: str) -> str:
        return ""

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        return None

    def log_summary(self, run_id: str, metrics: dict[str, float]) -> None:
        return None

    def end_trial(self, run_id: str, *, state: str, reason: str = "", wall_time_s: float = 0.0) -> None:
        return None

    def end_study(self, **_: Any) -> None:
        return None


class Tracker:
    """MLflow logger for a study. Cheap to construct; connects on first use."""

    enabled = True

    def __init__(self, uri: str, experiment: str, *, artifact_dir: Path | None = None) -> None:
        problem = check_tracking_uri(uri)
        if problem:
            raise ConfigError(Problem("tracking.uri", problem[0], problem[1]))
        self.uri = uri
        self.experiment = experiment
        self.artifact_dir = artifact_dir
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._experiment_id: str | None = None
        self._study_run: dict[str, Any] | None = None  # the parent run, until something needs it
        self._parent_source: Callable[[], str | None] | None = None

    def defer_study(self, *, study_name: str, storage: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        """Create the study's parent run when the first trial run needs it (or at ``end_study``).

        Importing MLflow and opening its store takes seconds; deferring it keeps that off the
        path to a study's first training step.
        """
        self._study_run = {"study_name": study_name, "storage": storage, "params": params, "tags": tags}

    def parent_from(self, source: Callable[[], str | None]) -> None:
        """Read the parent run id from ``source`` when the first trial run is created (workers)."""
        self._parent_source = source

    def ensure_study(self) -> str | None:
        """Create the deferred parent run now; its id (None when there is none)."""
        self._ensure_parent()
        return self.parent_run_id

    def _ensure_parent(self) -> None:
        if self.parent_run_id is not None:
            return
        if self._study_run is not None:
            study_run, self._study_run = self._study_run, None  # tried once: a failure is not retried
            self.start_study(**study_run)
        elif self._parent_source is not None:
            self.parent_run_id = self._parent_source()
            self._parent_source = None

    @property
    def client(self) -> Any:
        if self._client is None:
            quiet_mlflow()
            from mlflow.tracking import MlflowClient

            quiet_mlflow()  # mlflow configures its loggers on import

            if self.uri.startswith("sqlite:///"):
                create_sqlite_store(Path(self.uri[len("sqlite:///") :]), self.artifact_dir)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                # A tracking server stores artifacts itself (--artifacts-destination), where every
                # host browsing it can read them; a local folder is only right for a local store.
                served = self.uri.startswith(("http://", "https://", "databricks"))
                location = self.artifact_dir.resolve().as_uri() if self.artifact_dir and not served else None
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
                except Exception:  # another process created it first
                    self._experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
        return self._experiment_id

    def start_study(self, *, study_name: str, storage: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id(),
            run_name=f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "signtune.role": "study",
                "signtune.study": study_name,
                "signtune.storage": mask_url(storage),
                # Who runs the study: `study reap` ends the run once this process is gone.
                "signtune.host": host_id(),
                "signtune.pid": str(os.getpid()),
                **tags,
            },
        )
        self.parent_run_id = run.info.run_id
        self._study_run = None
        self._log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def start_trial(self, number: int, *, params: dict[str, Any], tags: dict[str, str]) -> str:
        run_tags = {
            "signtune.role": "trial",
            "signtune.trial": str(number),
            **{f"signtune.{k}": v for k, v in tags.items()},
        }
        self._ensure_parent()
        if self.parent_run_id:
            run_tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(self.experiment_id(), run_name=f"trial-{number}", tags=run_tags)
        self._log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def run_url(self, run_id: str) -> str:
        """Where the run opens in the MLflow UI (``study mlflow-ui`` serves local stores on :5000)."""
        base = self.uri if self.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{mask_url(base).rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if isinstance(v, int | float)]
        self.client.log_batch(run_id, metrics=batch)

    def log_summary(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(f"best_{k}", float(v), now, 0) for k, v in metrics.items() if isinstance(v, int | float)]
        self.client.log_batch(run_id, metrics=batch)

    def end_trial(self, run_id: str, *, state: str, reason: str = "", wall_time_s: float = 0.0) -> None:
        if not run_id:
            return
        self.client.set_tag(run_id, "signtune.state", state)
        if reason:
            self.client.set_tag(run_id, "signtune.reason", reason)
        self.client.set_terminated(run_id, status=RUN_STATUS.get(state, "FAILED"))

    def end_study(
        self,
        *,
        best_value: float | None,
        best_params: dict[str, Any],
        export_dir: Path | None,
        status: str = "FINISHED",
    ) -> None:
        self._ensure_parent()
        if not self.parent_run_id:
            return
        run_id = self.parent_run_id
        if best_value is not None:
            self.client.log_metric(run_id, "best_value", best_value)
            for k, v in best_params.items():
                self.client.set_tag(run_id, f"best.{k}", str(v))
        if export_dir is not None and export_dir.is_dir():
            self.client.log_artifacts(run_id, str(export_dir), artifact_path="export")
        self.client.set_terminated(run_id, status=status)

    def running_runs(self) -> list[Any]:
        """The experiment's runs in status RUNNING; none when there is no store or experiment yet.

        Creates nothing: no SQLite file, no experiment (and skips MLflow's import without a store).
        """
        if self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///") :]).is_file():
            return []
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, mask_url(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def backfill(
        self, study: Any, metric: str, numbers: set[int] | None = None, epochs_as: tuple[str, float] | None = None
    ) -> list[int]:
        """Log to MLflow the trials it missed while it failed; the numbers of the trials logged.

        Optuna is the record: each trial's run (its own, if it was created, or a new one tagged
        ``signtune.backfilled``) gets the params, the objective ``metric`` per epoch (the epochs
        not logged yet), the final value and the trial's end state and reason. Other per-epoch
        metrics of those trials were never stored anywhere and stay missing. Done trials are
        listed in the study's ``tracking_backfilled`` user attr, so each is logged once.
        ``numbers`` picks the finished trials to log instead (a rebuilt store misses them all).
        ``epochs_as``: the metric the intermediate values hold and the sign that gives it back
        (``("val_loss", -1.0)`` when the pruner compares a negated val loss); None: ``metric``.
        """
        from optuna.trial import TrialState

        from signtune.tracking.abandoned import trials_missing

        if numbers is None:
            missing = trials_missing(study)
        else:
            missing = [t for t in study.get_trials(deepcopy=False) if t.number in numbers and t.state.is_finished()]
        if not missing:
            return []
        epoch_metric, sign = epochs_as or (metric, 1.0)
        filled: list[int] = []
        try:
            for t in missing:
                run_id = _existing_run(self, t.user_attrs.get("mlflow_run_id"), t.number)
                owner = ("host", "worker", "pid", "subset", "epochs")
                tags = {k: str(t.user_attrs[k]) for k in owner if k in t.user_attrs}
                if run_id is None:
                    run_id = self.start_trial(t.number, params=dict(t.params), tags={**tags, "backfilled": "true"})
                    logged: set[int] = set()
                else:
                    logged = {m.step for m in self.client.get_metric_history(run_id, epoch_metric)}
                    self.client.set_tag(run_id, "signtune.backfilled", "true")
                for step, value in sorted(t.intermediate_values.items()):
                    if step not in logged:
                        self.log_epoch(run_id, {epoch_metric: sign * value}, step)
                if t.state == TrialState.COMPLETE and t.value is not None:
                    self.log_summary(run_id, {metric: t.value})
                reason = str(t.user_attrs.get("reason", ""))
                state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
                    t.state, "interrupted" if reason in ("interrupted", "supervisor_gone") else "failed"
                )
                self.end_trial(run_id, state=state, reason=reason)
                filled.append(t.number)
        finally:
            if filled:
                done = set(study.user_attrs.get("tracking_backfilled", []))
                study.set_user_attr("tracking_backfilled", sorted(done | set(filled)))
        return filled


def _existing_run(tracker: Tracker, run_id: Any, number: int) -> str | None:
    """The trial's run: its recorded ``mlflow_run_id``, else one an earlier back-fill created
    (tagged ``signtune.backfilled``) before it was cut short; None when there is neither."""
    if isinstance(run_id, str) and run_id:
        try:
            return str(tracker.client.get_run(run_id).info.run_id)
        except Exception:  # never created, or the store was rebuilt since
            pass
    found = tracker.client.search_runs(
        [tracker.experiment_id()],
        filter_string=f"tags.`signtune.trial` = '{number}' AND tags.`signtune.backfilled` = 'true'",
        max_results=1,
    )
    return str(found[0].info.run_id) if found else None
