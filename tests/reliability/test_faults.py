"""Injected faults end the way the README's "What happens when..." table says."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, study_cmd

from signtune.storage import create_storage

pytestmark = pytest.mark.integration
URL = "sqlite:///studies/fast/study.db"


def _run(project: Path, faults: str, *args: str, trial_timeout: float | None = None, trials: int = 6) -> optuna.Study:
    text = fast_spec(trials=trials, storage=URL, delay=0.05, trial_timeout=trial_timeout)
    text = text.replace("fixed: {", "fixed: {data.batch_size: 32, ")
    (project / "studies" / "fast" / "study.yaml").write_text(text)
    env = {**os.environ, "SIGNTUNE_FAULTS": faults}
    res = subprocess.run(
        study_cmd("run", "--study", "fast", *args, cwd=project),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    study = optuna.load_study(study_name="fast", storage=create_storage(URL))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == trials, "faults never cost the study its budget"
    assert not study.get_trials(states=(TrialState.RUNNING,))
    return study


def test_nan_loss_is_pruned_as_diverged(fast_project: Path) -> None:
    study = _run(fast_project, "nan@1")
    t = study.trials[1]
    assert t.state == TrialState.PRUNED and t.user_attrs["reason"] == "diverged"


def test_oom_is_retried_with_half_batch(fast_project: Path) -> None:
    study = _run(fast_project, "oom@1")
    failed = study.trials[1]
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"] == "oom"
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == failed.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["oom_retry_config"] == {"data.batch_size": 16, "optim.grad_accum": 2}


def test_crash_is_recorded_and_retried_once(fast_project: Path) -> None:
    study = _run(fast_project, "crash@2")
    failed = study.trials[2]
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"] == "error"
    assert "injected trainer crash" in failed.user_attrs["error"]
    assert [t.state for t in study.trials if t.user_attrs.get("retry_of") == 2] == [TrialState.COMPLETE]


def test_hung_trial_is_pruned_by_timeout(fast_project: Path) -> None:
    study = _run(fast_project, "hang@1", trial_timeout=1.5)
    t = study.trials[1]
    assert t.state == TrialState.PRUNED and t.user_attrs["reason"] == "timeout"


def test_killed_worker_is_requeued(fast_project: Path) -> None:
    study = _run(fast_project, "kill@2", "--workers", "2")
    killed = study.trials[2]
    assert killed.state == TrialState.FAIL and killed.user_attrs["reason"] == "worker_died"
    assert [t.params for t in study.trials if t.user_attrs.get("retry_of") == 2] == [killed.params]
