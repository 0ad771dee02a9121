"""Chaos: stop `study run --workers 2` at seeded random instants, then resume it.

Each instant is drawn over a calibrated run's whole life (start-up, trials, export) and gets
one of three blows:

- ``sigint``: SIGINT to the whole process group, as a terminal's Ctrl-C sends it;
- ``kill-worker``: SIGKILL of one worker process (the supervisor replaces it);
- ``kill-supervisor``: SIGKILL of `study run` itself (its workers must stop by themselves).

After each one the same command, with the budget raised by ``STEP`` trials, must resume and
finish with exactly that many finished trials, none RUNNING, no traceback printed, the
Optuna store readable and every MLflow run of the study ended. The last check reads the
Optuna store with Optuna's own CLI (``optuna trials``).

``SIGNTUNE_CHAOS_INSTANTS`` (default 10 per storage) and ``SIGNTUNE_CHAOS_SEED`` (default 0)
set the size and the draw; the test prints a line per instant.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, study_cmd, unique_name
from tests.test_storage import PG_URL, require_postgres

from signtune.storage import create_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTANTS = int(os.environ.get("SIGNTUNE_CHAOS_INSTANTS", "10"))
SEED = int(os.environ.get("SIGNTUNE_CHAOS_SEED", "0"))
BLOWS = ("sigint", "kill-worker", "kill-supervisor")
STEP = 3  # trials added to the budget per instant


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _workers(pid: int) -> list[int]:
    """The signtune worker processes of `study run` ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            found.append(child)
    return found


def _group_gone(pgid: int, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class Episode:
    def __init__(self, project: Path, storage: str) -> None:
        self.project = project
        self.storage = storage
        self.name = unique_name()
        spec = fast_spec(trials=STEP, storage=storage, delay=0.12, epochs=3)
        spec = spec.replace("tracking: {enabled: false}", "tracking: {enabled: true}")
        (project / "studies" / "fast" / "study.yaml").write_text(spec.replace("name: fast", f"name: {self.name}"))
        self.env = {**os.environ, "COLUMNS": "200"}
        self.budget = STEP

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            study_cmd("run", "--study", "fast", "--workers", "2", "--trials", str(self.budget), cwd=self.project),
            cwd=self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives a foreground job
            # a background test run inherits SIGINT ignored; a user at a terminal has the default
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=create_storage(self.storage))

    def resume(self) -> None:
        proc = self.start()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"resume exited {proc.returncode}:\n{err}"
        assert "Traceback" not in out + err, err
        self.check_finished()

    def check_finished(self) -> None:
        study = self.study()
        states = [t.state for t in study.trials]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        assert finished == self.budget, f"{finished} finished trials, expected exactly {self.budget}"
        assert TrialState.RUNNING not in states, [t.number for t in study.trials if t.state == TrialState.RUNNING]
        self.check_mlflow()

    def check_mlflow(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{self.project / 'studies' / 'fast' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(self.name)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=5000)
        running = [
            (r.data.tags.get("signtune.role"), r.data.tags.get("signtune.trial"))
            for r in runs
            if r.info.status == "RUNNING"
        ]
        assert not running, f"MLflow runs left RUNNING: {running}"


def _phase(episode: Episode, before: int) -> str:
    """Where the run stands: no trial of its own yet, trials running, or its budget done (export)."""
    try:
        trials = episode.study().trials
    except Exception:
        return "start-up"
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if len(trials) == before:
        return "start-up"
    return "export" if done >= episode.budget else "trials"


def _blow(episode: Episode, proc: subprocess.Popen[str], blow: str, delay: float, before: int) -> tuple[str, str]:
    """Wait ``delay`` seconds into the run, then strike; (what was struck, the run's phase then)."""
    end = time.monotonic() + delay
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.01)
    phase = _phase(episode, before)
    if proc.poll() is not None:
        return "run had ended", "ended"
    return _strike(proc, blow, delay), phase


def _strike(proc: subprocess.Popen[str], blow: str, delay: float) -> str:
    if blow == "sigint":
        os.killpg(proc.pid, signal.SIGINT)
        return "SIGINT to group"
    if blow == "kill-supervisor":
        os.kill(proc.pid, signal.SIGKILL)
        return "SIGKILL supervisor"
    end = time.monotonic() + 60
    workers = _workers(proc.pid)
    while not workers and proc.poll() is None and time.monotonic() < end:  # still spawning them
        time.sleep(0.01)
        workers = _workers(proc.pid)
    if not workers:
        return "no worker yet"
    victim = random.Random(delay).choice(workers)
    os.kill(victim, signal.SIGKILL)
    return f"SIGKILL worker {victim}"


@pytest.mark.parametrize("storage_kind", ["sqlite", "postgresql"])
def test_chaos_resumes_exactly(fast_project: Path, storage_kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if storage_kind == "postgresql":
        require_postgres()
        storage = PG_URL
    else:
        storage = "sqlite:///studies/fast/study.db"
    episode = Episode(fast_project, storage)
    # Calibration: one clean run gives the span the instants are drawn over.
    t0 = time.monotonic()
    episode.resume()
    span = time.monotonic() - t0
    rng = random.Random(f"{SEED}-{storage_kind}")
    outcomes: dict[str, int] = {}
    for i in range(INSTANTS):
        blow = BLOWS[i % len(BLOWS)]
        delay = rng.uniform(0.0, span)
        episode.budget += STEP
        before = len(episode.study().trials)
        proc = episode.start()
        struck, phase = _blow(episode, proc, blow, delay, before)
        out, err = proc.communicate(timeout=180)  # returns once every writer of the pipes (workers too) has exited
        assert _group_gone(proc.pid), "processes of the stopped run are still alive"
        assert "Traceback" not in out + err, f"instant {i} ({struck} at {delay:.2f}s):\n{err}"
        ok = {"sigint": (0, 130), "kill-worker": (0,), "kill-supervisor": (0, -signal.SIGKILL)}[blow]
        if struck in ("run had ended", "no worker yet"):
            ok = (0, 130, -signal.SIGKILL)
        assert proc.returncode in ok, f"instant {i} ({struck} at {delay:.2f}s) exited {proc.returncode}:\n{err}"
        outcomes[f"{blow}/{phase}"] = outcomes.get(f"{blow}/{phase}", 0) + 1
        with capsys.disabled():
            print(f"\nchaos {storage_kind} #{i}: {struck} at {delay:.2f}s (exit {proc.returncode}, {phase})", end="")
        episode.resume()
    optuna_cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", episode.name, "--storage", storage, "-f", "json"],
        cwd=fast_project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    with capsys.disabled():
        print(f"\nchaos {storage_kind}: {INSTANTS} instants, outcomes {outcomes}")
