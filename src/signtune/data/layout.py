"""Which folder holds each split's feature files.

``data.features_dir`` names one folder for every split (``features``), or one folder per split
through the ``{split}`` placeholder (``features/{split}``: ``features/train``, ``features/val``,
``features/test``). When a plain folder holds none of a split's clips but its sub-folder named
after the split does (``features/train/<id>.pt``, the layout of the scripts signtune replaces),
that sub-folder is used, and ``layout_note`` words what was found and the one-line setting that
says so. Inside the folder a clip is looked up as ``features.resolve_feature_path`` does.

Deciding costs a few ``stat`` calls: only the first ``PROBE`` ids of a split are looked up.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from pathlib import Path

from signtune.data.features import candidate_paths, check_id
from signtune.errors import DataError

PLACEHOLDER = "{split}"
SPLITS = ("train", "val", "test")
PROBE = 20  # ids looked up to decide where a split's files are

log = logging.getLogger("signtune.data")
_SAID: set[str] = set()


def features_dir_problem(value: str) -> tuple[str, str] | None:
    """(message, fix) when ``data.features_dir`` holds a brace that is not ``{split}``; else None."""
    rest = value.replace(PLACEHOLDER, "")
    if "{" not in rest and "}" not in rest:
        return None
    return (
        f"{value!r} has a placeholder other than {PLACEHOLDER}, the only one there is",
        f"write e.g. `features_dir: features/{PLACEHOLDER}` for features/train, features/val and features/test",
    )


def per_split(features_dir: str) -> bool:
    """Whether ``data.features_dir`` names one folder per split."""
    return PLACEHOLDER in features_dir


def configured_folder(root: Path, features_dir: str, split: str) -> Path:
    """The folder ``data.features_dir`` names for ``split`` (the same one for every split
    when it has no placeholder)."""
    return Path(root) / features_dir.replace(PLACEHOLDER, split)


def holds_any(folder: Path, ids: Sequence[str]) -> bool:
    """Whether ``folder`` holds the feature file of one of the first ``PROBE`` (plain) ids."""
    if not Path(folder).is_dir():
        return False
    for clip_id in ids[:PROBE]:
        try:
            check_id(clip_id)
        except DataError:
            continue
        if any(p.is_file() for p in candidate_paths(folder, clip_id)):
            return True
    return False


def split_folder(root: Path, features_dir: str, split: str, ids: Sequence[str]) -> tuple[Path, bool]:
    """The folder ``split``'s feature files are read from, and whether it was found rather than
    configured: ``<features_dir>/<split>/`` when the configured folder holds none of the split's
    first ids and that sub-folder holds one of them."""
    folder = configured_folder(root, features_dir, split)
    if per_split(features_dir) or not ids or holds_any(folder, ids):
        return folder, False
    if holds_any(folder / split, ids):
        return folder / split, True
    return folder, False


def manifest_folder(features_dir: Path, manifest: Path, ids: Sequence[str]) -> tuple[Path, bool]:
    """The folder a lone manifest's clips are read from (``study translate --manifest``), and
    whether it was found: ``features_dir``, or, when that holds none of the first ids, its
    sub-folder named after a split that holds one (the split the manifest's name names first)."""
    features_dir = Path(features_dir)
    if not ids or holds_any(features_dir, ids):
        return features_dir, False
    stem = Path(manifest).stem.lower()
    for split in sorted(SPLITS, key=lambda s: s not in stem):
        if holds_any(features_dir / split, ids):
            return features_dir / split, True
    return features_dir, False


def layout_note(features_dir: str, found: Sequence[str]) -> str:
    """What to say when ``found`` splits were read from sub-folders of ``data.features_dir``."""
    base = features_dir.rstrip("/")
    subs = ", ".join(f"{base}/{s}/" for s in found)
    return (
        f"data.features_dir {base!r} holds no feature files of the {', '.join(found)} clips; {subs} "
        f"{'does' if len(found) == 1 else 'do'}, and {'is' if len(found) == 1 else 'are'} used"
    )


def layout_fix(features_dir: str) -> str:
    """The one setting that names the per-split layout."""
    return f"set `features_dir: {features_dir.rstrip('/')}/{PLACEHOLDER}` under data: in study.yaml to say so"


def missing_hint(root: Path, features_dir: str, split: str, ids: Sequence[str], found: Sequence[str] = ()) -> str:
    """A one-line fix when ``split``'s clips are missing but the files sit in a per-split layout
    (or the setting expects one they are not in); empty when there is none to give.

    Args:
        root: the data folder.
        features_dir: ``data.features_dir`` as configured.
        split: the split whose clips are missing.
        ids: its clip ids.
        found: other splits already read from ``<features_dir>/<split>/`` sub-folders.
    """
    if per_split(features_dir):  # e.g. features/{split}, while the files are all in features/
        flat = features_dir.replace("/" + PLACEHOLDER, "").replace(PLACEHOLDER, "").rstrip("/") or "."
        if holds_any(Path(root) / flat, ids):
            return f"the {split} files are in {flat}/, not in per-split folders: set `features_dir: {flat}`"
        return ""
    parent, name = Path(features_dir).parent, Path(features_dir).name
    if name in SPLITS and name != split and holds_any(Path(root) / parent / split, ids):
        # data.features_dir names one split's folder (features/train); the others are beside it
        beside = parent.as_posix()
        return f"the {split} files are in {beside}/{split}/: set `features_dir: {beside}/{PLACEHOLDER}`"
    if found:
        base = features_dir.rstrip("/")
        return f"the {', '.join(found)} files are in per-split folders: put the {split} files in {base}/{split}/"
    return ""


def feature_listing(root: Path, features_dir: str) -> list[str]:
    """The sorted names in the features folder(s), what promote-best's provenance hashes:
    ``<name>`` in a single folder, plus ``<split>/<name>`` in the folders of the splits (the
    ``{split}`` folders, or the split-named sub-folders of a single one)."""
    names: list[str] = []
    if not per_split(features_dir):
        folder = Path(root) / features_dir
        names += [p.name for p in folder.iterdir()] if folder.is_dir() else []
    for split in SPLITS:
        if per_split(features_dir):
            folder = configured_folder(root, features_dir, split)
        else:
            folder = Path(root) / features_dir / split
        if folder.is_dir():
            names += [f"{split}/{p.name}" for p in folder.iterdir()]
    return sorted(names)


def say_once(note: str) -> None:
    """Log ``note`` (a warning on ``signtune.data``) once per process; a process started by
    another one (a spawned worker) leaves it to its parent, which has said it already."""
    if note in _SAID or multiprocessing.parent_process() is not None:
        return
    _SAID.add(note)
    log.warning(note)
