"""Bad input through the real `study` command: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = [sys.executable, "-m", "signtune.cli"]


def study(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*STUDY, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=full_env)


def _set(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


CASES = [
    # (id, edit of study.yaml as (old, new) or None, extra args, expected fragment)
    ("malformed-yaml", ("budget:\n  trials: 30", "budget:\n  trials: 30\n   subset: [1"), [], "not valid YAML"),
    ("unknown-key", ("sampler:\n", "samplr:\n  x: 1\nsampler:\n"), [], "samplr: is not a known key"),
    ("unknown-sampler", ("name: auto ", "name: tpee "), [], "sampler.name: must be one of ['auto', 'tpe', 'random', 'gp']"),
    ("float-as-string", ("  eval.max_len: 32", "  eval.max_len: 32\n  optim.lr: 1e-5"), [], "write 1.0e-5"),
    ("bad-trials-flag", None, ["--trials", "0"], "budget.trials: must be >= 1"),
    ("bad-subset-flag", None, ["--subset", "2"], "budget.subset: must be in (0, 1]"),
    ("bad-storage-flag", None, ["--storage", "postgresql://bob:hunter2@db/x"], "postgresql+psycopg://"),
    ("bad-tracking-flag", None, ["--tracking-uri", "ftp://x"], "--tracking-uri: must start with one of"),
    ("missing-study", None, ["--study", "nosuch"], "no study spec found"),
]


@pytest.mark.parametrize(("edit", "args", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exit_2(study_dir: Path, edit: tuple[str, str] | None, args: list[str], fragment: str) -> None:
    if edit:
        _set(study_dir / "study.yaml", *edit)
    res = study("run", *args, cwd=study_dir.parents[1])
    assert res.returncode == 2, res.stderr
    assert fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert "hunter2" not in res.stderr + res.stdout
    assert not (study_dir / "study.db").exists(), "a config error must not write to storage"
    assert not (study_dir / "mlflow.db").exists(), "a config error must not write to MLflow"


def test_low_greater_than_high_in_space(study_dir: Path) -> None:
    space = study_dir.parents[1] / "search_spaces" / "sign2text.yaml"
    _set(
        space, "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2", "optim.lr: {type: float, low: 1.0e-2, high: 1.0e-4"
    )
    res = study("validate", "demo", cwd=study_dir.parents[1])
    assert res.returncode == 2
    assert "params.optim.lr: low must be <= high" in res.stderr
    assert "fix: swap low and high" in res.stderr


def test_validate_ok(study_dir: Path) -> None:
    res = study("validate", "demo", cwd=study_dir.parents[1])
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


def test_help_lists_commands(tmp_path: Path) -> None:
    res = study("--help", cwd=tmp_path)
    assert res.returncode == 0
    for cmd in ("run", "validate", "export", "status", "train", "data"):
        assert cmd in res.stdout


def test_validate_rejects_a_typo_under_promote(study_dir: Path) -> None:
    _set(study_dir / "study.yaml", "  patience: 3", "  patiense: 3")
    res = study("validate", "demo", cwd=study_dir.parents[1])
    assert res.returncode == 2, res.stderr
    assert "studies/demo/study.yaml: promote.patiense: is not a known key" in res.stderr
    assert "fix: use one of" in res.stderr and "'patience'" in res.stderr
    assert "Traceback" not in res.stderr
