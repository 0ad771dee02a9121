"""``study doctor``: check a study's stores, trials and data; repair what can be repaired with
nothing lost.

- storage: the Optuna store opens, its file is sound, its schema is this Optuna's. Repair:
  an older schema is upgraded after a backup copy.
- trials: no trial is RUNNING for a process that is gone (a dead pid on this host, or a
  stale heartbeat). Repair: failed with a reason and retried once, as ``study reap`` does.
- tracking: the MLflow store is whole (no migration cut off) and of this MLflow's schema.
  Repair: a damaged store is moved aside (kept), rebuilt and back-filled from the study; an
  older one is upgraded after a backup copy.
- tracking gaps: every finished trial reached MLflow. Repair: back-filled from the study.
- data: the sign2text manifests and feature files (``study data check``); nothing to repair,
  the report names each file.

A damaged Optuna store is never rebuilt: it *is* the record. The finding says how to recover it.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from signtune.errors import Problem, StudyError
from signtune.spec import StudySpec
from signtune.storage import mask_url, sqlite_problem

Status = Literal["ok", "problem", "repaired"]


@dataclass(frozen=True)
class Finding:
    """One check's outcome: the part, its status, what was seen, and the fix when not ok."""

    part: str
    status: Status
    detail: str
    fix: str = ""


def check_stores(spec: StudySpec) -> None:
    """Refuse to start on a damaged store, with the fix; cheap (no MLflow or Optuna import).

    Raises:
        StudyError: the Optuna SQLite file or the MLflow store is damaged or of another schema.
    """
    problems = []
    if spec.storage.startswith("sqlite:///"):
        path = Path(spec.storage[len("sqlite:///") :])
        found = sqlite_problem(path) if path.is_file() else None
        if found:
            problems.append(
                Problem(
                    f"storage {mask_url(spec.storage)}",
                    f"{path} {found}",
                    f"run `study doctor --study {spec.name}` for the way to recover it (a damaged study store is "
                    "never rebuilt: it is the study's record)",
                )
            )
    if spec.tracking.enabled:
        from signtune.tracking import store_problem

        tracking = store_problem(spec.tracking_uri)
        if tracking:
            problems.append(
                Problem(
                    f"tracking store {mask_url(spec.tracking_uri)}",
                    tracking.message,
                    f"run `study doctor --study {spec.name} --repair` ("
                    + (
                        "keeps the damaged file, rebuilds the store and back-fills it from the study"
                        if tracking.repair == "rebuild"
                        else "upgrades the schema after a backup copy"
                    )
                    + "), or add --no-tracking to run without MLflow",
                )
            )
    if problems:
        raise StudyError(problems)


def diagnose(
    spec: StudySpec, *, repair: bool, data_check: Callable[[StudySpec], Finding] | None = None
) -> list[Finding]:
    """Every check of the table above, in order; with ``repair``, the repairs too."""
    findings = _storage(spec, repair)
    if findings[-1].status == "problem" and findings[-1].part == "storage":
        return findings  # nothing else can be read without the study
    findings += _trials(spec, repair)
    if spec.tracking.enabled:
        findings += _tracking(spec, repair)
    else:
        findings.append(Finding("tracking", "ok", "off in this spec (tracking.enabled: false)"))
    if data_check is not None:
        findings.append(data_check(spec))
    return findings


def _storage(spec: StudySpec, repair: bool) -> list[Finding]:
    url = spec.storage
    where = mask_url(url)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_file():
            return [Finding("storage", "problem", f"{where}: no store yet", f"run `study run --study {spec.name}`")]
        found = sqlite_problem(path)
        if found:
            return [
                Finding(
                    "storage",
                    "problem",
                    f"{path} {found}",
                    f"restore the newest backup of {path}, or salvage it with `sqlite3 {path} .recover | sqlite3 "
                    f"{path.name}.recovered` and point `storage:` at the result",
                )
            ]
    if url.startswith(("sqlite", "postgresql")):
        schema = _optuna_schema(spec, repair)
        if schema is not None:
            return [schema]
    from signtune.study import count_states, open_study

    try:
        study = open_study(spec, create=False)
        counts = count_states(study)
    except StudyError as exc:
        p = exc.problems[0]
        return [Finding("storage", "problem", f"{p.where}: {p.message}", p.fix)]
    shown = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n)
    return [Finding("storage", "ok", f"{where}: study {spec.name!r} with {shown or 'no trials'}")]


def _optuna_schema(spec: StudySpec, repair: bool) -> Finding | None:
    """A finding when the Optuna schema is not this Optuna's (upgraded with ``repair``)."""
    import optuna

    try:
        storage = optuna.storages.RDBStorage(spec.storage, skip_compatibility_check=True)
        current, head = storage.get_current_version(), storage.get_head_version()
    except Exception as exc:
        text = mask_url(str(exc)).splitlines()[0]
        return Finding("storage", "problem", f"{mask_url(spec.storage)} cannot be read: {text}", "check the URL")
    if current == head:
        storage.engine.dispose()
        return None
    if not repair:
        return Finding(
            "storage",
            "problem",
            f"{mask_url(spec.storage)} has Optuna schema {current}, this Optuna needs {head}",
            f"run `study doctor --study {spec.name} --repair` (upgrades after a backup copy)",
        )
    backup = _backup_sqlite(spec.storage)
    storage.upgrade()
    storage.engine.dispose()
    kept = f"; the old file is kept as {backup}" if backup else ""
    return Finding("storage", "repaired", f"upgraded the Optuna schema {current} -> {head}{kept}")


def _trials(spec: StudySpec, repair: bool) -> list[Finding]:
    import datetime

    from optuna.trial import TrialState

    from signtune.hosts import host_id
    from signtune.runner import pid_alive, reap_gone
    from signtune.storage import GRACE_PERIOD_S
    from signtune.study import open_study

    study = open_study(spec, create=False)
    host, now = host_id(), time.time()
    stuck = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        beat = attrs.get("heartbeat")
        start = (t.datetime_start or datetime.datetime.now()).timestamp()
        last = float(beat) if isinstance(beat, int | float) else start
        if (attrs.get("host") == host and not pid_alive(attrs.get("pid"))) or now - last > GRACE_PERIOD_S:
            stuck.append(t.number)
    if not stuck:
        return [Finding("trials", "ok", "no trial is left RUNNING by a process that is gone")]
    if not repair:
        return [
            Finding(
                "trials",
                "problem",
                f"trials {stuck} are RUNNING, but their process is gone (dead pid here, or no heartbeat for "
                f"{GRACE_PERIOD_S:.0f}s)",
                f"run `study doctor --study {spec.name} --repair` or `study reap --study {spec.name}`",
            )
        ]
    reaped = reap_gone(spec, study, end_runs=True)
    return [Finding("trials", "repaired", f"failed trials {reaped} (their params are retried once)")]


def _tracking(spec: StudySpec, repair: bool) -> list[Finding]:
    from signtune.tracking import store_problem

    uri = spec.tracking_uri
    found = store_problem(uri)
    if found is not None and not repair:
        fix = (
            "moves the file aside (kept), rebuilds the store and back-fills it from the study"
            if found.repair == "rebuild"
            else "upgrades the schema after a backup copy"
        )
        repair_cmd = f"run `study doctor --study {spec.name} --repair` ({fix})"
        return [Finding("tracking", "problem", found.message, repair_cmd)]
    findings = []
    rebuilt = False
    if found is not None:
        path = Path(uri[len("sqlite:///") :])
        if found.repair == "rebuild":
            kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    Path(f"{path}{suffix}").rename(f"{kept}{suffix}")
            findings.append(Finding("tracking", "repaired", f"{found.message}; moved it to {kept} and rebuilt it"))
            rebuilt = True
        else:
            backup = _backup_sqlite(uri)
            _upgrade_mlflow(uri)
            findings.append(Finding("tracking", "repaired", f"{found.message}; upgraded it (backup: {backup})"))
    else:
        findings.append(Finding("tracking", "ok", f"{mask_url(uri)} is whole and of this MLflow's schema"))
    findings.append(_gaps(spec, repair, everything=rebuilt))
    return findings


def _gaps(spec: StudySpec, repair: bool, *, everything: bool) -> Finding:
    from signtune.study import intermediate_metric, open_study
    from signtune.tracking import make_tracker, trials_missing

    study = open_study(spec, create=False)
    if everything:  # a rebuilt store holds nothing yet: every finished trial is logged again
        study.set_user_attr("tracking_backfilled", [])
        missing = [t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    else:
        missing = [t.number for t in trials_missing(study)]
    if not missing:
        return Finding("tracking gaps", "ok", "every finished trial reached MLflow")
    if not repair:
        return Finding(
            "tracking gaps",
            "problem",
            f"MLflow misses trials {missing} (it failed while they ran)",
            f"run `study doctor --study {spec.name} --repair` or `study export --study {spec.name}` to back-fill them",
        )
    filled = make_tracker(spec).backfill(
        study,
        spec.objective.metric,
        numbers=set(missing) if everything else None,
        epochs_as=intermediate_metric(spec),
    )
    return Finding("tracking gaps", "repaired", f"back-filled trials {filled} from the study")


def _backup_sqlite(url: str) -> Path | None:
    """A consistent copy of a SQLite store beside it (SQLite's online backup); None for servers."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///") :])
    backup = path.with_name(f"{path.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
    src, dst = sqlite3.connect(path), sqlite3.connect(backup)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return backup


def _upgrade_mlflow(uri: str) -> None:
    """``mlflow db upgrade`` (MLflow's own migration command) on the store at ``uri``."""
    import subprocess
    import sys

    mlflow = shutil.which("mlflow")
    cmd = [mlflow] if mlflow else [sys.executable, "-m", "mlflow"]
    done = subprocess.run([*cmd, "db", "upgrade", uri], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = mask_url(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
        raise StudyError(
            Problem(f"tracking store {mask_url(uri)}", f"`mlflow db upgrade` failed: {tail}", "see MLflow's message")
        )
