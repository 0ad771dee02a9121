"""Parallel workers on every storage: exact budget, dead workers, Ctrl-C, remote workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, run_study, study_cmd, unique_name

from signtune.storage import create_storage

pytestmark = pytest.mark.integration


def _write(project: Path, text: str, name: str) -> None:
    (project / "studies" / "fast" / "study.yaml").write_text(text.replace("name: fast", f"name: {name}"))


def _load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=create_storage(url))


def test_four_workers_exact_budget(fast_project: Path, storage_url: str) -> None:
    name = unique_name()
    _write(fast_project, fast_spec(trials=20, storage=storage_url), name)
    res = run_study("run", "--study", "fast", "--workers", "4", cwd=fast_project)
    assert res.returncode == 0, res.stderr
    study = _load(name, storage_url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 20
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states
    assert len(states) == 20, "no overshoot: exactly N trials were started"
    assert len({t.user_attrs["pid"] for t in study.trials}) > 1, "trials ran in several processes"
    assert len({t.params["x"] for t in study.trials}) == 20, "workers must not propose the same configs"
    again = run_study("run", "--study", "fast", "--workers", "4", cwd=fast_project)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len(_load(name, storage_url).trials) == 20


def _wait_running(name: str, url: str, timeout: float = 60) -> optuna.trial.FrozenTrial:
    end = time.time() + timeout
    while time.time() < end:
        try:
            running = _load(name, url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        with_pid = [t for t in running if "pid" in t.user_attrs and t.params]  # named and training
        if with_pid:
            return with_pid[0]
        time.sleep(0.2)
    raise AssertionError("no trial started running")


def test_sigkilled_worker_is_requeued(fast_project: Path) -> None:
    url = "sqlite:///studies/fast/study.db"
    name = unique_name()
    _write(fast_project, fast_spec(trials=6, storage=url, delay=0.3), name)
    hang = fast_project / "hang"
    hang.touch()  # the first trials hold until we kill one worker
    env = {**os.environ, "FASTPLUG_HANG_FILE": str(hang)}
    proc = subprocess.Popen(
        study_cmd("run", "--study", "fast", "--workers", "2", cwd=fast_project),
        cwd=fast_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victim = _wait_running(name, url)
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        time.sleep(1.0)
        hang.unlink()
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    study = _load(name, url)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs.get("reason") == "worker_died"
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state == TrialState.COMPLETE
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_sigint_leaves_no_running_trial_and_resumes(fast_project: Path) -> None:
    url = "sqlite:///studies/fast/study.db"
    name = unique_name()
    # Enough work (16 trials of about 1 s on 2 workers) that Ctrl-C lands mid-study even when
    # the first running trial is seen late.
    _write(fast_project, fast_spec(trials=16, storage=url, delay=0.3), name)
    proc = subprocess.Popen(
        study_cmd("run", "--study", "fast", "--workers", "2", cwd=fast_project),
        cwd=fast_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test run launched in the background (`cmd &` in a script) inherits SIGINT ignored,
        # and Python then keeps ignoring it: give `study run` the terminal's default, as a user has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_running(name, url)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    study = _load(name, url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = [t for t in study.trials if t.user_attrs.get("reason") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    res = run_study("run", "--study", "fast", "--workers", "2", cwd=fast_project)
    assert res.returncode == 0, res.stderr
    study = _load(name, url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 16


def test_two_hosts_share_a_study(fast_project: Path, storage_url: str) -> None:
    name = unique_name()
    _write(fast_project, fast_spec(trials=10, storage=storage_url, delay=0.05), name)
    procs = [
        subprocess.Popen(
            study_cmd("worker", "--study", "fast", "--host-id", host, cwd=fast_project),
            cwd=fast_project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host in ("node-a", "node-b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    study = _load(name, storage_url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert 10 <= len(finished) <= 11, "each remote worker may overshoot by at most one trial"
    assert {t.user_attrs["host"] for t in study.trials} == {"node-a", "node-b"}
    status = run_study("status", "--study", "fast", cwd=fast_project)
    assert status.returncode == 0 and "complete" in status.stdout
    assert "node-a" in status.stdout and "node-b" in status.stdout


def test_timeout_stops_new_trials_and_ends_cleanly(fast_project: Path) -> None:
    url = "sqlite:///studies/fast/study.db"
    name = unique_name()
    _write(fast_project, fast_spec(trials=200, storage=url, delay=0.4), name)
    res = run_study("run", "--study", "fast", "--workers", "2", "--timeout", "20", cwd=fast_project)
    assert res.returncode == 0, res.stderr
    assert "Stopped by --timeout" in res.stdout
    study = _load(name, url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert 0 < len(finished) < 200
    assert not study.get_trials(states=(TrialState.RUNNING,))
