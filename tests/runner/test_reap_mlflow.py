"""Reaping ends the MLflow runs the dead left RUNNING: the trial's run FAILED with its reason,
and the parent run of a `study run` that was killed."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec

from signtune import runner
from signtune import study as facts
from signtune.hosts import host_id
from signtune.spec import StudySpec
from signtune.tracking import Tracker, make_tracker

X = {"x": optuna.distributions.FloatDistribution(0, 1)}


@pytest.fixture
def tracked(fast_project: Path) -> StudySpec:
    """The fast study with tracking on its default SQLite store (studies/fast/mlflow.db)."""
    from signtune.spec import load_spec

    text = fast_spec(trials=4, storage="sqlite:///studies/fast/study.db")
    text = text.replace("tracking: {enabled: false}", "tracking: {enabled: true}")
    path = fast_project / "studies" / "fast" / "study.yaml"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.tracking.enabled and spec.tracking_uri.startswith("sqlite:///")
    return spec


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def start_trial(study: optuna.Study, tracker: Tracker, pid: int, *, link: bool = True) -> tuple[int, str]:
    """A RUNNING trial of worker ``pid`` with its MLflow run, as the objective makes them."""
    trial = study.ask(X)
    owner = {"host": host_id(), "worker": "0", "pid": pid}
    for key, value in owner.items():
        trial.set_user_attr(key, value)
    run_id = tracker.start_trial(trial.number, params=trial.params, tags={k: str(v) for k, v in owner.items()})
    tracker.log_epoch(run_id, {"score": 0.1}, 1)
    if link:  # else its worker died between creating the run and recording its id
        trial.set_user_attr("mlflow_run_id", run_id)
    return trial.number, run_id


def client(spec: StudySpec) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=spec.tracking_uri)


def test_reap_fails_the_dead_workers_runs_and_spares_the_living(tracked: StudySpec) -> None:
    spec = tracked
    study = facts.open_study(spec)
    tracker = make_tracker(spec)
    assert isinstance(tracker, Tracker)
    parent = tracker.start_study(study_name=spec.name, storage=spec.storage, params={}, tags={})  # this process's
    gone = dead_pid()
    dead, dead_run = start_trial(study, tracker, gone)
    unlinked, unlinked_run = start_trial(study, tracker, gone, link=False)
    live, live_run = start_trial(study, tracker, os.getpid())

    reaped = runner.reap_dead(spec, study, {gone})

    assert sorted(reaped) == [dead, unlinked]
    assert study.trials[live].state == TrialState.RUNNING
    mlflow = client(spec)
    for number, run_id in ((dead, dead_run), (unlinked, unlinked_run)):
        assert study.trials[number].state == TrialState.FAIL
        assert study.trials[number].user_attrs["reason"] == "worker_died"
        run = mlflow.get_run(run_id)
        assert run.info.status == "FAILED", f"trial {number}"
        assert run.data.tags["signtune.reason"] == "worker_died"
        assert run.data.tags["signtune.state"] == "failed"
        assert run.data.tags["mlflow.parentRunId"] == parent
    assert mlflow.get_run(live_run).info.status == "RUNNING", "a live worker's run is its own to end"
    assert mlflow.get_run(parent).info.status == "RUNNING", "the supervisor reaping its workers lives on"


def test_reap_command_ends_a_killed_study_runs_parent_and_trial_runs(tracked: StudySpec) -> None:
    spec = tracked
    study = facts.open_study(spec)
    tracker = make_tracker(spec)
    assert isinstance(tracker, Tracker)
    parent = tracker.start_study(study_name=spec.name, storage=spec.storage, params={}, tags={})
    gone = dead_pid()
    tracker.client.set_tag(parent, "signtune.pid", str(gone))  # the whole `study run` was SIGKILLed
    number, run_id = start_trial(study, tracker, gone)
    assert client(spec).get_run(parent).data.tags["signtune.host"] == host_id()

    assert runner.reap(spec) == [number]

    mlflow = client(spec)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["signtune.reason"] == "worker_died"
    study_run = mlflow.get_run(parent)
    assert study_run.info.status == "KILLED"
    assert study_run.data.tags["signtune.reason"] == "worker_died"
    assert runner.reap(spec) == [], "nothing left to reap"


def test_a_dead_study_runs_parent_stays_open_while_one_of_its_workers_trains(tracked: StudySpec) -> None:
    spec = tracked
    study = facts.open_study(spec)
    tracker = make_tracker(spec)
    assert isinstance(tracker, Tracker)
    parent = tracker.start_study(study_name=spec.name, storage=spec.storage, params={}, tags={})
    tracker.client.set_tag(parent, "signtune.pid", str(dead_pid()))
    _, live_run = start_trial(study, tracker, os.getpid())  # an orphaned worker, still training

    assert runner.reap(spec) == []

    mlflow = client(spec)
    assert mlflow.get_run(parent).info.status == "RUNNING"
    assert mlflow.get_run(live_run).info.status == "RUNNING"


def test_a_tracking_error_never_breaks_reaping_and_a_later_reap_repairs_it(
    tracked: StudySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tracked
    study = facts.open_study(spec)
    tracker = make_tracker(spec)
    assert isinstance(tracker, Tracker)
    gone = dead_pid()
    number, run_id = start_trial(study, tracker, gone)

    def unreachable(self: Tracker) -> list[Any]:
        raise ConnectionError("MLflow is down")

    with monkeypatch.context() as m:
        m.setattr(Tracker, "running_runs", unreachable)
        with pytest.warns(UserWarning, match="could not end the MLflow runs"):
            assert runner.reap_dead(spec, study, {gone}) == [number]
    assert study.trials[number].state == TrialState.FAIL
    assert client(spec).get_run(run_id).info.status == "RUNNING"

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        runner.reap(spec)  # nothing RUNNING in Optuna; the failed trial's run is ended now
    run = client(spec).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["signtune.reason"] == "worker_died"


def test_reaping_without_tracking_never_opens_mlflow(fast_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from signtune.spec import load_spec

    path = fast_project / "studies" / "fast" / "study.yaml"
    path.write_text(fast_spec(trials=2, storage="sqlite:///studies/fast/study.db"))  # tracking: {enabled: false}
    spec = load_spec(path)
    study = facts.open_study(spec)
    trial = study.ask(X)
    gone = dead_pid()
    trial.set_user_attr("pid", gone)
    trial.set_user_attr("host", host_id())

    def boom(self: Tracker) -> list[Any]:
        raise AssertionError("MLflow opened with tracking off")

    monkeypatch.setattr(Tracker, "running_runs", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert runner.reap_dead(spec, study, {gone}) == [trial.number]
    assert not (fast_project / "studies" / "fast" / "mlflow.db").exists()
