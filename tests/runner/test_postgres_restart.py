"""A PostgreSQL restart in the middle of a study: the study completes and nothing is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, study_cmd, unique_name
from tests.test_storage import PG_URL, require_postgres

from signtune.storage import create_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_study_survives_a_postgres_restart(fast_project: Path) -> None:
    require_postgres()
    if shutil.which("pg_ctlcluster") is None or not os.access("/etc/postgresql", os.R_OK):
        pytest.skip("pg_ctlcluster is not available to restart the server")
    name = unique_name()
    (fast_project / "studies" / "fast" / "study.yaml").write_text(
        fast_spec(trials=16, storage=PG_URL, delay=0.2).replace("name: fast", f"name: {name}")
    )
    proc = subprocess.Popen(
        study_cmd("run", "--study", "fast", "--workers", "2", cwd=fast_project),
        cwd=fast_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                study = optuna.load_study(study_name=name, storage=create_storage(PG_URL))
                if len(study.get_trials(states=(TrialState.COMPLETE,))) >= 3:
                    break
            except Exception:
                pass
            time.sleep(0.3)
        _restart_postgres()
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=create_storage(PG_URL))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 16
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # Trials that broke on the restart are recorded as failed, never lost or left running.
    for t in study.get_trials(states=(TrialState.FAIL,)):
        assert t.user_attrs.get("reason") in ("error", "worker_died"), t.user_attrs
