"""Load a task's splits: manifests + feature files -> ``Split``/``TaskData``, with a cache.

Loaded features stay in a module-level cache keyed on the resolved paths, ``feature_dim``,
``max_frames`` and every file's mtime and size, so a worker process that runs trial after
trial on the same data reads the files once; the training subset is a view on the cached
full split.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signtune.config import DataConfig
from signtune.data.features import candidate_paths, load_feature, resolve_feature_path
from signtune.data.manifest import capped, read_manifest
from signtune.data.tokenizer import load_or_train_tokenizer
from signtune.data.types import Split, TaskData, TextTokenizer
from signtune.errors import DataError, Problem

SYNTH_FIX = "generate the demo data with `study data synth --out DIR` or set data.root / data.features_dir"
CACHE_ENTRIES = 6  # full splits kept in memory per process (LRU)


@dataclass(frozen=True)
class _Loaded:
    ids: list[str]
    texts: list[str]
    features: list[np.ndarray]


_CACHE: OrderedDict[tuple[object, ...], _Loaded] = OrderedDict()


def clear_cache() -> None:
    """Forget every cached split (tests; or to free memory)."""
    _CACHE.clear()


def subset_indices(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded random subset of ``range(n)``, sorted; at least one index when ``n > 0``.

    Subsets with the same seed are nested: the 0.3 subset lies inside the 0.5 one.

    Args:
        n: the size of the full split.
        fraction: the share to keep, in (0, 1]; 1.0 keeps everything.
        seed: seeds ``numpy.random.default_rng``.

    Raises:
        DataError: ``fraction`` is outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(
            Problem(
                "data.subset",
                f"must be in (0, 1], but got {fraction}",
                "use e.g. 0.3 for 30% of the training split, 1.0 for all",
            )
        )
    if fraction == 1.0 or n == 0:
        return list(range(n))
    k = min(n, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[:k])


def _missing_problem(manifest: Path, row: int, clip_id: str, features_dir: Path) -> Problem:
    flat, _, nested, _ = candidate_paths(features_dir, clip_id)
    return Problem(
        f"{manifest}: row {row}",
        f"no feature file for id {clip_id!r}; looked for {flat}|.pt and {nested}|.pt",
        "add the file, delete the row, or set data.features_dir to the folder that holds it",
    )


def load_split(
    name: str,
    manifest_path: Path,
    features_dir: Path,
    cfg: DataConfig,
    tokenizer: TextTokenizer | None,
) -> Split:
    """Read one split's manifest and every clip's features.

    Args:
        name: the split's name (``train``, ``val``, ``test``).
        manifest_path: its manifest.
        features_dir: the folder of feature files.
        cfg: format, columns, ``feature_dim`` and ``max_frames`` (clips are truncated to it).
        tokenizer: encodes the texts into ``token_ids``; None leaves them empty.

    Raises:
        DataError: the features folder or manifest is missing, rows are malformed, clips have
            no feature file (all of them listed at once, with their rows), or files are bad.
    """
    manifest_path, features_dir = Path(manifest_path), Path(features_dir)
    if not features_dir.is_dir():
        raise DataError(Problem("data.features_dir", f"the features folder {features_dir} does not exist", SYNTH_FIX))
    rows = read_manifest(manifest_path, format=cfg.format, id_column=cfg.id_column, text_column=cfg.text_column)
    if not rows:
        raise DataError(
            Problem(
                str(manifest_path),
                f"the {name} manifest has no rows",
                "add clips to it, or point data at another manifest",
            )
        )
    paths: list[Path] = []
    problems: list[Problem] = []
    for r in rows:
        try:
            path = resolve_feature_path(features_dir, r.id)
        except DataError as exc:
            problems += [Problem(f"{manifest_path}: row {r.row}", p.message, p.fix) for p in exc.problems]
            continue
        if path is None:
            problems.append(_missing_problem(manifest_path, r.row, r.id, features_dir))
        else:
            paths.append(path)
    if problems:
        head = Problem(
            str(manifest_path),
            f"{len(problems)} of {len(rows)} rows have no usable feature file in {features_dir}",
            SYNTH_FIX if len(problems) == len(rows) else "",
        )
        raise DataError([head, *capped(problems, str(manifest_path))])

    key = _cache_key(manifest_path, features_dir, cfg, paths)
    loaded = _CACHE.get(key)
    if loaded is None:
        loaded = _load(
            rows_ids=[r.id for r in rows],
            texts=[r.text for r in rows],
            paths=paths,
            cfg=cfg,
            manifest_path=manifest_path,
        )
        _CACHE[key] = loaded
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _split(name, loaded.ids, loaded.texts, loaded.features, tokenizer)


def _cache_key(manifest_path: Path, features_dir: Path, cfg: DataConfig, paths: list[Path]) -> tuple[object, ...]:
    h = hashlib.sha256()
    for p in paths:  # a changed, replaced or touched file invalidates the entry
        st = p.stat()
        h.update(f"{p}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    st = manifest_path.stat()
    return (
        str(manifest_path.resolve()),
        st.st_mtime_ns,
        st.st_size,
        cfg.format,
        cfg.id_column,
        cfg.text_column,
        str(features_dir.resolve()),
        cfg.feature_dim,
        cfg.max_frames,
        h.hexdigest(),
    )


def _load(
    *,
    rows_ids: list[str],
    texts: list[str],
    paths: list[Path],
    cfg: DataConfig,
    manifest_path: Path,
) -> _Loaded:
    features: list[np.ndarray] = []
    problems: list[Problem] = []
    wrong_dim: dict[int, list[Path]] = {}  # D found -> files; one problem per D, not one per file
    for path in paths:
        try:
            arr = load_feature(path, feature_dim=None)
        except DataError as exc:
            problems += exc.problems
            continue
        if arr.shape[1] != cfg.feature_dim:
            wrong_dim.setdefault(arr.shape[1], []).append(path)
            continue
        # a copy, so the untruncated array is freed
        features.append(arr[: cfg.max_frames].copy() if len(arr) > cfg.max_frames else arr)
    for dim, files in wrong_dim.items():
        many = f"{len(files)} of {len(paths)} feature files (e.g. {files[0]}) have" if len(files) > 1 else "has"
        problems.insert(
            0,
            Problem(
                str(files[0]) if len(files) == 1 else f"feature files of {manifest_path}",
                f"{many} {dim} features per frame, but data.feature_dim is {cfg.feature_dim}",
                f"set data.feature_dim to {dim}, or re-extract",
            ),
        )
    if problems:
        raise DataError(capped(problems, f"feature files of {manifest_path}"))
    return _Loaded(ids=rows_ids, texts=texts, features=features)


def _split(
    name: str,
    ids: list[str],
    texts: list[str],
    features: list[np.ndarray],
    tokenizer: TextTokenizer | None,
) -> Split:
    tokens = [tokenizer.encode(t) for t in texts] if tokenizer is not None else [[] for _ in texts]
    return Split(name=name, ids=list(ids), texts=list(texts), features=list(features), token_ids=tokens)


def load_task_data(cfg: DataConfig, base_dir: Path, *, cache_dir: Path) -> TaskData:
    """Load train, val and (when its manifest exists) test, and the tokenizer.

    The tokenizer is trained (or read from ``cache_dir``) on the full training split's texts;
    ``cfg.subset`` then keeps a seeded share of the training split only. Texts keep their case
    (they are the BLEU references); ``cfg.lowercase`` applies to the tokenizer.

    Args:
        cfg: the data config; ``cfg.root`` is relative to ``base_dir`` unless absolute.
        base_dir: the study directory.
        cache_dir: where the tokenizer cache lives.

    Raises:
        DataError: see ``load_split``; also when ``root`` does not exist.
    """
    root = Path(cfg.root)
    if not root.is_absolute():
        root = Path(base_dir) / root
    if not root.is_dir():
        raise DataError(Problem("data.root", f"the data folder {root} does not exist", SYNTH_FIX))
    features_dir = root / cfg.features_dir
    train = load_split("train", root / cfg.train_manifest, features_dir, cfg, None)
    val = load_split("val", root / cfg.val_manifest, features_dir, cfg, None)
    test_manifest = root / cfg.test_manifest
    test = load_split("test", test_manifest, features_dir, cfg, None) if test_manifest.is_file() else None

    tokenizer = load_or_train_tokenizer(
        train.texts, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase, cache_dir=cache_dir
    )
    for split in (train, val, test):
        if split is not None:
            split.token_ids = tokenizer.encode_batch(split.texts)

    keep = subset_indices(len(train), cfg.subset, cfg.subset_seed)
    if len(keep) < len(train):
        train = Split(
            name=train.name,
            ids=[train.ids[i] for i in keep],
            texts=[train.texts[i] for i in keep],
            features=[train.features[i] for i in keep],
            token_ids=[train.token_ids[i] for i in keep],
        )
    return TaskData(train=train, val=val, test=test, tokenizer=tokenizer, feature_dim=cfg.feature_dim)
