"""MLflow tracking: one experiment per study, a parent run per `study run`, a child per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so the
same code serves one process or many.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from signtune.errors import ConfigError, Problem
from signtune.storage import create_sqlite_atomically, mask_url, sqlite_problem

if TYPE_CHECKING:
    from signtune.promote import PromoteResult
    from signtune.spec import StudySpec

# Trial states -> MLflow run states. Pruned runs end FINISHED and carry the tag
# ``signtune.state=pruned``; MLflow has no pruned state of its own.
RUN_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_TRACKING_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "mysql", "http", "https", "file", "databricks")


def check_tracking_uri(uri: str) -> tuple[str, str] | None:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in _TRACKING_SCHEMES:
        return (
            f"must start with one of {[s + '://' for s in _TRACKING_SCHEMES]}, but got {mask_url(uri)!r}",
            "e.g. sqlite:///studies/demo/mlflow.db or http://127.0.0.1:5000",
        )
    return None


class NullTracker:
    """Used when tracking is disabled; every call is a no-op."""

    parent_run_id: str | None = None

    def start_study(self, **_: Any) -> None:
        return None

    def defer_study(self, **_: Any) -> None:
        return None

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
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            _quiet_mlflow()  # mlflow configures its loggers on import

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
                "signtune.host": os.environ.get("SIGNTUNE_HOST") or socket.gethostname(),
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


def create_sqlite_store(path: Path, artifact_dir: Path | None) -> bool:
    """Create a local MLflow store at ``path`` whole or not at all; whether this call made it.

    MLflow builds a new store by running its schema migrations one by one; cut off halfway (a
    Ctrl-C, a kill), they leave a store that every later run fails on. Here they run on a
    temporary file that is linked into place only when complete.
    """
    if path.exists():
        return False
    _quiet_mlflow()
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = (artifact_dir or path.parent / "mlartifacts").resolve().as_uri()

    def build(tmp: Path) -> None:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", root)
        store.engine.dispose()

    return create_sqlite_atomically(path, build)


def schema_revisions() -> tuple[frozenset[str], str | None]:
    """The MLflow schema revisions the installed MLflow knows, and its head revision.

    Read from MLflow's migration files without importing MLflow (a check at start-up must be cheap).
    """
    import importlib.util
    import re

    found = importlib.util.find_spec("mlflow")
    if found is None or not found.submodule_search_locations:
        return frozenset(), None
    folder = Path(next(iter(found.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    revisions: set[str] = set()
    downs: set[str] = set()
    for file in folder.glob("*.py"):
        text = file.read_text(encoding="utf-8", errors="replace")
        rev = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.MULTILINE)
        down = re.search(r"^down_revision\s*=\s*['\"](\w+)['\"]", text, re.MULTILINE)
        if rev:
            revisions.add(rev.group(1))
        if down:
            downs.add(down.group(1))
    heads = revisions - downs
    return frozenset(revisions), (next(iter(heads)) if len(heads) == 1 else None)


class StoreProblem(NamedTuple):
    """What is wrong with a tracking store, and how ``study doctor --repair`` mends it."""

    message: str
    repair: Literal["rebuild", "upgrade"]


def store_problem(uri: str) -> StoreProblem | None:
    """A local (SQLite) MLflow store's damage or schema mismatch; None when healthy, absent or remote.

    Reads the file with sqlite3 only: no MLflow import, nothing written.
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///") :])
    if not path.is_file():
        return None
    problem = sqlite_problem(path)
    if problem:
        return StoreProblem(f"{path} {problem}", "rebuild")
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        if leftover:
            return StoreProblem(
                f"{path}: a schema migration was cut off halfway (table {leftover[0]} left behind)", "rebuild"
            )
        if "alembic_version" not in tables or "runs" not in tables:
            return StoreProblem(f"{path} holds no complete MLflow schema (tables: {sorted(tables)[:6]})", "rebuild")
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        con.close()
    known, head = schema_revisions()
    version = row[0] if row else None
    if version is None:
        return StoreProblem(f"{path} records no schema version", "rebuild")
    if known and version not in known:
        return StoreProblem(
            f"{path} has schema revision {version}, which this MLflow does not know (a newer MLflow made it)",
            "rebuild",
        )
    if head and version != head:
        return StoreProblem(f"{path} has schema revision {version}, older than this MLflow's {head}", "upgrade")
    return None


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")


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


def backfill(tracker: Tracker, study: Any, metric: str, numbers: set[int] | None = None) -> list[int]:
    """Log to MLflow the trials it missed while it failed; the numbers of the trials logged.

    Optuna is the record: each trial's run (its own, if it was created, or a new one tagged
    ``signtune.backfilled``) gets the params, the objective ``metric`` per epoch (the epochs
    not logged yet), the final value and the trial's end state and reason. Other per-epoch
    metrics of those trials were never stored anywhere and stay missing. Done trials are
    listed in the study's ``tracking_backfilled`` user attr, so each is logged once.
    ``numbers`` picks the finished trials to log instead (a rebuilt store misses them all).
    """
    from optuna.trial import TrialState

    if numbers is None:
        missing = trials_missing(study)
    else:
        missing = [t for t in study.get_trials(deepcopy=False) if t.number in numbers and t.state.is_finished()]
    if not missing:
        return []
    filled: list[int] = []
    try:
        for t in missing:
            run_id = _existing_run(tracker, t.user_attrs.get("mlflow_run_id"))
            tags = {k: str(t.user_attrs[k]) for k in ("host", "worker", "pid", "subset", "epochs") if k in t.user_attrs}
            if run_id is None:
                run_id = tracker.start_trial(t.number, params=dict(t.params), tags={**tags, "backfilled": "true"})
                logged: set[int] = set()
            else:
                logged = {m.step for m in tracker.client.get_metric_history(run_id, metric)}
                tracker.client.set_tag(run_id, "signtune.backfilled", "true")
            for step, value in sorted(t.intermediate_values.items()):
                if step not in logged:
                    tracker.log_epoch(run_id, {metric: value}, step)
            if t.state == TrialState.COMPLETE and t.value is not None:
                tracker.log_summary(run_id, {metric: t.value})
            reason = str(t.user_attrs.get("reason", ""))
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
                t.state, "interrupted" if reason in ("interrupted", "supervisor_gone") else "failed"
            )
            tracker.end_trial(run_id, state=state, reason=reason)
            filled.append(t.number)
    finally:
        if filled:
            done = set(study.user_attrs.get("tracking_backfilled", []))
            study.set_user_attr("tracking_backfilled", sorted(done | set(filled)))
    return filled


def _existing_run(tracker: Tracker, run_id: Any) -> str | None:
    if not isinstance(run_id, str) or not run_id:
        return None
    try:
        return str(tracker.client.get_run(run_id).info.run_id)
    except Exception:  # never created, or the store was rebuilt since
        return None


# --- promote-best's run -----------------------------------------------------------------------

# What a promoted folder may hold, logged as the run's ``model`` artifacts when present (a
# plug-in's promotion has no tokenizer or predictions).
PROMOTED_ARTIFACTS = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",  # a Hugging Face tokenizer's (a t5's) special tokens
    "metrics.json",
    "predictions.tsv",
    "provenance.json",
)


def log_promotion(spec: StudySpec, result: PromoteResult) -> str:
    """One MLflow run for the promotion: tags naming the source study and trials, test metrics,
    the promoted model as artifacts, and a model-registry version where the store has one."""
    import contextlib

    tracker = Tracker(spec.tracking_uri, spec.experiment, artifact_dir=spec.dir / "mlartifacts")
    client = tracker.client
    trials = sorted({c.trial for c in result.candidates})
    run = client.create_run(
        tracker.experiment_id(),
        run_name=f"promote-trial-{result.winner.trial}",
        tags={
            "signtune.role": "promote",
            "signtune.study": spec.name,
            "signtune.source_trials": ",".join(map(str, trials)),
            "signtune.winner_trial": str(result.winner.trial),
            "signtune.winner_seed": str(result.winner.seed),
            "signtune.bleu_signature": str(result.test.get("bleu_signature", "")),
        },
    )
    run_id = run.info.run_id
    for key, value in result.test.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "beam_size":
            client.log_metric(run_id, key if key.startswith("test_") else f"test_{key}", float(value))
    client.log_metric(run_id, result.metric, result.winner.value)
    for name in PROMOTED_ARTIFACTS:
        if (result.out_dir / name).is_file():
            client.log_artifact(run_id, str(result.out_dir / name), artifact_path="model")
    client.set_terminated(run_id, status="FINISHED")
    name = f"signtune-{spec.name}"
    with contextlib.suppress(Exception):  # already registered
        client.create_registered_model(name)
    with contextlib.suppress(Exception):  # stores without a model registry skip this
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    return str(run_id)
