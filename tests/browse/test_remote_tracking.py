"""Tracking to a real MLflow server (`--tracking-uri http://...`), artifacts proxied by the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.browse.conftest import BrowseProject, free_port, run_cli, start_background, wait_http

from signtune.storage import create_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 5


def test_study_logs_to_a_remote_mlflow_server(
    browse_project: BrowseProject, tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    from mlflow.tracking import MlflowClient

    port = free_port()
    server_dir = tmp_path / "server"
    (server_dir / "art").mkdir(parents=True)
    log = server_dir / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{server_dir / 'mlf.db'}",
        "--artifacts-destination", str(server_dir / "art"),
    ]  # fmt: skip
    background.append(start_background(cmd, cwd=server_dir, log=log))
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", background[0], timeout=60, log=log)

    name = browse_project.new_study(trials=TRIALS, epochs=3, delay=0.02)
    res = run_cli("run", "--study", name, "--tracking-uri", uri, cwd=browse_project.root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not browse_project.mlflow_db(name).exists(), "--tracking-uri replaces the default SQLite store"

    study = optuna.load_study(study_name=name, storage=create_storage(browse_project.storage(name)))
    trials = study.get_trials()
    assert len(trials) == TRIALS and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name!r} on the server"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("signtune.role") == "study"]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("signtune.role") == "trial"}
    assert len(parents) == 1 and len(children) == TRIALS
    parent = parents[0]
    assert parent.info.status == "FINISHED" and "best_value" in parent.data.metrics
    for t in trials:
        child = children[t.user_attrs["mlflow_run_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["signtune.trial"] == str(t.number)
        history = client.get_metric_history(child.info.run_id, "score")
        assert {m.step: m.value for m in history} == t.intermediate_values

    # The export goes through the server to its --artifacts-destination, where every host
    # that browses the server can read it (not into a folder on the machine that ran the study).
    exported = {a.path for a in client.list_artifacts(parent.info.run_id, "export")}
    assert "export/report.html" in exported
    on_server = list((server_dir / "art").rglob("report.html"))
    where = parent.info.artifact_uri
    assert on_server, f"report.html is not under the server's --artifacts-destination but at {where}"
