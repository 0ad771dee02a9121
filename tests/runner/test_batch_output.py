"""`study run` as a batch job sees it: lines per trial, heartbeats, JSON lines, quiet, 80 columns."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import optuna
import pytest
from tests.runner.conftest import fast_spec, study_cmd

from signtune.storage import create_storage

pytestmark = pytest.mark.integration

URL = "sqlite:///studies/fast/study.db"
WIDE_SPACE = "params:\n" + "".join(
    f"  group.param_number_{i}: {{type: float, low: 0.0, high: 1.0}}\n" for i in range(12)
)


def _run(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        study_cmd("run", "--study", "fast", *args, cwd=project),
        cwd=project,
        capture_output=True,  # not a terminal: what `nohup study run > log 2>&1` gets
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
    )


def test_redirected_output_has_a_line_per_trial_and_heartbeats(fast_project: Path) -> None:
    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=3, storage=URL, delay=0.3))
    res = _run(fast_project, "--heartbeat-every", "0.25")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    trial_lines = [ln for ln in lines if re.match(r"\[\d\d:\d\d:\d\d\] trial \d+ ", ln)]
    assert len(trial_lines) == 3, res.stdout
    assert re.search(
        r"trial 0 complete  score -?\d+\.\d\d  3/3 epochs  \d+\.\ds  best -?\d+\.\d\d \(#0\)", trial_lines[0]
    )
    beats = [ln for ln in lines if "still running: " in ln]
    assert beats and re.search(r"trial \d+ at epoch \d/3 \(\d+s since its last report\)", "\n".join(beats)), res.stdout
    assert "━" not in res.stdout + res.stderr, "no progress bar in a log file"


@pytest.mark.slow
def test_pruned_and_failed_trials_say_why(fast_project: Path) -> None:
    spec = fast_spec(trials=4, storage=URL).replace(
        "pruner: {name: none}", "pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}"
    )
    (fast_project / "studies" / "fast" / "study.yaml").write_text(spec)
    res = _run(fast_project, env={"SIGNTUNE_FAULTS": "crash@1"})
    assert res.returncode == 0, res.stderr
    failed = [ln for ln in res.stdout.splitlines() if "trial 1 failed" in ln]
    assert failed and "reason error: RuntimeError: injected trainer crash" in failed[0], res.stdout


@pytest.mark.slow
def test_json_lines_are_the_only_stdout(fast_project: Path) -> None:
    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=4, storage=URL))
    res = _run(fast_project, "--json-lines", "--workers", "2")
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    trials = [e for e in events if e["event"] == "trial"]
    assert sorted(e["number"] for e in trials) == [0, 1, 2, 3]
    assert all(e["state"] == "complete" and isinstance(e["value"], float) for e in trials)
    assert events[-1]["finished"] == 4 and events[-1]["stopped_by"] == "budget"


@pytest.mark.slow
def test_quiet_prints_one_line(fast_project: Path) -> None:
    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=2, storage=URL))
    res = _run(fast_project, "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().count("\n") == 0 and "2/2 finished" in res.stdout, res.stdout
    assert res.stderr.strip() == ""


@pytest.mark.slow
def test_the_leaderboard_fits_80_columns_with_the_params_that_vary(fast_project: Path) -> None:
    (fast_project / "search_spaces" / "fast.yaml").write_text(WIDE_SPACE)
    plugin = (fast_project / "fastplug.py").read_text().replace('x = config["x"]', 'x = config["group.param_number_0"]')
    (fast_project / "fastplug.py").write_text(plugin)
    spec = fast_spec(trials=5, storage=URL).replace("fixed: {", "fixed: {group.fixed_one: 1, ")
    (fast_project / "studies" / "fast" / "study.yaml").write_text(spec)
    res = _run(fast_project, "--quiet")
    assert res.returncode == 0, res.stderr
    board = subprocess.run(
        study_cmd("export", "--study", "fast", cwd=fast_project), cwd=fast_project, capture_output=True, text=True
    )
    assert board.returncode == 0
    res = _run(fast_project)  # nothing left to run: prints the leaderboard
    rows = [ln for ln in res.stdout.splitlines() if re.match(r"^\s*\d+\s+-?\d+\.\d\d\s", ln)]
    assert len(rows) == 5, res.stdout
    assert all(len(ln) <= 80 for ln in res.stdout.splitlines()), res.stdout
    assert "pn0 group.param_number_0" in res.stdout and "more varying params" in res.stdout, res.stdout
    study = optuna.load_study(study_name="fast", storage=create_storage(URL))
    assert study.metric_names == ["score"], "the dashboard and `optuna trials` name the metric"
