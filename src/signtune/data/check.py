"""The data check (``study data check``): every problem of a study's data at once.

``check_data`` reads every manifest and every feature file of the train, val and (when its
manifest exists) test splits and returns a ``DataReport`` of ``Finding`` s, each with its
severity, split, rule, rows, ids, message and fix. It never raises for bad data and never
prints; the CLI renders the report.

Errors are what the loader refuses, so ``study run`` stops on them too:

- ``data-root``, ``features-dir``: a folder is missing; ``manifest``, ``header``: a manifest is
  missing, unreadable or lacks the configured columns; ``empty-split``: it has no rows;
- ``fields``, ``empty-id``, ``empty-text``, ``length-field`` (an SSVP-SLT length that is not a
  non-negative integer): malformed rows;
- ``duplicate-id``; ``shared-id``: many different sentences share ids (one explicit finding:
  the manifest is keyed on a per-video column, e.g. VIDEO_NAME instead of SENTENCE_NAME);
- ``unsafe-id``, ``missing-feature``, ``unreadable-feature`` (pickled objects included),
  ``ndim``, ``feature-dim`` (one finding per D found), ``empty-clip`` (0 frames), ``non-finite``;
- ``tokenizer``: the study's tokenizer cannot be made (only when ``max_len`` is given).

Warnings (``check_stats``): ``id-column`` (a How2Sign manifest keyed on VIDEO_ID/VIDEO_NAME),
``length-mismatch``, ``truncated``, ``long-clip``, ``short-clip``, ``long-text``, ``overlap``,
``cross-split-id``, ``vocab`` (info unless the out-of-vocabulary rate is high), and ``max-len``
(val/test references longer than ``eval.max_len`` tokens of the study's tokenizer; info when
fewer than 1% are). Info: ``split-folders`` (feature files found in per-split sub-folders, see
``layout``), ``no-test``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from signtune.config import DataConfig
from signtune.data.check_stats import DecodeLimit, cross_split_findings, length_findings, max_len_findings, words
from signtune.data.features import candidate_paths, feature_problems, read_feature_array, resolve_feature_path
from signtune.data.findings import CheckedSplit, DataReport, Finding, SplitSummary, finding
from signtune.data.layout import (
    configured_folder,
    layout_fix,
    layout_note,
    missing_hint,
    per_split,
    split_folder,
)
from signtune.data.manifest import (
    PER_VIDEO_COLUMNS,
    ManifestRow,
    RowProblem,
    column_names,
    duplicate_problems,
    keyed_on_videos,
    scan_manifest,
    shared_ids,
    shared_ids_problem,
)
from signtune.errors import DataError, Problem

__all__ = ["DataReport", "DecodeLimit", "Finding", "check_data"]

SPLITS = ("train", "val", "test")
ProgressFn = Callable[[str, int, int], None]  # (split, files done, files in the split)
Add = Callable[[Finding], None]


def check_data(
    cfg: DataConfig,
    base_dir: Path,
    *,
    progress: ProgressFn | None = None,
    workers: int | None = None,
    max_len: DecodeLimit | None = None,
    cache_dir: Path | None = None,
) -> DataReport:
    """Check a study's data and return every finding (see the module docstring for the rules).

    Args:
        cfg: the data config; ``cfg.root`` is relative to ``base_dir`` unless absolute.
        base_dir: the study directory.
        progress: called after each feature file with (split, files done, files in the split).
        workers: threads reading feature files (default: one per core, at most 8).
        max_len: ``eval.max_len`` as the study sets it: the val and test references are then
            counted in tokens of the study's tokenizer against it (``max-len``); None skips that.
        cache_dir: where the study's trained tokenizer may already be cached (read, never
            written; default ``base_dir/.cache``).
    """
    root = Path(cfg.root) if Path(cfg.root).is_absolute() else Path(base_dir) / cfg.root
    report = DataReport(root=root)
    add = report.findings.append
    if not root.is_dir():
        fix = "set data.root, or generate the demo data with `study data synth --out DIR`"
        add(Finding("error", "data", "data-root", str(root), "the data folder does not exist", fix))
        return report
    if not per_split(cfg.features_dir) and not (root / cfg.features_dir).is_dir():
        fix = "set data.features_dir to the folder of .npy/.pt files (relative to data.root)"
        where = str(root / cfg.features_dir)
        add(Finding("error", "data", "features-dir", where, "the features folder does not exist", fix))
    splits: list[CheckedSplit] = []
    layout = _Layout(root, cfg.features_dir)
    manifests = {"train": cfg.train_manifest, "val": cfg.val_manifest, "test": cfg.test_manifest}
    for name in SPLITS:
        manifest = root / manifests[name]
        if name == "test" and not manifest.exists():
            add(Finding("info", "test", "no-test", str(manifest), "no test manifest; the test split is skipped", ""))
            continue
        split = _check_split(name, manifest, layout, cfg, add, progress, workers)
        if split is not None:
            splits.append(split)
            report.splits.append(_summary(split))
    if layout.found:
        where = str(root / cfg.features_dir)
        fix = layout_fix(cfg.features_dir)
        add(Finding("info", "data", "split-folders", where, layout_note(cfg.features_dir, layout.found), fix))
    if splits and splits[0].name == "train":
        for f in cross_split_findings(splits[0], splits[1:]):
            add(f)
    if max_len is not None:
        for f in _max_len_check(cfg, Path(base_dir), cache_dir, splits, max_len):
            add(f)
    order = {"error": 0, "warning": 1, "info": 2}
    report.findings.sort(key=lambda f: order[f.severity])  # stable: split order within a severity
    return report


@dataclass
class _Layout:
    """The data folder, ``data.features_dir``, and the splits found in per-split sub-folders."""

    root: Path
    features_dir: str
    found: list[str] = field(default_factory=list)


def _max_len_check(
    cfg: DataConfig, base_dir: Path, cache_dir: Path | None, splits: list[CheckedSplit], limit: DecodeLimit
) -> list[Finding]:
    """``max-len`` of val and test, with the tokenizer ``study run`` trains with (``tokenizer``
    when it cannot be made); nothing when the train manifest, which a word-level one needs, was unreadable."""
    from signtune.data.tokenizer import load_or_train_tokenizer
    from signtune.errors import SigntuneError

    train = next((s for s in splits if s.name == "train"), None)
    decoded = [s for s in splits if s.name != "train" and s.rows]
    if not decoded or (train is None and not cfg.tokenizer):
        return []
    try:
        tokenizer = load_or_train_tokenizer(
            [r.text for r in train.rows] if train is not None else [],
            vocab_size=cfg.vocab_size,
            lowercase=cfg.lowercase,
            cache_dir=Path(cache_dir) if cache_dir is not None else base_dir / ".cache",
            pretrained=cfg.tokenizer,
            base_dir=base_dir,
            save=False,
        )
    except SigntuneError as exc:
        p = exc.problems[0]
        return [Finding("error", "data", "tokenizer", p.where, p.message, p.fix)]
    if cfg.tokenizer:
        name = f"data.tokenizer {cfg.tokenizer}"
    else:
        name = f"word-level, {tokenizer.vocab_size} ids, trained on train"
    return [f for s in decoded for f in max_len_findings(s, tokenizer, limit, tokenizer_name=name)]


def _check_split(
    name: str,
    manifest: Path,
    layout: _Layout,
    cfg: DataConfig,
    add: Add,
    progress: ProgressFn | None,
    workers: int | None,
) -> CheckedSplit | None:
    scan = scan_manifest(manifest, format=cfg.format, id_column=cfg.id_column, text_column=cfg.text_column)
    if not scan.readable:
        for p in scan.problems:
            add(Finding("error", name, p.rule, str(manifest), p.problem.message, p.problem.fix))
        return None
    by_rule: dict[str, list[RowProblem]] = {}
    for p in scan.problems:
        by_rule.setdefault(p.rule, []).append(p)
    for rule, found in by_rule.items():
        add(_rows_finding(name, rule, manifest, found))
    if not scan.rows and not scan.problems:
        fix = "add clips to it, or point data at another manifest"
        add(Finding("error", name, "empty-split", str(manifest), f"the {name} manifest has no rows", fix))

    first: dict[str, ManifestRow] = {}
    for r in scan.rows:
        first.setdefault(r.id, r)
    split = CheckedSplit(name, manifest, list(first.values()))
    shared = shared_ids(scan.rows)
    on_videos = keyed_on_videos(scan, shared)
    if shared.groups and on_videos:
        head = shared_ids_problem(scan, shared)
        rows, ids = tuple(shared.rows), tuple(shared.groups)
        add(Finding("error", name, "shared-id", str(manifest), head.message, head.fix, rows, ids))
    elif shared.groups:
        add(_rows_finding(name, "duplicate-id", manifest, duplicate_problems(scan, shared)))
    if cfg.format != "ssvp" and cfg.id_column in PER_VIDEO_COLUMNS and not on_videos:
        message = f"data.id_column is {cfg.id_column}, which names a whole How2Sign video, not one sentence"
        fix = "key on SENTENCE_NAME (data.id_column: SENTENCE_NAME), with one feature file per sentence"
        add(finding("warning", split, "id-column", scan.rows, message, fix))
    clip_ids = [r.id for r in split.rows]
    folder, detected = split_folder(layout.root, layout.features_dir, name, clip_ids)
    hint = "" if detected else missing_hint(layout.root, layout.features_dir, name, clip_ids, layout.found)
    if detected:
        layout.found.append(name)
    if folder.is_dir():
        _check_features(split, folder, cfg.feature_dim, add, progress, workers, hint)
    elif per_split(layout.features_dir):
        message = f"the {name} features folder does not exist (data.features_dir is {layout.features_dir!r})"
        fix = hint or f"put the {name} feature files there, or set data.features_dir to the folder that holds them"
        where = str(configured_folder(layout.root, layout.features_dir, name))
        add(Finding("error", name, "features-dir", where, message, fix))
    id_name, _ = column_names(cfg.format, cfg.id_column, cfg.text_column)
    for f in length_findings(split, max_frames=cfg.max_frames, id_name=id_name):
        add(f)
    return split


def _rows_finding(split: str, rule: str, manifest: Path, found: list[RowProblem]) -> Finding:
    """One finding for every row problem of a rule, the first as the example."""
    head = found[0]
    example = head.problem.message if head.row is None else f"row {head.row}: {head.problem.message}"
    message = example if len(found) == 1 else f"{len(found)} rows; e.g. {example}"
    rows = tuple(p.row for p in found if p.row is not None)
    ids = tuple(p.id for p in found if p.id)
    return Finding("error", split, rule, str(manifest), message, head.problem.fix, rows, ids)


def _read(path: Path, feature_dim: int) -> tuple[int | None, list[tuple[str, Problem]]]:
    """(T when the file is (T, D), its problems); reads the whole file, as NaN can hide anywhere."""
    try:
        arr = read_feature_array(path)
    except DataError as exc:
        return None, [("unreadable-feature", p) for p in exc.problems]
    return (int(arr.shape[0]) if arr.ndim == 2 else None), feature_problems(path, arr, feature_dim=feature_dim)


def _check_features(
    split: CheckedSplit,
    features_dir: Path,
    feature_dim: int,
    add: Add,
    progress: ProgressFn | None,
    workers: int | None,
    hint: str = "",
) -> None:
    found: dict[str, list[tuple[ManifestRow, Problem]]] = {}
    located: list[tuple[ManifestRow, Path]] = []
    for r in split.rows:
        try:
            path = resolve_feature_path(features_dir, r.id)
        except DataError as exc:
            found.setdefault("unsafe-id", []).append((r, exc.problems[0]))
            continue
        if path is None:
            flat, _, nested, _ = candidate_paths(features_dir, r.id)
            message = f"no feature file for id {r.id!r}; looked for {flat}|.pt and {nested}|.pt"
            fix = hint or "add the file, delete the row, or set data.features_dir to the folder that holds it"
            found.setdefault("missing-feature", []).append((r, Problem(str(features_dir), message, fix)))
        else:
            located.append((r, path))
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:  # reading is mostly I/O: threads overlap it
        results = pool.map(lambda located_row: _read(located_row[1], feature_dim), located)
        for done, ((r, _), (frames, problems)) in enumerate(zip(located, results, strict=True), start=1):
            if frames is not None:
                split.frames[r.id] = frames
            for rule, p in problems:
                key = f"{rule}:{p.message}" if rule == "feature-dim" else rule  # one finding per D found
                found.setdefault(key, []).append((r, p))
            if progress is not None:
                progress(split.name, done, len(located))
    for key, items in found.items():
        add(_files_finding(split, key.split(":")[0], items, features_dir))


def _files_finding(split: CheckedSplit, rule: str, items: list[tuple[ManifestRow, Problem]], folder: Path) -> Finding:
    """One finding for every feature file problem of a rule, the first as the example."""
    (r, p), n = items[0], len(items)
    rows, ids = tuple(i[0].row for i in items), tuple(i[0].id for i in items)
    if rule == "missing-feature":
        what = f"{n} of {len(split.rows)} clips {'has' if n == 1 else 'have'}"
        message = f"{what} no feature file in {folder}; e.g. row {r.row}: {p.message}"
        return Finding("error", split.name, rule, str(split.manifest), message, p.fix, rows, ids)
    if rule == "unsafe-id":
        message = p.message if n == 1 else f"{n} ids are not plain file names; e.g. row {r.row}: {p.message}"
        return Finding("error", split.name, rule, str(split.manifest), message, p.fix, rows, ids)
    if n == 1:
        return Finding("error", split.name, rule, p.where, p.message, p.fix, rows, ids)
    if rule == "feature-dim":  # "has D features per frame, ..." -> "N of M feature files (e.g. x) have D ..."
        message = f"{n} of {len(split.rows)} feature files (e.g. {p.where}) have {p.message.removeprefix('has ')}"
    else:
        message = f"{n} feature files; e.g. {p.where}: {p.message}"
    return Finding("error", split.name, rule, str(folder), message, p.fix, rows, ids)


def _summary(split: CheckedSplit) -> SplitSummary:
    frames = list(split.frames.values())
    lengths = [words(r.text) for r in split.rows]
    return SplitSummary(
        name=split.name,
        manifest=str(split.manifest),
        rows=len(split.rows),
        clips=len(frames),
        frames_median=float(np.median(frames)) if frames else None,
        frames_max=max(frames) if frames else None,
        words_median=float(np.median(lengths)) if lengths else None,
    )
