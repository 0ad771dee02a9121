"""Shared by the bad-input corpus and the security tests: the real CLI, a tiny project, payloads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SECRET = "hunter2"  # every password in these tests; it must never be printed or written
STUDY = [sys.executable, "-m", "signtune.cli"]

TINY_SPACE = """\
# Tiny search space for the reliability tests: study run --study t
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.d_model: {type: categorical, choices: [32, 64]}
  model.num_heads: {type: categorical, choices: [2, 4]}
  schedule.name: {type: categorical, choices: [cosine, linear]}
  schedule.min_lr_ratio: {type: float, low: 0.0, high: 0.1, when: {schedule.name: cosine}}
"""

# One key per line, so that a row can edit exactly one of them.
TINY_SPEC = """\
# Tiny study on generated data for the reliability tests: study run --study t
name: t
task: sign2text
search_space: ../../search_spaces/t.yaml
data:
  root: data
  feature_dim: 16
  synthetic: false
fixed:
  run.epochs: 1
  run.device: cpu
objective: {metric: val_bleu, direction: maximize}
sampler: {name: tpe, seed: 0}
pruner: {name: median, reduction_factor: 3}
budget: {trials: 1, subset: 1.0}
tracking: {enabled: true}
enqueue:
  - {optim.lr: 1.0e-3, model.d_model: 32}
"""

OK_PLUGIN = """
def objective(config, report, ctx):
    report(1, {"score": float(config.get("x", 0.0))})
    return {"score": float(config.get("x", 0.0))}
"""
BOOM_PLUGIN = 'raise RuntimeError("boom at import")\n'


def study(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `study` command in ``cwd`` (which is put on PYTHONPATH for plug-ins)."""
    full_env = {
        **os.environ,
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.run([*STUDY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def make_project(root: Path, data: Path | None) -> Path:
    """``root``/studies/t (tiny spec, a copy of ``data`` as its data/) + search_spaces/t.yaml + plug-ins."""
    sdir = root / "studies" / "t"
    sdir.mkdir(parents=True)
    (root / "search_spaces").mkdir()
    (root / "search_spaces" / "t.yaml").write_text(TINY_SPACE)
    (sdir / "study.yaml").write_text(TINY_SPEC)
    (root / "okplug.py").write_text(OK_PLUGIN)
    (root / "boomplug.py").write_text(BOOM_PLUGIN)
    if data is not None:
        shutil.copytree(data, sdir / "data")
    return root


def edit(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of ``old`` in ``path`` (the test fails if it is not there)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new))


def snapshot(root: Path) -> set[Path]:
    """Every file and folder under ``root`` except Python's bytecode caches."""
    return {p.relative_to(root) for p in root.rglob("*") if "__pycache__" not in p.parts}


class TouchOnUnpickle:
    """Unpickling this runs ``touch <marker>``: the file existing proves that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch '{self.marker}'",))
