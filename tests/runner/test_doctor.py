"""Stores that break, tracking that fails, hosts that die: `study doctor`, back-fill, heartbeats."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, run_study, study_cmd

from signtune.runner import pid_alive
from signtune.spec import load_spec
from signtune.storage import create_storage

pytestmark = pytest.mark.integration

URL = "sqlite:///studies/fast/study.db"


def _tracked_spec(project: Path, trials: int, tracking: str = "{enabled: true}") -> None:
    spec = fast_spec(trials=trials, storage=URL, delay=0.01).replace(
        "tracking: {enabled: false}", f"tracking: {tracking}"
    )
    (project / "studies" / "fast" / "study.yaml").write_text(spec)


def _study() -> optuna.Study:
    return optuna.load_study(study_name="fast", storage=create_storage(URL))


def _trial_runs(db: Path) -> list[object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("fast")
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return [r for r in runs if r.data.tags.get("signtune.role") == "trial"]


@pytest.mark.slow  # three study commands with MLflow
def test_damaged_tracking_store_is_refused_then_repaired_with_nothing_lost(fast_project: Path) -> None:
    _tracked_spec(fast_project, trials=3)
    assert run_study("run", "--study", "fast", cwd=fast_project).returncode == 0
    db = fast_project / "studies" / "fast" / "mlflow.db"
    con = sqlite3.connect(db)  # what a migration cut off halfway leaves behind
    con.execute("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
    con.commit()
    con.close()

    refused = run_study("run", "--study", "fast", "--trials", "4", cwd=fast_project)
    assert refused.returncode == 2, refused.stderr
    assert "_alembic_tmp_experiments" in refused.stderr and "study doctor --study fast --repair" in refused.stderr
    assert len(_study().trials) == 3, "a refused run starts nothing"

    checked = run_study("doctor", "--study", "fast", cwd=fast_project)
    assert checked.returncode == 2 and "PROBLEM" in checked.stdout and "Traceback" not in checked.stderr

    repaired = run_study("doctor", "--study", "fast", "--repair", cwd=fast_project)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    kept = list(db.parent.glob("mlflow.db.damaged-*"))
    assert len(kept) == 1, "the damaged store is kept, not deleted"
    runs = _trial_runs(db)
    assert sorted(r.data.tags["signtune.trial"] for r in runs) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" and r.data.tags.get("signtune.backfilled") == "true" for r in runs)

    assert run_study("doctor", "--study", "fast", cwd=fast_project).returncode == 0
    again = run_study("run", "--study", "fast", "--trials", "4", cwd=fast_project)
    assert again.returncode == 0, again.stderr
    assert len(_trial_runs(db)) == 4


@pytest.mark.slow  # three study commands with MLflow
def test_tracking_failure_never_fails_a_trial_and_export_backfills(fast_project: Path) -> None:
    blocker = fast_project / "studies" / "fast" / "mlruns"
    blocker.write_text("a file where the tracking store's folder should be")
    _tracked_spec(fast_project, trials=4, tracking="{enabled: true, uri: sqlite:///studies/fast/mlruns/mlflow.db}")
    res = run_study("run", "--study", "fast", cwd=fast_project)
    assert res.returncode == 0, res.stderr
    study = _study()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert all("tracking_gap" in t.user_attrs for t in study.trials)
    assert "misses trials [0, 1, 2, 3]" in res.stderr and "study export" in res.stderr

    blocker.unlink()  # the store works again
    exported = run_study("export", "--study", "fast", cwd=fast_project)
    assert exported.returncode == 0, exported.stderr
    assert "back-filled trials [0, 1, 2, 3]" in exported.stdout
    runs = _trial_runs(blocker / "mlflow.db")
    assert len(runs) == 4
    history = {r.data.tags["signtune.trial"]: r.data.metrics for r in runs}
    assert all("score" in m and "best_score" in m for m in history.values())
    again = run_study("export", "--study", "fast", cwd=fast_project)
    assert "back-filled" not in again.stdout, "each trial is back-filled once"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_stale_heartbeat_fails_with_reason_and_retries(fast_project: Path, kind: str) -> None:
    from signtune.runner import reap_stale
    from signtune.study import open_study

    url = URL if kind == "sqlite" else "journal:///studies/fast/journal.log"
    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=3, storage=url))
    spec = load_spec("fast", {})
    study = open_study(spec)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    dead.set_user_attr("host", "another-host")
    dead.set_user_attr("pid", 12345)
    dead.set_user_attr("heartbeat", time.time() - 3600)  # its host went silent an hour ago
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    alive.set_user_attr("heartbeat", time.time())

    assert reap_stale(spec, study) == [dead.number]
    trials = open_study(spec, create=False).trials
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[dead.number].user_attrs["reason"] == "heartbeat"
    assert trials[alive.number].state == TrialState.RUNNING
    retry = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].system_attrs["fixed_params"] == dead.params  # enqueued: asked with these params


def _held_run(project: Path, trials: int, *flags: str) -> tuple[subprocess.Popen[str], Path]:
    """`study run` whose trials hold (the plug-in waits while the returned file exists)."""
    (project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=trials, storage=URL, delay=0.2))
    hang = project / "hang"
    hang.touch()
    proc = subprocess.Popen(
        study_cmd("run", "--study", "fast", *flags, cwd=project),
        cwd=project,
        env={**os.environ, "FASTPLUG_HANG_FILE": str(hang)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, hang


def _wait_running(count: int, timeout: float = 120) -> list[optuna.trial.FrozenTrial]:
    """Wait until ``count`` trials run and have named their worker."""
    end = time.monotonic() + timeout
    running: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < end:
        try:
            running = [t for t in _study().get_trials(states=(TrialState.RUNNING,)) if "pid" in t.user_attrs and t.params]
        except KeyError:
            running = []
        if len(running) >= count:
            return running
        time.sleep(0.1)
    raise AssertionError(f"{len(running)} trials running after {timeout}s, expected {count}")


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(fast_project: Path) -> None:
    proc, hang = _held_run(fast_project, 6, "--workers", "2")
    try:
        running = _wait_running(2)
        proc.kill()  # SIGKILL: no clean-up in the supervisor
        # communicate() returns once every holder of the output pipes, the workers too, has exited
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "Traceback" not in err
    for t in running:
        assert not pid_alive(t.user_attrs["pid"]), "the worker exited (a zombie until init reaps it)"
    trials = {t.number: t for t in _study().trials}
    for t in running:
        assert trials[t.number].state == TrialState.FAIL
        assert trials[t.number].user_attrs["reason"] == "supervisor_gone"
    hang.unlink()
    res = run_study("run", "--study", "fast", "--workers", "2", cwd=fast_project)
    assert res.returncode == 0, res.stderr
    states = [t.state for t in _study().trials]
    assert states.count(TrialState.COMPLETE) == 6 and TrialState.RUNNING not in states


def test_sigterm_mid_trial_ends_like_ctrl_c(fast_project: Path) -> None:
    proc, _ = _held_run(fast_project, 4)
    try:
        _wait_running(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Interrupted" in err and "Traceback" not in err
    assert [t.user_attrs.get("reason") for t in _study().trials] == ["interrupted"]
