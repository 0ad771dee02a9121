"""Storage URL -> Optuna storage: hardened SQLite, PostgreSQL (psycopg 3), journal file.

Every URL printed or logged goes through ``mask_url`` first.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from signtune.errors import Problem, StudyError

T = TypeVar("T")
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "journal")
# A running trial's worker records a heartbeat every 60 s (the trial's ``heartbeat`` user
# attr, on every storage, journal included), and a trial is stale after 10 min without one:
# long enough for an evaluation pass over a large validation split and for clocks a little
# apart between hosts, short enough to recover a dead host's slot. The environment variables
# shorten both (tests, or clusters that want a dead host noticed sooner).
HEARTBEAT_INTERVAL_S = float(os.environ.get("SIGNTUNE_HEARTBEAT_S", "60"))
GRACE_PERIOD_S = float(os.environ.get("SIGNTUNE_GRACE_S", "600"))
SQLITE_BUSY_TIMEOUT_S = 60

_PASSWORD_RE = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<tail>@)")
# libpq and SQLAlchemy also take the password as a query parameter: ...?password=PW
_QUERY_PASSWORD_RE = re.compile(r"(?P<head>[?&;]password=)(?P<pw>[^&;\s'\"]+)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***`` (``user:PW@`` and ``?password=PW``)."""
    text = _PASSWORD_RE.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _QUERY_PASSWORD_RE.sub(lambda m: f"{m['head']}***", text)


def check_scheme(url: str, schemes: tuple[str, ...], example: str) -> tuple[str, str] | None:
    """``(rule and value, fix)`` if ``url``'s scheme is not one of ``schemes`` (the URL masked)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in schemes:
        return (f"must start with one of {[s + '://' for s in schemes]}, but got {mask_url(url)!r}", example)
    return None


def check_storage_url(url: str) -> tuple[str, str] | None:
    """Return ``(rule and value, fix)`` if ``url`` is not a storage URL signtune can open."""
    problem = check_scheme(
        url,
        SCHEMES,
        "e.g. sqlite:///studies/demo/study.db, postgresql+psycopg://USER:PASSWORD@HOST/DB or journal:///path/to/journal.log",
    )
    if problem:
        return problem
    scheme = url.split("://", 1)[0]
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


def create_sqlite_atomically(path: Path, build: Callable[[Path], None]) -> bool:
    """Create the SQLite database ``path`` whole or not at all; whether this call created it.

    ``build(tmp)`` creates the schema in a temporary file beside ``path``, which is then
    hard-linked into place: a kill or an interrupt at any instant leaves either no database
    or a complete one, never a half-migrated schema. Two processes creating the same store at
    once both build, and the first link wins (the loser's temporary file is removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    _remove_sqlite(tmp)
    try:
        build(tmp)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        _remove_sqlite(tmp)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def sqlite_problem(path: Path) -> str | None:
    """What is wrong with the SQLite file ``path`` (None when it reads as a healthy database)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        return f"cannot be opened: {exc}"
    try:
        result = con.execute("PRAGMA quick_check").fetchone()
        if not result or result[0] != "ok":
            return f"is damaged (sqlite quick_check: {result[0] if result else 'no answer'})"
    except sqlite3.DatabaseError as exc:
        return f"is not a readable SQLite database ({exc})"
    finally:
        con.close()
    return None


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


def _build_optuna_sqlite(tmp: Path, engine_kwargs: dict[str, Any]) -> None:
    """Optuna's schema in a new SQLite file (WAL), every connection closed afterwards."""
    _prepare_sqlite(f"sqlite:///{tmp}")
    built = RDBStorage(f"sqlite:///{tmp}", engine_kwargs=engine_kwargs)
    built.engine.dispose()


def create_storage(url: str) -> optuna.storages.BaseStorage:
    """Open the Optuna storage at ``url``; a new SQLite file is created whole or not at all.

    Liveness is signtune's own (the ``heartbeat`` trial attr, see ``runner.reap_stale``), the
    same on every storage: Optuna's RDB heartbeat fails a stale trial before anyone can record
    why, and the journal storage has none.

    Args:
        url: ``sqlite:///path``, ``postgresql+psycopg://...`` or ``journal:///path``.

    Raises:
        StudyError: the storage cannot be opened; the message masks any password.
    """
    problem = check_storage_url(url)
    if problem:
        raise StudyError(Problem("storage", problem[0], problem[1]))
    try:
        if url.startswith("journal://"):
            # Same convention as SQLAlchemy: journal:///relative/path, journal:////absolute/path.
            path = Path(url[len("journal:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any]
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
            path = _sqlite_path(url)
            if str(path) not in ("", ":memory:") and not path.exists():
                create_sqlite_atomically(path, lambda tmp: _build_optuna_sqlite(tmp, engine_kwargs))
            _prepare_sqlite(url)
        else:
            engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300}
        storage = _with_retry(lambda: RDBStorage(url, engine_kwargs=engine_kwargs))
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
