"""A feature file that breaks in the middle of a study: trials fail naming it, nothing is lost,
and the study finishes its budget once the file is fixed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.e2e.conftest import TINY_SPACE, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STUDY = [sys.executable, "-m", "signtune.cli"]


def _finished(url: str) -> int:
    try:
        study = optuna.load_study(study_name="tiny", storage=url)
    except Exception:  # not created yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_corrupt_feature_file_mid_study(tmp_path: Path) -> None:
    (tmp_path / "studies" / "tiny").mkdir(parents=True)
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "tiny.yaml").write_text(TINY_SPACE)
    (tmp_path / "studies" / "tiny" / "study.yaml").write_text(tiny_spec(trials=6, extra="tracking: {enabled: false}"))
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny' / 'study.db'}"
    cmd = [*STUDY, "run", "--study", "tiny", "--workers", "1"]

    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while _finished(url) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the study ended before the file could be broken"
        victim = sorted((tmp_path / "studies" / "tiny" / "data" / "features").glob("*.npy"))[3]
        good = victim.read_bytes()
        victim.write_bytes(b"\x93NUMPY but then the disk gave up")
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()

    # The worker went on trial after trial; as the file stayed broken, it stopped with a clear
    # message naming the file, no traceback, and no trial left RUNNING.
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert victim.name in err and "in a row" in err
    study = optuna.load_study(study_name="tiny", storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed, "the broken file failed no trial"
    for t in failed:
        assert t.user_attrs["reason"] == "data", t.user_attrs
        assert victim.name in t.user_attrs["error"] and "re-save" in t.user_attrs["error"]
    finished_before = _finished(url)
    assert finished_before >= 2, "trials finished before the breakage are kept"

    # Fixed file: the same command resumes and ends with exactly the budget.
    victim.write_bytes(good)
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _finished(url) == 6
    assert not optuna.load_study(study_name="tiny", storage=url).get_trials(states=(TrialState.RUNNING,))
