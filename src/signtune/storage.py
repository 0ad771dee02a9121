"""Storage URL -> Optuna storage: hardened SQLite, PostgreSQL (psycopg 3), journal file.

Every URL printed or logged goes through ``mask_url`` first.
"""

from __future__ import annotations

import re
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from signtune.errors import Problem, StudyError

T = TypeVar("T")
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "journal")
# A heartbeat every 60 s, and a trial is stale after 10 min without one: long enough for an
# evaluation pass over a large validation split, short enough to recover a dead host's slot.
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 600
SQLITE_BUSY_TIMEOUT_S = 60

_PASSWORD_RE = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<tail>@)")
# libpq and SQLAlchemy also take the password as a query parameter: ...?password=PW
_QUERY_PASSWORD_RE = re.compile(r"(?P<head>[?&;]password=)(?P<pw>[^&;\s'\"]+)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***`` (``user:PW@`` and ``?password=PW``)."""
    text = _PASSWORD_RE.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _QUERY_PASSWORD_RE.sub(lambda m: f"{m['head']}***", text)


def check_storage_url(url: str) -> tuple[str, str] | None:
    """Return ``(rule and value, fix)`` if ``url`` is not a storage URL signtune can open."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        return (
            f"must start with one of {[s + '://' for s in SCHEMES]}, but got {mask_url(url)!r}",
            "e.g. sqlite:///studies/demo/study.db, postgresql+psycopg://USER:PASSWORD@HOST/DB or journal:///path/to/journal.log",
        )
    if scheme == "postgresql":
        return (
            f"uses the plain postgresql:// scheme ({mask_url(url)!r}), which picks the psycopg2 driver",
            "write postgresql+psycopg://... to use psycopg 3",
        )
    if scheme in ("sqlite", "journal") and not url.startswith(f"{scheme}:///"):
        return (
            f"must be {scheme}:/// followed by a file path, but got {url!r}",
            f"e.g. {scheme}:///studies/demo/study.db",
        )
    if scheme in ("sqlite", "journal") and not url.split("://", 1)[1].lstrip("/"):
        example = "studies/demo/study.db" if scheme == "sqlite" else "studies/demo/journal.log"
        return (f"has no file path: {url!r}", f"e.g. {scheme}:///{example}")
    return None


def _sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite:///") :])


def _prepare_sqlite(url: str) -> None:
    """Create the parent dir and switch the database to WAL (persistent per file).

    WAL lets readers (the dashboard, ``study status``) run beside writers without
    "database is locked".
    """
    path = _sqlite_path(url)
    if str(path) in ("", ":memory:"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
    finally:
        con.close()


TRANSIENT = (
    "database is locked",
    "already exists",
    "unique constraint failed: alembic_version",  # two processes stamping a new schema at once
    "could not connect",
    "connection refused",
    "server closed",
)


def _with_retry(make: Callable[[], T], attempts: int = 6) -> T:
    """Retry transient errors: two processes creating the schema at once, a locked SQLite
    file, or a PostgreSQL server that is restarting."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as exc:
            if attempt == attempts - 1 or not any(t in str(exc).lower() for t in TRANSIENT):
                raise
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


def _serialize_sqlite_writes(engine: Any) -> None:
    """Start every transaction of ``engine`` (an Optuna SQLite storage's) with BEGIN IMMEDIATE.

    SQLite ignores SELECT ... FOR UPDATE, and pysqlite runs a SELECT outside any transaction,
    so two workers could both read a WAITING trial (enqueued, or a retry) and both run it.
    Taking the write lock at BEGIN makes the read-then-claim atomic; waiters queue on the busy
    timeout. Hooked after the storage is built, so its own schema set-up runs as before.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if dbapi.isolation_level is not None:
            dbapi.isolation_level = None  # let this BEGIN, not pysqlite's, open the transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Open the Optuna storage at ``url``.

    Args:
        url: ``sqlite:///path``, ``postgresql+psycopg://...`` or ``journal:///path``.
        heartbeat: record heartbeats for running trials (RDB storages) so that trials of a
            dead worker are failed and retried once by ``RetryHeartbeatStaleTrialCallback``.

    Raises:
        StudyError: the storage cannot be opened; the message masks any password.
    """
    problem = check_storage_url(url)
    if problem:
        raise StudyError(f"storage {problem[0]}; {problem[1]}")
    try:
        if url.startswith("journal://"):
            # Same convention as SQLAlchemy: journal:///relative/path, journal:////absolute/path.
            path = Path(url[len("journal:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any]
        if url.startswith("sqlite"):
            _prepare_sqlite(url)
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        else:
            engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300}
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since v2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            hb: dict[str, Any] = {}
            if heartbeat:
                hb = {
                    "heartbeat_interval": HEARTBEAT_INTERVAL_S,
                    "grace_period": GRACE_PERIOD_S,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1),
                }
            storage = _with_retry(lambda: RDBStorage(url, engine_kwargs=engine_kwargs, **hb))
        if url.startswith("sqlite"):
            _serialize_sqlite_writes(storage.engine)
        return storage
    except Exception as exc:  # driver errors carry the URL; never show the password
        raise StudyError(
            Problem(
                "storage",
                f"cannot open {mask_url(url)}: {mask_url(str(exc)).splitlines()[0]}",
                "check that the file's folder is writable and the file is not another program's"
                if url.startswith(("sqlite", "journal"))
                else "check that the server is up and reachable from here, and the URL's user, host, port and database",
            )
        ) from None
