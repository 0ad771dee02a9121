"""What promote-best writes down beside the model: ``metrics.json`` (how the candidates and the
winner scored, by the study's metric) and ``provenance.json`` (where the winner came from)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from signtune.promote.select import Candidate
from signtune.spec import StudySpec
from signtune.storage import mask_url

# A candidate's record: these keys, then the metrics of its best epoch (a metric of the same
# name does not replace them).
_RECORD_KEYS = ("trial", "seed", "subset_value", "epochs")


def candidate_record(c: Candidate, metric: str, *, subset: bool = True) -> dict[str, Any]:
    """A candidate in ``metrics.json``: trial, seed, (subset value), its best epoch's metrics
    (``metric`` among them) and the epochs it ran."""
    record: dict[str, Any] = {"trial": c.trial, "seed": c.seed}
    if subset:
        record["subset_value"] = c.subset_value
    record.update({k: v for k, v in c.metrics.items() if k not in _RECORD_KEYS})
    record[metric] = c.value
    record["epochs"] = c.epochs_run
    return record


def write_metrics(
    out: Path,
    *,
    metric: str,
    winner: Candidate,
    candidates: list[Candidate],
    test: dict[str, float | str],
    fidelity: float | None,
    note: str,
) -> None:
    """``metrics.json``: the metric that picked the winner, the winner, its test scores, every
    candidate, and the fidelity check."""
    doc = {
        "metric": metric,
        "winner": candidate_record(winner, metric, subset=False),
        "test": test,
        "candidates": [candidate_record(c, metric) for c in candidates],
        "fidelity_spearman": fidelity,
        "fidelity_note": note,
    }
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")


def write_provenance(
    out: Path,
    spec: StudySpec,
    winner: Candidate,
    candidates: list[Candidate],
    inputs: dict[str, str],
    *,
    stages: list[dict[str, Any]] | None = None,
) -> None:
    """``provenance.json``: study (and the studies it was refined from), trials, seeds, code and
    package versions, input hashes, command; for a stage of a staged study, ``stages``: each
    earlier stage's study, best trial and the values it fixed, then this stage
    (``signtune.stages.chain``)."""
    doc = provenance(spec, winner, candidates, inputs)
    if stages is not None:
        doc["stages"] = stages
    (out / "provenance.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")


def provenance(
    spec: StudySpec, winner: Candidate, candidates: list[Candidate], hashes: dict[str, str]
) -> dict[str, Any]:
    """Where a promoted model came from: study, trials, seeds, code and package versions, inputs."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("signtune", "torch", "optuna", "mlflow", "sacrebleu", "tokenizers", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    lineage = {"lineage": spec.lineage.links()} if spec.lineage is not None else {}
    return {
        "study": spec.name,
        **lineage,
        "task": spec.task,
        "storage": mask_url(spec.storage),
        "trials": sorted({c.trial for c in candidates}),
        "winner_trial": winner.trial,
        "seeds": sorted({c.seed for c in candidates}),
        "git_commit": git_commit(),
        "versions": versions,
        "python": platform.python_version(),
        "hashes": hashes,
        "command": mask_url(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str:
    """The commit of the code's git checkout, or ``""`` outside one."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except Exception:
        return ""
