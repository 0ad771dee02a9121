"""A whole study through the real `study` command on generated data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

STUDY = [sys.executable, "-m", "signtune.cli"]


def study(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*STUDY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_tiny_study_end_to_end(tiny_project: Path) -> None:
    res = study("run", "--study", "tiny", cwd=tiny_project)
    assert res.returncode == 0, res.stderr + res.stdout
    sdir = tiny_project / "studies" / "tiny"

    # Optuna's own client reads the study: exactly the budget of finished trials.
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sdir / 'study.db'}")
    states = [t.state for t in s.trials]
    finished = [t for t in s.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4, states
    assert TrialState.PRUNED in states, "the lr=1e-5 trial should be pruned against the lr=3e-3 one"
    pruned = [t for t in s.trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs.get("reason") == "pruned" for t in pruned)
    for t in s.trials:
        for key in ("seed", "device", "wall_time_s", "epochs_run", "host", "worker"):
            assert key in t.user_attrs, (key, t.user_attrs)
    complete = [t for t in s.trials if t.state == TrialState.COMPLETE]
    assert all("n_params" in t.user_attrs for t in complete)
    assert s.trials[0].params["optim.lr"] == pytest.approx(3e-3)  # enqueued first

    # Exports.
    best = json.loads((sdir / "export" / "best_params.json").read_text())
    assert best["trial"] == s.best_trial.number
    assert best["value"] == pytest.approx(s.best_value)
    assert best["params"] == s.best_trial.params
    assert "fixed" in best and best["fixed"]["model.d_model"] == 32
    rows = list(csv.DictReader((sdir / "export" / "trials.csv").open()))
    assert len(rows) == len(s.trials)
    for name in ("param_importances", "optimization_history", "parallel_coordinate", "intermediate_values"):
        page = (sdir / "export" / f"{name}.html").read_text()
        assert "plotly" in page.lower() or "signtune-unavailable" in page, name
    assert "plotly" in (sdir / "export" / "optimization_history.html").read_text().lower()
    assert "top" in res.stdout and "tiny" in res.stdout  # the leaderboard

    # MLflow: one parent run and one child per trial, with per-epoch metrics.
    import mlflow

    # A client, not mlflow.set_tracking_uri: that also exports MLFLOW_TRACKING_URI to every
    # later subprocess of this test session.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{sdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if r.data.tags.get("signtune.role") == "study"]
    children = [r for r in runs if r.data.tags.get("signtune.role") == "trial"]
    assert len(parents) == 1
    assert len(children) == len(s.trials)
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    pruned_runs = [r for r in children if r.data.tags.get("signtune.state") == "pruned"]
    assert len(pruned_runs) == len(pruned)
    for t in s.trials:
        run_id = t.user_attrs["mlflow_run_id"]
        history = client.get_metric_history(run_id, "val_chrf")
        assert [m.step for m in history] == sorted(t.intermediate_values)
        assert [m.value for m in history] == pytest.approx(
            [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
        )

    # Optuna's CLI lists the trials.
    listed = subprocess.run(
        [
            str(Path(sys.executable).with_name("optuna")),
            "trials",
            "--study-name",
            "tiny",
            "--storage",
            f"sqlite:///{sdir / 'study.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "COMPLETE" in listed.stdout

    # Re-running a finished study starts nothing.
    again = study("run", "--study", "tiny", cwd=tiny_project)
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stdout
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{sdir / 'study.db'}").trials) == len(s.trials)


def test_missing_features_dir_is_a_clear_error(tiny_project: Path) -> None:
    spec = tiny_project / "studies" / "tiny" / "study.yaml"
    spec.write_text(
        spec.read_text().replace("synthetic: {seed: 1, n_train: 160, n_val: 24, n_test: 16}", "synthetic: false")
    )
    res = study("run", "--study", "tiny", cwd=tiny_project)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "features" in res.stderr and "study data synth" in res.stderr
    assert not (tiny_project / "studies" / "tiny" / "study.db").exists()


def test_missing_feature_file_names_the_row(tiny_project: Path) -> None:
    res = study(
        "data",
        "synth",
        "--out",
        "studies/tiny/data",
        "--n-train",
        "20",
        "--n-val",
        "5",
        "--n-test",
        "2",
        "--dim",
        "16",
        "--seed",
        "1",
        cwd=tiny_project,
    )
    assert res.returncode == 0, res.stderr
    spec = tiny_project / "studies" / "tiny" / "study.yaml"
    spec.write_text(
        spec.read_text().replace("synthetic: {seed: 1, n_train: 160, n_val: 24, n_test: 16}", "synthetic: false")
    )
    manifest = tiny_project / "studies" / "tiny" / "data" / "how2sign_realigned_train.csv"
    third = manifest.read_text().splitlines()[3].split("\t")[3]
    next((tiny_project / "studies" / "tiny" / "data" / "features").glob(f"{third}.*")).unlink()
    res = study("run", "--study", "tiny", cwd=tiny_project)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "how2sign_realigned_train.csv" in res.stderr and "row 4" in res.stderr and third in res.stderr
    assert not (tiny_project / "studies" / "tiny" / "study.db").exists()
