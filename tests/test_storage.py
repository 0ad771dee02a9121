from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from signtune.errors import StudyError
from signtune.storage import check_storage_url, create_storage, mask_url

PG_URL = os.environ.get("SIGNTUNE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=2):
            return True
    except Exception:
        return False


def require_postgres() -> None:
    if postgres_available():
        return
    if os.environ.get("SIGNTUNE_REQUIRE_POSTGRES") == "1":
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is required here (SIGNTUNE_REQUIRE_POSTGRES=1) but not reachable")
    pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable; set SIGNTUNE_REQUIRE_POSTGRES=1 to make this a failure")


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The storage matrix: every storage test runs on each backend through this one helper."""
    monkeypatch.chdir(tmp_path)
    if request.param == "sqlite":
        yield "sqlite:///studies/t/study.db"
    elif request.param == "journal":
        yield "journal:///studies/t/journal.log"
    else:
        require_postgres()
        yield PG_URL


def test_roundtrip_on_every_backend(storage_url: str) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    storage = create_storage(storage_url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name=name, storage=create_storage(storage_url))
    assert len(again.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials)
    optuna.delete_study(study_name=name, storage=storage)


def test_sqlite_is_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    create_storage("sqlite:///a/study.db")
    con = sqlite3.connect(tmp_path / "a" / "study.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg://bob:s3cr3t@db:5432/optuna", "postgresql+psycopg://bob:***@db:5432/optuna"),
        ("see http://u:p%40ss@host/x and sqlite:///a.db", "see http://u:***@host/x and sqlite:///a.db"),
        ("postgresql+psycopg://bob@db/optuna", "postgresql+psycopg://bob@db/optuna"),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://x/y", "must start with one of"),
        ("postgresql://u:pw@h/db", "postgresql+psycopg://"),
        ("sqlite://relative.db", "sqlite:/// followed by a file path"),
        ("journal:///", "has no file path"),
    ],
)
def test_bad_storage_urls(url: str, fragment: str) -> None:
    problem = check_storage_url(url)
    assert problem is not None and fragment in " ".join(problem)
    assert "pw" not in " ".join(problem)


def test_unreachable_postgres_masks_password() -> None:
    with pytest.raises(StudyError) as info:
        create_storage("postgresql+psycopg://bob:hunter2@127.0.0.1:1/nodb")
    assert "hunter2" not in str(info.value)
    assert "bob:***@" in str(info.value)
