"""Folders written aside and swapped in whole, so one complete copy exists at every instant.

Checkpoints (``promote-best``) and exports (``study export``) are written into a sibling
folder, then ``commit_dir`` swaps it in; ``recover_dir`` repairs the one state a crash
between the two renames can leave.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def commit_dir(tmp: Path, path: Path) -> None:
    """Swap the fully written folder ``tmp`` in for ``path``: one complete copy exists throughout.

    The old copy is renamed aside first, so a crash between the two renames leaves it as
    ``<name>.old``, which ``recover_dir`` puts back.
    """
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: Path) -> Path:
    """``path``, restored from ``<name>.old`` when a crash fell inside ``commit_dir``."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)
    return path
