"""Ctrl-C while MLflow builds a new tracking store, then the same command again.

The interrupt is delivered by a ``sitecustomize`` the test writes (no hook in signtune): a
SQLAlchemy listener sends SIGINT to its own process when MLflow's migrations first rebuild a
table (``_alembic_tmp_*``), i.e. halfway through the schema. Python's default SIGINT handling
cut the migration there and left a store on which every later trial failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, study_cmd, unique_name

from signtune.storage import create_storage

pytestmark = pytest.mark.integration

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, signal
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _fired = []

    @event.listens_for(Engine, "before_cursor_execute")
    def _interrupt_mid_migration(conn, cursor, statement, *args):
        if not _fired and "_alembic_tmp_" in statement and os.environ.get("MIGRATION_SIGINT"):
            _fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)
    """
)


def _run(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        study_cmd("run", "--study", "fast", *args, cwd=project),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        # a background test run inherits SIGINT ignored; a user at a terminal has the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_interrupt_during_first_mlflow_migration_then_resume(fast_project: Path, workers: str) -> None:
    name = unique_name()
    spec = fast_spec(trials=4, storage="sqlite:///studies/fast/study.db", delay=0.05)
    spec = spec.replace("tracking: {enabled: false}", "tracking: {enabled: true}").replace(
        "name: fast", f"name: {name}"
    )
    (fast_project / "studies" / "fast" / "study.yaml").write_text(spec)
    hooks = fast_project / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ["PYTHONPATH"]]), "COLUMNS": "200"}

    first = _run(fast_project, {**env, "MIGRATION_SIGINT": "1"}, "--workers", workers)
    assert first.returncode == 130, first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    db = fast_project / "studies" / "fast" / "mlflow.db"
    assert db.exists(), "the migration must be finished, not abandoned, before the stop"

    again = _run(fast_project, env, "--workers", workers)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr, again.stderr
    study = optuna.load_study(study_name=name, storage=create_storage("sqlite:///studies/fast/study.db"))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert not [t.number for t in study.trials if t.user_attrs.get("reason") not in (None, "interrupted")]
    assert not [t.number for t in study.trials if "tracking_gap" in t.user_attrs]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trial_runs = [r for r in runs if r.data.tags.get("signtune.role") == "trial"]
    done = [r for r in trial_runs if r.info.status == "FINISHED"]
    assert len(done) == 4, [(r.data.tags.get("signtune.trial"), r.info.status) for r in trial_runs]
    assert not [r for r in runs if r.info.status == "RUNNING"]
