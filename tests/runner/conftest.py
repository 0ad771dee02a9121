from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.test_storage import PG_URL, require_postgres

# A fast plug-in task: sleeps `delay` per epoch, reports a score, and can hang on request.
PLUGIN = """
import os, time

def objective(config, report, ctx):
    x = config["x"]
    hang_file = os.environ.get("FASTPLUG_HANG_FILE")
    for epoch in range(1, int(config.get("run.epochs", 3)) + 1):
        time.sleep(float(config.get("delay", 0.02)))
        while hang_file and os.path.exists(hang_file):
            time.sleep(0.05)  # held here until the test removes the file
        report(epoch, {"score": -((x - 0.3) ** 2) - 0.01 / epoch})
    return {"score": -((x - 0.3) ** 2)}
"""


def fast_spec(
    *, trials: int, storage: str | None = None, delay: float = 0.02, epochs: int = 3, trial_timeout: float | None = None
) -> str:
    storage_line = f"storage: {storage}" if storage else ""
    budget = f"{{trials: {trials}, trial_timeout: {trial_timeout}}}" if trial_timeout else f"{{trials: {trials}}}"
    return textwrap.dedent(
        f"""\
        # Fast plug-in study for runner tests: study run --study fast --workers 4
        name: fast
        task: fastplug:objective
        search_space: ../../search_spaces/fast.yaml
        fixed: {{run.epochs: {epochs}, delay: {delay}, run.device: cpu}}
        objective: {{metric: score, direction: maximize}}
        sampler: {{name: tpe, seed: 0, n_startup_trials: 5}}
        pruner: {{name: none}}
        budget: {budget}
        tracking: {{enabled: false}}
        {storage_line}
        """
    )


@pytest.fixture
def fast_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "studies" / "fast").mkdir(parents=True)
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "fast.yaml").write_text(
        "# study run --study fast\nparams:\n  x: {type: float, low: 0.0, high: 1.0}\n"
    )
    (tmp_path / "fastplug.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield "sqlite:///studies/fast/study.db"
    elif request.param == "journal":
        yield "journal:///studies/fast/journal.log"
    else:
        require_postgres()
        yield PG_URL


def study_cmd(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "signtune", *args]


def run_study(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(study_cmd(*args, cwd=cwd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def unique_name() -> str:
    return f"fast{uuid.uuid4().hex[:8]}"
