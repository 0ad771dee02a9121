from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_inherited_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their MLflow store explicitly; none inherits one from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SIGNTUNE_STORAGE", raising=False)
    monkeypatch.delenv("SIGNTUNE_FAULTS", raising=False)


@pytest.fixture
def study_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project folder holding a copy of the demo study and search space.

    The working directory is switched to it, so `studies/<name>` resolves there.
    """
    (tmp_path / "studies" / "demo").mkdir(parents=True)
    (tmp_path / "search_spaces").mkdir()
    shutil.copy(ROOT / "studies" / "demo" / "study.yaml", tmp_path / "studies" / "demo" / "study.yaml")
    shutil.copy(ROOT / "search_spaces" / "sign2text.yaml", tmp_path / "search_spaces" / "sign2text.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "studies" / "demo"


# The fast plug-in project (tests/runner/conftest.py) serves the runner, reliability and
# browse tests alike.
from tests.runner.conftest import fast_project  # noqa: E402, F401
