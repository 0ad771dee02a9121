"""``signtune.tracking`` against a real local MLflow store (SQLite).

Creating an MLflow store (its import and schema migrations) takes seconds, so the module
builds one and shares it: each test works in an experiment of its own. Damaged stores for
``store_problem`` are copies of the pristine store, altered with ``sqlite3``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from signtune.errors import ConfigError
from signtune.tracking import (
    RUN_STATUS,
    FailedTrial,
    Tracker,
    create_sqlite_store,
    end_abandoned_runs,
    schema_revisions,
    store_problem,
)


@dataclass(frozen=True)
class Store:
    path: Path
    artifacts: Path
    created: bool
    files: list[str]  # the store's folder right after it was created
    pristine: Path  # a copy taken before any test wrote to the store

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.path}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    path = root / "mlflow.db"
    created = create_sqlite_store(path, root / "mlartifacts")
    files = sorted(p.name for p in root.iterdir())
    pristine = tmp_path_factory.mktemp("pristine") / "mlflow.db"
    shutil.copyfile(path, pristine)
    return Store(path, root / "mlartifacts", created, files, pristine)


def tracker_for(store: Store) -> Tracker:
    """A tracker on the shared store, in an experiment no other test uses."""
    return Tracker(store.uri, f"exp-{uuid.uuid4().hex[:8]}", artifact_dir=store.artifacts)


def runs_of(tracker: Tracker) -> list[Any]:
    return list(tracker.client.search_runs([tracker.experiment_id()], max_results=1000))


def trial_runs(tracker: Tracker) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for r in runs_of(tracker):
        if r.data.tags.get("signtune.role") == "trial":
            out.setdefault(int(r.data.tags["signtune.trial"]), []).append(r)
    return out


def history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def altered(store: Store, tmp_path: Path, *sql: str) -> str:
    """A copy of the pristine store with ``sql`` applied; its URI."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(store.pristine, path)
    con = sqlite3.connect(path)
    try:
        for statement in sql:
            con.execute(statement)
        con.commit()
    finally:
        con.close()
    return f"sqlite:///{path}"


# ----------------------------------------------------------------------------------------------
# Creating a store, and telling a healthy one from a damaged one


def test_a_new_store_is_created_whole(store: Store) -> None:
    assert store.created is True
    assert store.files == ["mlflow.db"], "no temporary file, journal or WAL is left beside the store"
    assert store_problem(store.uri) is None
    con = sqlite3.connect(store.pristine)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        con.close()
    assert {"runs", "experiments", "metrics", "params", "tags"} <= tables
    assert not [t for t in tables if t.startswith("_alembic_tmp_")]
    assert version == schema_revisions()[1], "every migration ran: the store is at MLflow's head revision"


def test_an_existing_store_or_file_is_left_as_it_is(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    shutil.copyfile(store.pristine, path)
    before = (digest(path), path.stat().st_mtime_ns)
    assert create_sqlite_store(path, tmp_path / "mlartifacts") is False
    assert (digest(path), path.stat().st_mtime_ns) == before

    other = tmp_path / "other" / "mlflow.db"
    other.parent.mkdir()
    other.write_bytes(b"not mine to replace")
    assert create_sqlite_store(other, None) is False
    assert other.read_bytes() == b"not mine to replace"
    assert sorted(p.name for p in other.parent.iterdir()) == ["mlflow.db"]


def test_schema_revisions_finds_one_head() -> None:
    known, head = schema_revisions()
    assert head is not None and head in known
    assert len(known) > 10, "MLflow ships dozens of migrations"
    assert all(len(r) >= 8 and r.isalnum() for r in known)


def test_store_problem_is_none_for_healthy_absent_and_remote_stores(store: Store, tmp_path: Path) -> None:
    assert store_problem(altered(store, tmp_path)) is None
    missing = tmp_path / "none" / "mlflow.db"
    assert store_problem(f"sqlite:///{missing}") is None
    assert not missing.parent.exists(), "checking a store creates nothing"
    assert store_problem("http://127.0.0.1:5000") is None


def test_a_cut_off_migration_needs_a_rebuild(store: Store, tmp_path: Path) -> None:
    uri = altered(store, tmp_path, "CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
    path = tmp_path / "mlflow.db"
    before = digest(path)
    problem = store_problem(uri)
    assert problem is not None and problem.repair == "rebuild"
    assert "_alembic_tmp_experiments" in problem.message and str(path) in problem.message
    assert digest(path) == before, "the check only reads"


def test_a_file_that_is_not_sqlite_needs_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"this is no database\n" * 200)
    problem = store_problem(f"sqlite:///{path}")
    assert problem is not None and problem.repair == "rebuild"
    assert str(path) in problem.message


def test_a_database_without_mlflow_tables_needs_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.close()
    problem = store_problem(f"sqlite:///{path}")
    assert problem is not None and problem.repair == "rebuild"
    assert "no complete MLflow schema" in problem.message


def test_a_store_from_a_newer_mlflow_needs_a_rebuild(store: Store, tmp_path: Path) -> None:
    uri = altered(store, tmp_path, "UPDATE alembic_version SET version_num = 'f00dfacecafe'")
    problem = store_problem(uri)
    assert problem is not None and problem.repair == "rebuild"
    assert "f00dfacecafe" in problem.message and "does not know" in problem.message


def test_a_store_from_an_older_mlflow_needs_an_upgrade(store: Store, tmp_path: Path) -> None:
    known, head = schema_revisions()
    older = sorted(known - {head})[0]
    uri = altered(store, tmp_path, f"UPDATE alembic_version SET version_num = '{older}'")
    problem = store_problem(uri)
    assert problem is not None and problem.repair == "upgrade"
    assert older in problem.message and str(head) in problem.message


# ----------------------------------------------------------------------------------------------
# Runs


def test_tracker_refuses_an_unknown_uri_scheme() -> None:
    with pytest.raises(ConfigError, match=r"tracking\.uri"):
        Tracker("ftp://example.org/mlflow", "x")


def test_running_runs_of_an_absent_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    assert Tracker(f"sqlite:///{path}", "x").running_runs() == []
    assert not path.exists()


def test_trial_runs_carry_tags_params_metrics_and_end_state(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNTUNE_HOST", "node-9")
    tracker = tracker_for(store)
    tracker.defer_study(
        study_name="demo",
        storage="postgresql+psycopg://bob:hunter2@db/optuna",
        params={"data.subset": 0.3},
        tags={"signtune.spec_hash": "abc"},
    )
    assert runs_of(tracker) == [], "the study's run is deferred until a trial needs it"
    run_id = tracker.start_trial(
        4, params={"optim.lr": 0.001, "db": "postgresql+psycopg://bob:hunter2@db/x"}, tags={"worker": "2", "pid": "77"}
    )
    parent = tracker.parent_run_id
    assert parent is not None

    tracker.log_epoch(run_id, {"score": 0.1, "loss": 2.0}, 1)
    tracker.log_epoch(run_id, {"score": 0.4, "loss": 1.0, "note": "text is skipped"}, 2)  # type: ignore[dict-item]
    tracker.log_summary(run_id, {"score": 0.4})
    tracker.end_trial(run_id, state="complete", wall_time_s=1.5)

    run = tracker.client.get_run(run_id)
    tags = run.data.tags
    assert tags["signtune.role"] == "trial" and tags["signtune.trial"] == "4"
    assert tags["signtune.worker"] == "2" and tags["signtune.pid"] == "77"
    assert tags["mlflow.parentRunId"] == parent
    assert tags["signtune.state"] == "complete" and "signtune.reason" not in tags
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["db"] == "postgresql+psycopg://bob:***@db/x", "passwords never reach MLflow"
    assert history(tracker, run_id, "score") == [(1, 0.1), (2, 0.4)]
    assert history(tracker, run_id, "loss") == [(1, 2.0), (2, 1.0)]
    assert "note" not in run.data.metrics
    assert run.data.metrics["best_score"] == 0.4
    assert run.info.status == "FINISHED"

    study_run = tracker.client.get_run(parent)
    st = study_run.data.tags
    assert st["signtune.role"] == "study" and st["signtune.study"] == "demo"
    assert st["signtune.storage"] == "postgresql+psycopg://bob:***@db/optuna"
    assert st["signtune.host"] == "node-9" and st["signtune.pid"] == str(os.getpid())
    assert st["signtune.spec_hash"] == "abc"
    assert study_run.data.params == {"data.subset": "0.3"}
    assert study_run.info.status == "RUNNING"

    url = tracker.run_url(run_id)
    assert url == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id()}/runs/{run_id}"

    tracker.end_study(best_value=0.4, best_params={"optim.lr": 0.001}, export_dir=None)
    study_run = tracker.client.get_run(parent)
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["best_value"] == 0.4 and study_run.data.tags["best.optim.lr"] == "0.001"


def test_the_experiment_keeps_its_artifacts_beside_the_store(store: Store) -> None:
    tracker = tracker_for(store)
    tracker.experiment_id()
    exp = tracker.client.get_experiment_by_name(tracker.experiment)
    assert exp.artifact_location == store.artifacts.resolve().as_uri()
    again = Tracker(store.uri, tracker.experiment, artifact_dir=store.artifacts)
    assert again.experiment_id() == tracker.experiment_id(), "a second process finds the same experiment"


def test_each_trial_state_ends_its_run_with_the_matching_status(store: Store) -> None:
    tracker = tracker_for(store)
    cases = [*RUN_STATUS.items(), ("something-else", "FAILED")]
    ids = {}
    for number, (state, _) in enumerate(cases):
        ids[state] = tracker.start_trial(number, params={}, tags={})
        tracker.end_trial(ids[state], state=state, reason=f"why-{state}")
    tracker.end_trial("", state="failed")  # no run: nothing to end, no error
    for state, status in cases:
        run = tracker.client.get_run(ids[state])
        assert run.info.status == status, state
        assert run.data.tags["signtune.state"] == state and run.data.tags["signtune.reason"] == f"why-{state}"
    assert RUN_STATUS == {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


# ----------------------------------------------------------------------------------------------
# Back-fill from Optuna


X = {"x": FloatDistribution(0.0, 1.0)}


def add_trial(study: optuna.Study, state: TrialState, **kw: Any) -> None:
    study.add_trial(create_trial(state=state, params={"x": 0.5}, distributions=X, **kw))


def gap(**attrs: Any) -> dict[str, Any]:
    return {"tracking_gap": "create the run: ConnectionError: down", "host": "h0", "worker": "1", **attrs}


def test_backfill_logs_each_gap_trial_once_from_the_study(store: Store) -> None:
    tracker = tracker_for(store)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    add_trial(study, TrialState.COMPLETE, value=0.3, intermediate_values={1: 0.1, 2: 0.2}, user_attrs=gap(epochs=2))
    add_trial(study, TrialState.PRUNED, intermediate_values={1: 0.05}, user_attrs=gap(reason="pruned"))
    add_trial(study, TrialState.FAIL, user_attrs=gap(reason="supervisor_gone"))
    add_trial(study, TrialState.COMPLETE, value=0.9, intermediate_values={1: 0.9}, user_attrs={"host": "h0"})
    add_trial(study, TrialState.FAIL, user_attrs=gap(reason="oom"))
    # Trial 5 got its run and its first epoch logged before MLflow went away.
    live = tracker.start_trial(5, params={"x": 0.5}, tags={"host": "h0"})
    tracker.log_epoch(live, {"score": 0.3}, 1)
    add_trial(
        study, TrialState.COMPLETE, value=0.4, intermediate_values={1: 0.3, 2: 0.4}, user_attrs=gap(mlflow_run_id=live)
    )
    running = study.ask()  # still running: its gap is filled when it ends
    running.set_user_attr("tracking_gap", "x")

    assert tracker.backfill(study, "score") == [0, 1, 2, 4, 5]
    assert study.user_attrs["tracking_backfilled"] == [0, 1, 2, 4, 5]

    runs = trial_runs(tracker)
    assert sorted(runs) == [0, 1, 2, 4, 5] and all(len(v) == 1 for v in runs.values())
    (r0,) = runs[0]
    assert r0.data.params == {"x": "0.5"}
    assert r0.data.tags["signtune.backfilled"] == "true" and r0.data.tags["signtune.host"] == "h0"
    assert r0.data.tags["signtune.epochs"] == "2"
    assert history(tracker, r0.info.run_id, "score") == [(1, 0.1), (2, 0.2)]
    assert r0.data.metrics["best_score"] == 0.3
    assert (r0.info.status, r0.data.tags["signtune.state"]) == ("FINISHED", "complete")
    (r1,) = runs[1]
    assert (r1.info.status, r1.data.tags["signtune.state"], r1.data.tags["signtune.reason"]) == (
        "FINISHED",
        "pruned",
        "pruned",
    )
    assert "best_score" not in r1.data.metrics
    (r2,) = runs[2]
    assert (r2.info.status, r2.data.tags["signtune.state"]) == ("KILLED", "interrupted")
    assert r2.data.tags["signtune.reason"] == "supervisor_gone"
    (r4,) = runs[4]
    assert (r4.info.status, r4.data.tags["signtune.reason"]) == ("FAILED", "oom")
    # The trial's own run is completed, not duplicated: epoch 1 is not logged twice.
    (r5,) = runs[5]
    assert r5.info.run_id == live
    assert history(tracker, live, "score") == [(1, 0.3), (2, 0.4)]
    assert r5.data.tags["signtune.backfilled"] == "true" and r5.info.status == "FINISHED"

    # Once logged, never again.
    n_runs = len(runs_of(tracker))
    assert tracker.backfill(study, "score") == []
    assert len(runs_of(tracker)) == n_runs
    assert history(tracker, r0.info.run_id, "score") == [(1, 0.1), (2, 0.2)]

    # `numbers` picks finished trials whatever their gap (a rebuilt store misses them all).
    assert tracker.backfill(study, "score", numbers={3, running.number}) == [3]
    (r3,) = trial_runs(tracker)[3]
    assert r3.data.metrics["best_score"] == 0.9 and r3.info.status == "FINISHED"
    assert study.user_attrs["tracking_backfilled"] == [0, 1, 2, 3, 4, 5]


class FailsOnSecondEnd(Tracker):
    """MLflow goes away again while a back-fill runs: the second run's end fails."""

    ends = 0

    def end_trial(self, run_id: str, *, state: str, reason: str = "", wall_time_s: float = 0.0) -> None:
        self.ends += 1
        if self.ends == 2:
            raise ConnectionError("MLflow went away again")
        super().end_trial(run_id, state=state, reason=reason, wall_time_s=wall_time_s)


def cut_short_backfill(store: Store) -> tuple[Tracker, optuna.Study]:
    """Three gap trials; the first back-fill logs trial 0, fails on trial 1; the second runs whole."""
    tracker = FailsOnSecondEnd(store.uri, f"exp-{uuid.uuid4().hex[:8]}", artifact_dir=store.artifacts)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    for value in (0.1, 0.2, 0.3):
        add_trial(study, TrialState.COMPLETE, value=value, intermediate_values={1: value}, user_attrs=gap())
    with pytest.raises(ConnectionError):
        tracker.backfill(study, "score")
    assert study.user_attrs["tracking_backfilled"] == [0]
    assert tracker.backfill(study, "score") == [1, 2]
    return tracker, study


def test_a_backfill_cut_short_records_what_it_logged(store: Store) -> None:
    tracker, study = cut_short_backfill(store)
    assert study.user_attrs["tracking_backfilled"] == [0, 1, 2]
    runs = trial_runs(tracker)
    assert sorted(runs) == [0, 1, 2]
    assert len(runs[0]) == 1 and len(runs[2]) == 1


def test_a_backfill_cut_short_leaves_one_finished_run_per_trial(store: Store) -> None:
    tracker, _ = cut_short_backfill(store)
    runs = trial_runs(tracker)
    assert len(runs[1]) == 1
    assert all(r.info.status == "FINISHED" for rs in runs.values() for r in rs)


# ----------------------------------------------------------------------------------------------
# Runs left RUNNING by dead processes


def test_end_abandoned_runs_ends_a_dead_processes_runs(store: Store) -> None:
    tracker = tracker_for(store)
    client = tracker.client

    def study_run(name: str, pid: int) -> str:
        tags = {"signtune.role": "study", "signtune.study": name, "signtune.host": "h1", "signtune.pid": str(pid)}
        return str(client.create_run(tracker.experiment_id(), tags=tags).info.run_id)

    def trial_run(parent: str, number: int, pid: int) -> str:
        tracker.parent_run_id = parent
        return tracker.start_trial(number, params={}, tags={"host": "h1", "pid": str(pid)})

    dead_parent = study_run("s", pid=111)
    by_id = trial_run(dead_parent, 0, pid=111)  # its trial recorded the run id
    by_tags = trial_run(dead_parent, 1, pid=111)  # created just before the worker died
    done = trial_run(dead_parent, 2, pid=111)
    tracker.end_trial(done, state="complete")
    # Another study in the same experiment whose `study run` died but whose worker lives on.
    orphan_parent = study_run("s2", pid=222)
    alive_child = trial_run(orphan_parent, 0, pid=333)

    ended = end_abandoned_runs(
        tracker,
        study_name="s",
        failed=[
            FailedTrial(0, "worker_died", run_id=by_id),
            FailedTrial(1, "interrupted", host="h1", pid=111),
            FailedTrial(9, "worker_died"),  # never got a run: nothing to do
        ],
        host="h1",
        pid_alive=lambda pid: pid == 333,
        trials_running=False,
    )
    assert sorted(ended) == sorted([by_id, by_tags, dead_parent])

    def state(run_id: str) -> tuple[str, str | None]:
        run = client.get_run(run_id)
        return run.info.status, run.data.tags.get("signtune.reason")

    assert state(by_id) == ("FAILED", "worker_died")
    assert state(by_tags) == ("KILLED", "interrupted")
    assert state(dead_parent) == ("KILLED", "worker_died")
    assert state(done)[0] == "FINISHED", "a run that already ended is left as it is"
    assert state(orphan_parent)[0] == "RUNNING", "another study's run is not this call's to end"
    assert state(alive_child)[0] == "RUNNING"

    def end_s2(host: str, alive: set[int]) -> list[str]:
        return end_abandoned_runs(
            tracker, study_name="s2", failed=[], host=host, pid_alive=lambda pid: pid in alive, trials_running=False
        )

    assert end_s2("h1", {333}) == [], "a study run whose worker still trains here is left running"
    assert end_s2("h2", set()) == [], "a study run of another host is that host's to end"
    assert end_s2("h1", set()) == [orphan_parent]
    assert state(orphan_parent) == ("KILLED", "worker_died")
    assert state(alive_child)[0] == "RUNNING", "a child without a failed trial is not ended here"


def test_an_old_study_run_without_owner_tags_ends_only_when_no_trial_runs(store: Store) -> None:
    tracker = tracker_for(store)
    old = tracker.client.create_run(
        tracker.experiment_id(), tags={"signtune.role": "study", "signtune.study": "s"}
    ).info.run_id

    def end(trials_running: bool) -> list[str]:
        return end_abandoned_runs(
            tracker, study_name="s", failed=[], host="h1", pid_alive=lambda pid: False, trials_running=trials_running
        )

    assert end(True) == []
    assert tracker.client.get_run(old).info.status == "RUNNING"
    assert end(False) == [old]
    assert tracker.client.get_run(old).info.status == "KILLED"
