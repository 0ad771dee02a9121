"""The local MLflow store: created whole or not at all, checked without importing MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from signtune.storage import create_sqlite_atomically, sqlite_problem
from signtune.tracking.quiet import quiet_mlflow


def create_sqlite_store(path: Path, artifact_dir: Path | None) -> bool:
    """Create a local MLflow store at ``path`` whole or not at all; whether this call made it.

    MLflow builds a new store by running its schema migrations one by one; cut off halfway (a
    Ctrl-C, a kill), they leave a store that every later run fails on. Here they run on a
    temporary file that is linked into place only when complete.
    """
    if path.exists():
        return False
    quiet_mlflow()
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = (artifact_dir or path.parent / "mlartifacts").resolve().as_uri()

    def build(tmp: Path) -> None:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", root)
        store.engine.dispose()

    return create_sqlite_atomically(path, build)


def schema_revisions() -> tuple[frozenset[str], str | None]:
    """The MLflow schema revisions the installed MLflow knows, and its head revision.

    Read from MLflow's migration files without importing MLflow (a check at start-up must be cheap).
    """
    import importlib.util
    import re

    found = importlib.util.find_spec("mlflow")
    if found is None or not found.submodule_search_locations:
        return frozenset(), None
    folder = Path(next(iter(found.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    revisions: set[str] = set()
    downs: set[str] = set()
    for file in folder.glob("*.py"):
        text = file.read_text(encoding="utf-8", errors="replace")
        rev = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.MULTILINE)
        down = re.search(r"^down_revision\s*=\s*['\"](\w+)['\"]", text, re.MULTILINE)
        if rev:
            revisions.add(rev.group(1))
        if down:
            downs.add(down.group(1))
    heads = revisions - downs
    return frozenset(revisions), (next(iter(heads)) if len(heads) == 1 else None)


class StoreProblem(NamedTuple):
    """What is wrong with a tracking store, and how ``study doctor --repair`` mends it."""

    message: str
    repair: Literal["rebuild", "upgrade"]


def store_problem(uri: str) -> StoreProblem | None:
    """A local (SQLite) MLflow store's damage or schema mismatch; None when healthy, absent or remote.

    Reads the file with sqlite3 only: no MLflow import, nothing written.
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///") :])
    if not path.is_file():
        return None
    problem = sqlite_problem(path)
    if problem:
        return StoreProblem(f"{path} {problem}", "rebuild")
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        if leftover:
            return StoreProblem(
                f"{path}: a schema migration was cut off halfway (table {leftover[0]} left behind)", "rebuild"
            )
        if "alembic_version" not in tables or "runs" not in tables:
            return StoreProblem(f"{path} holds no complete MLflow schema (tables: {sorted(tables)[:6]})", "rebuild")
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        con.close()
    known, head = schema_revisions()
    version = row[0] if row else None
    if version is None:
        return StoreProblem(f"{path} records no schema version", "rebuild")
    if known and version not in known:
        return StoreProblem(
            f"{path} has schema revision {version}, which this MLflow does not know (a newer MLflow made it)",
            "rebuild",
        )
    if head and version != head:
        return StoreProblem(f"{path} has schema revision {version}, older than this MLflow's {head}", "upgrade")
    return None
