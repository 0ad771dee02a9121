"""A CUDA error that breaks the process's CUDA context: the worker is replaced, the trial retried."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import fast_spec, run_study

from signtune.storage import create_storage

pytestmark = pytest.mark.integration
URL = "sqlite:///studies/fast/study.db"

# The first trial to run raises what torch raises after an illegal memory access.
BROKEN = """
import os, time

def objective(config, report, ctx):
    marker = os.path.join(ctx.study_dir, "broke-once")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    time.sleep(float(config.get("delay", 0.0)))
    report(1, {"score": config["x"]})
    return {"score": config["x"]}
"""


def _project(fast_project: Path, trials: int, delay: float = 0.02) -> None:
    (fast_project / "brokenplug.py").write_text(BROKEN)
    text = fast_spec(trials=trials, storage=URL, delay=delay, epochs=1).replace(
        "fastplug:objective", "brokenplug:objective"
    )
    (fast_project / "studies" / "fast" / "study.yaml").write_text(text)


def _study() -> optuna.Study:
    return optuna.load_study(study_name="fast", storage=create_storage(URL))


def _check_retried(study: optuna.Study, trials: int) -> None:
    (broken,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert broken.user_attrs["reason"] == "cuda_error"
    assert "illegal memory access" in broken.user_attrs["error"]
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == broken.number]
    assert retry.state == TrialState.COMPLETE and retry.params == broken.params
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == trials
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_worker_with_a_broken_cuda_context_is_replaced(fast_project: Path) -> None:
    _project(fast_project, trials=6, delay=2.0)  # the replacement starts while trials remain
    res = run_study("run", "--study", "fast", "--workers", "2", cwd=fast_project)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    _check_retried(_study(), 6)
    trials = _study().trials
    (broken,) = [t for t in trials if t.state == TrialState.FAIL]
    later = [t for t in trials if t.number > broken.number]
    assert broken.user_attrs["pid"] not in {t.user_attrs["pid"] for t in later}, "the broken worker went on"
    assert len({t.user_attrs["pid"] for t in trials}) == 3, "two workers, and one that replaced the broken one"


def test_in_process_it_stops_with_a_clear_message_and_resumes(fast_project: Path) -> None:
    _project(fast_project, trials=4)
    res = run_study("run", "--study", "fast", cwd=fast_project)
    assert res.returncode != 0
    assert "unrecoverable CUDA error" in res.stderr and "run the same command to resume" in res.stderr
    assert "Traceback" not in res.stderr
    assert not _study().get_trials(states=(TrialState.RUNNING,))
    again = run_study("run", "--study", "fast", cwd=fast_project)
    assert again.returncode == 0, again.stderr
    _check_retried(_study(), 4)
