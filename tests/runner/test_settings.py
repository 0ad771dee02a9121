"""A study keeps the subset and epochs its trials ran at: resuming, remote workers and exports
use them, and a run at another fidelity is refused."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, run_study

from signtune.storage import create_storage

pytestmark = pytest.mark.integration
URL = "sqlite:///studies/fast/study.db"


@pytest.fixture
def project(fast_project: Path) -> Path:
    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=8, storage=URL))
    return fast_project


def _trials() -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="fast", storage=create_storage(URL))
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_resuming_without_flags_continues_at_the_studys_subset_and_epochs(project: Path) -> None:
    first = run_study("run", "--study", "fast", "--trials", "2", "--subset", "0.5", "--epochs", "2", cwd=project)
    assert first.returncode == 0, first.stderr
    again = run_study("run", "--study", "fast", "--trials", "3", cwd=project)
    assert again.returncode == 0, again.stderr
    assert "continuing at subset 0.5, epochs 2" in again.stderr
    trials = _trials()
    assert len(trials) == 3
    assert {(t.user_attrs["subset"], t.user_attrs["epochs"]) for t in trials} == {(0.5, 2)}
    best = json.loads((project / "studies" / "fast" / "export" / "best_params.json").read_text())
    assert "--subset 0.5 --epochs 2" in best["reproduce"]


def test_another_subset_or_epochs_is_refused_and_nothing_runs(project: Path) -> None:
    assert run_study("run", "--study", "fast", "--trials", "2", "--subset", "0.5", cwd=project).returncode == 0
    res = run_study("run", "--study", "fast", "--trials", "4", "--subset", "0.7", "--epochs", "5", cwd=project)
    assert res.returncode == 2
    assert "--subset: is 0.7, but the trials of study 'fast' ran at 0.5" in res.stderr
    assert "--epochs: is 5, but the trials of study 'fast' ran at 3" in res.stderr
    assert "drop --subset to continue at 0.5" in res.stderr and "Traceback" not in res.stderr
    assert len(_trials()) == 2


def test_export_uses_the_studys_settings(project: Path) -> None:
    assert run_study("run", "--study", "fast", "--trials", "2", "--subset", "0.5", cwd=project).returncode == 0
    res = run_study("export", "--study", "fast", cwd=project)
    assert res.returncode == 0, res.stderr
    best = json.loads((project / "studies" / "fast" / "export" / "best_params.json").read_text())
    assert "--subset 0.5 --epochs 3" in best["reproduce"]


def test_a_worker_takes_the_budget_and_subset_study_create_stored(project: Path) -> None:
    created = run_study("create", "--study", "fast", "--trials", "4", "--subset", "0.5", cwd=project)
    assert created.returncode == 0, created.stderr
    res = run_study("worker", "--study", "fast", cwd=project)
    assert res.returncode == 0, res.stderr
    trials = _trials()
    assert len(trials) == 4, "the budget study create stored (4), not the spec's (8)"
    assert {t.user_attrs["subset"] for t in trials} == {0.5}
