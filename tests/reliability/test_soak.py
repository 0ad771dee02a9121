"""Soak: 100 trials, 20% of them given random faults, 4 workers on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, study_cmd
from tests.test_storage import PG_URL, require_postgres

from signtune.storage import create_storage

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_soak_random_faults_on_postgres(fast_project: Path) -> None:
    require_postgres()
    name = f"soak{uuid.uuid4().hex[:8]}"
    text = fast_spec(trials=100, storage=PG_URL, delay=0.02, trial_timeout=3.0)
    text = text.replace("name: fast", f"name: {name}").replace("tracking: {enabled: false}", "")
    text = text.replace("fixed: {", "fixed: {data.batch_size: 32, ")
    (fast_project / "studies" / "fast" / "study.yaml").write_text(text)
    env = {**os.environ, "SIGNTUNE_FAULTS": "random:0.2:7"}
    res = subprocess.run(
        study_cmd("run", "--study", "fast", "--workers", "4", cwd=fast_project),
        cwd=fast_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=create_storage(PG_URL))
    trials = study.get_trials()
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 100
    assert not study.get_trials(states=(TrialState.RUNNING,))
    faulted = [t for t in trials if "injected_fault" in t.user_attrs]
    assert len(faulted) >= 10, "about 20% of first attempts get a fault"
    expected = {"nan": "diverged", "oom": "oom", "crash": "error", "hang": "timeout"}
    for t in faulted:
        assert t.user_attrs.get("reason") == expected[t.user_attrs["injected_fault"]], (t.number, t.user_attrs)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{fast_project / 'studies' / 'fast' / 'mlflow.db'}")
    for t in faulted:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags.get("signtune.reason") == t.user_attrs["reason"]
    optuna.delete_study(study_name=name, storage=create_storage(PG_URL))
