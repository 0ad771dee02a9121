"""`study dashboard` serves a study while `study run --workers 2` is still writing it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tests.browse.conftest import BrowseProject, free_port, http_get, start_background, study_cmd, wait_http

from signtune.storage import create_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 20


def _get(url: str) -> Any:
    return json.loads(http_get(url))


def _study_id(base: str, name: str) -> int | None:
    ids = [s["study_id"] for s in _get(f"{base}/api/studies")["study_summaries"] if s["study_name"] == name]
    return ids[0] if ids else None


def _until(what: str, fn: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f}s")


def test_dashboard_lists_the_trials_of_a_running_study(
    browse_project: BrowseProject, background: list[subprocess.Popen[bytes]]
) -> None:
    root = browse_project.root
    name = browse_project.new_study(trials=TRIALS, epochs=4, delay=0.12, tracking=False)
    run = start_background(study_cmd("run", "--study", name, "--workers", "2"), cwd=root, log=root / "run.log")
    background.append(run)
    db = root / "studies" / name / "study.db"
    deadline = time.monotonic() + 30
    while not db.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, f"study run ended early:\n{(root / 'run.log').read_text()[-3000:]}"

    port = free_port()
    log = root / "dashboard.log"
    dash = start_background(study_cmd("dashboard", "--study", name, "--port", str(port)), cwd=root, log=log)
    background.append(dash)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/api/meta", dash, timeout=30, log=log)
    assert b"<html" in http_get(f"{base}/dashboard").lower(), "the React app's page is served"

    study_id = _until("the study did not appear in /api/studies", lambda: _study_id(base, name), 30, dash, log)
    first = _until(
        "the study's detail listed no trial",
        lambda: _get(f"{base}/api/studies/{study_id}?after=0")["trials"],
        30,
        dash,
        log,
    )
    assert run.poll() is None, "the dashboard should have listed trials while the study was still running"
    assert len(first) < TRIALS or any(t["state"] == "Running" for t in first), "seen before the study finished"

    assert run.wait(timeout=120) == 0, (root / "run.log").read_text()[-3000:]
    study = optuna.load_study(study_name=name, storage=create_storage(browse_project.storage(name)))
    trials = study.get_trials()
    assert len(trials) == TRIALS
    assert [t for t in trials if t.state == TrialState.FAIL] == []
    expected = [(t.number, t.state.name.capitalize(), t.values) for t in trials]

    def listed() -> list[tuple[int, str, list[float] | None]]:
        got = _get(f"{base}/api/studies/{study_id}?after=0")["trials"]
        seen = [(t["number"], t["state"], t.get("values")) for t in got]
        return seen if seen == expected else []

    # The dashboard caches trials for 2 s; the list catches up after that.
    _until(f"the dashboard's trials never matched the study's {expected}", listed, 15, dash, log)
