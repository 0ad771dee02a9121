"""Load a task's splits: manifests + feature files -> ``Split``/``TaskData``, with a cache.

With ``data.pack: auto`` (the default) the features are served from the packed store
(``signtune.data.pack``): on first use every clip the train/val/test manifests name is read
once, checked, and written into one memory-mapped file under the study's cache (one per
features folder: per split with ``features_dir: features/{split}``); later loads,
in this process or any other, stat the source files against the pack's index and make
zero-copy, read-only views into it. A changed, added or removed source file rebuilds the pack.
``data.pack: off`` reads every file one by one on each new load (``load_split``).

Loaded splits stay in a module-level cache: per file, keyed on the resolved paths,
``feature_dim``, ``max_frames`` and every file's mtime and size; packed, on the pack's token,
``max_frames`` and the manifest rows. A worker process that runs trial after trial on the same
data reads the files once; the training subset is a view on the cached full split.

Size: past 400 lines because the per-file path, the packed path and the one cache that keys
both are read together; each load path alone would hide how the cache stays valid.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signtune.config import DataConfig
from signtune.data import pack as packed
from signtune.data.features import candidate_paths, load_feature, resolve_feature_path
from signtune.data.layout import layout_fix, layout_note, per_split, say_once, split_folder
from signtune.data.manifest import ManifestRow, capped, read_manifest
from signtune.data.pack import Pack, PackInfo, Source
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
    """Forget every cached split and opened pack (tests; or to free memory)."""
    _CACHE.clear()
    packed.forget()


def _remember(key: tuple[object, ...], loaded: _Loaded) -> None:
    _CACHE[key] = loaded
    while len(_CACHE) > CACHE_ENTRIES:
        _CACHE.popitem(last=False)


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
    """Read one split's manifest and every clip's features, file by file (``cfg.pack`` is not used).

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
    _check_features_dir(features_dir)
    rows = _read_rows(name, manifest_path, cfg)
    paths = _resolve_paths(rows, manifest_path, features_dir)
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
        _remember(key, loaded)
    _CACHE.move_to_end(key)
    return _split(name, loaded.ids, loaded.texts, loaded.features, tokenizer)


def _check_features_dir(features_dir: Path, split: str = "", setting: str = "") -> None:
    """Refuse a missing features folder; ``split`` and ``setting`` name a per-split one."""
    if features_dir.is_dir():
        return
    if split:
        raise DataError(
            Problem(
                "data.features_dir",
                f"the {split} features folder {features_dir} does not exist (data.features_dir is {setting!r})",
                f"put the {split} feature files there, or set data.features_dir to the folder that holds them",
            )
        )
    raise DataError(Problem("data.features_dir", f"the features folder {features_dir} does not exist", SYNTH_FIX))


def _read_rows(name: str, manifest_path: Path, cfg: DataConfig) -> list[ManifestRow]:
    rows = read_manifest(manifest_path, format=cfg.format, id_column=cfg.id_column, text_column=cfg.text_column)
    if not rows:
        raise DataError(
            Problem(
                str(manifest_path),
                f"the {name} manifest has no rows",
                "add clips to it, or point data at another manifest",
            )
        )
    return rows


def _resolve_paths(rows: list[ManifestRow], manifest_path: Path, features_dir: Path) -> list[Path]:
    """Every row's feature file, aligned with ``rows``; all missing or unsafe ones reported at once."""
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
    return paths


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
    features = [
        arr[: cfg.max_frames].copy() if len(arr) > cfg.max_frames else arr  # a copy frees the untruncated array
        for _, arr in _checked_features(paths, cfg, manifest_path)
    ]
    return _Loaded(ids=rows_ids, texts=texts, features=features)


def _checked_features(
    paths: list[Path], cfg: DataConfig, manifest_path: Path, *, skip: Collection[int] = ()
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(position, array)`` for every good file of a manifest, reading each once.

    After the last file, raises every problem found at once (files of a wrong D as one problem
    per D), so the per-file and the packed paths report bad files identically.
    """
    problems: list[Problem] = []
    wrong_dim: dict[int, list[Path]] = {}  # D found -> files; one problem per D, not one per file
    for i, path in enumerate(paths):
        if i in skip:
            continue
        try:
            arr = load_feature(path, feature_dim=None)
        except DataError as exc:
            problems += exc.problems
            continue
        if arr.shape[1] != cfg.feature_dim:
            wrong_dim.setdefault(arr.shape[1], []).append(path)
            continue
        yield i, arr
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


# ----------------------------------------------------------------------------------------------
# The packed store

_Manifest = tuple[str, Path, list[ManifestRow]]  # split name, manifest path, its rows


def _pack_sources(manifests: list[_Manifest], features_dir: Path, cfg: DataConfig) -> Iterator[Source]:
    """Every clip the manifests name, each file read and checked once, in manifest order.

    Manifest by manifest, with the per-file path's checks and messages: missing or unsafe ids
    first, then bad files. Each file is stat'ed before it is read, so a file that changes
    while it is packed leaves a pack that the next load finds stale.
    """
    seen: set[str] = set()
    for _name, manifest_path, rows in manifests:
        paths = _resolve_paths(rows, manifest_path, features_dir)
        skip = {i for i, r in enumerate(rows) if r.id in seen}  # packed from an earlier manifest
        seen.update(r.id for r in rows)
        stats = {i: _size_mtime(p) for i, p in enumerate(paths) if i not in skip}
        for i, arr in _checked_features(paths, cfg, manifest_path, skip=skip):
            yield Source(id=rows[i].id, path=paths[i], frames=arr, size=stats[i][0], mtime_ns=stats[i][1])


def _size_mtime(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:  # gone between look-up and read: load_feature reports it, or the pack is stale at once
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _ensure_pack(
    manifests: list[_Manifest],
    features_dir: Path,
    cfg: DataConfig,
    cache_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pack, PackInfo]:
    return packed.ensure_pack(
        packed.pack_folder(cache_dir, features_dir),
        features_dir,
        list(dict.fromkeys(r.id for _, _, rows in manifests for r in rows)),
        lambda: _pack_sources(manifests, features_dir, cfg),
        feature_dim=cfg.feature_dim,
        force=force,
        progress=progress,
    )


def _packed_splits(manifests: list[_Manifest], folders: list[Path], cfg: DataConfig, cache_dir: Path) -> list[Split]:
    """The splits, served from one pack per features folder (one in all unless per split)."""
    out: dict[int, Split] = {}
    for folder in dict.fromkeys(folders):
        group = [i for i, f in enumerate(folders) if f == folder]
        pack, _ = _ensure_pack([manifests[i] for i in group], folder, cfg, cache_dir)
        for old in [k for k in _CACHE if k[0] == "pack" and k[1] == str(pack.folder) and k[2] != pack.token]:
            del _CACHE[old]  # views of a rebuilt pack's old file: let its (deleted) frames be unmapped
        for i in group:
            name, _path, rows = manifests[i]
            ids, texts = tuple(r.id for r in rows), tuple(r.text for r in rows)
            key = ("pack", str(pack.folder), pack.token, cfg.max_frames, ids, texts)
            loaded = _CACHE.get(key)
            if loaded is None:  # views, truncated to max_frames: the pack itself keeps every frame
                feats = [pack.view(clip_id)[: cfg.max_frames] for clip_id in ids]
                loaded = _Loaded(ids=list(ids), texts=list(texts), features=feats)
                _remember(key, loaded)
            _CACHE.move_to_end(key)
            out[i] = _split(name, loaded.ids, loaded.texts, loaded.features, None)
    return [out[i] for i in range(len(manifests))]


def _split_folders(cfg: DataConfig, root: Path, manifests: list[_Manifest]) -> list[Path]:
    """Each manifest's features folder (``signtune.data.layout``), each checked to exist.

    When some were found in per-split sub-folders of ``data.features_dir``, says so once
    (a warning on the ``signtune.data`` logger).
    """
    folders: list[Path] = []
    found: list[str] = []
    for name, _path, rows in manifests:
        folder, detected = split_folder(root, cfg.features_dir, name, [r.id for r in rows])
        folders.append(folder)
        if detected:
            found.append(name)
    if per_split(cfg.features_dir):
        for (name, _path, _rows), folder in zip(manifests, folders, strict=True):
            _check_features_dir(folder, name, cfg.features_dir)
    if found:
        say_once(f"{layout_note(cfg.features_dir, found)} ({layout_fix(cfg.features_dir)})")
    return folders


def _data_root(cfg: DataConfig, base_dir: Path) -> Path:
    root = Path(cfg.root)
    if not root.is_absolute():
        root = Path(base_dir) / root
    if not root.is_dir():
        raise DataError(Problem("data.root", f"the data folder {root} does not exist", SYNTH_FIX))
    return root


def _manifests(cfg: DataConfig, root: Path) -> list[tuple[str, Path]]:
    """train and val, and test when its manifest exists."""
    found = [("train", root / cfg.train_manifest), ("val", root / cfg.val_manifest)]
    if (root / cfg.test_manifest).is_file():
        found.append(("test", root / cfg.test_manifest))
    return found


def _read_manifests(cfg: DataConfig, root: Path) -> tuple[list[_Manifest], list[Path]]:
    """The manifests' rows and their features folders; a missing single features folder is
    reported before any manifest is read."""
    if not per_split(cfg.features_dir):
        _check_features_dir(root / cfg.features_dir)
    manifests = [(name, path, _read_rows(name, path, cfg)) for name, path in _manifests(cfg, root)]
    return manifests, _split_folders(cfg, root, manifests)


def load_splits(cfg: DataConfig, root: Path, *, cache_dir: Path) -> tuple[Split, Split, Split | None]:
    """train, val and (when its manifest exists) test, without token ids.

    With ``cfg.pack == "auto"`` the features are views into the packed store under
    ``cache_dir`` (built or rebuilt first when needed; one pack per features folder); with
    ``"off"`` each file is read. Each split's features folder is the one ``data.features_dir``
    names, with ``{split}`` filled in, or its sub-folder named after the split when that one
    holds the split's files and it does not (``signtune.data.layout``).

    Args:
        cfg: the data config.
        root: the data folder (``cfg.root`` already resolved).
        cache_dir: the study's cache folder; a pack lives in ``cache_dir/pack/<key>/``.

    Raises:
        DataError: see ``load_split``; also when the pack cannot be written.
    """
    manifests, folders = _read_manifests(cfg, root)
    if cfg.pack == "off":
        pairs = zip(manifests, folders, strict=True)
        splits = [load_split(name, path, folder, cfg, None) for (name, path, _), folder in pairs]
    else:
        splits = _packed_splits(manifests, folders, cfg, Path(cache_dir))
    return splits[0], splits[1], (splits[2] if len(splits) > 2 else None)


def pack_features(
    cfg: DataConfig,
    base_dir: Path,
    cache_dir: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> list[PackInfo]:
    """Build (or check and reuse) the packed store of every clip the manifests name.

    What ``study data pack`` runs; ``load_task_data`` does the same on first use. Packs whatever
    ``cfg.pack`` says (with ``off`` the pack is built but not used).

    Args:
        cfg: the data config (root, manifests, features folder, ``feature_dim``).
        base_dir: the study directory (``cfg.root`` is relative to it unless absolute).
        cache_dir: the study's cache folder; a pack goes to ``cache_dir/pack/<key>/``.
        progress: called with (clips packed, clips to pack) while building, per pack.
        force: rebuild even when the pack is valid.

    Returns:
        One per features folder (one in all unless the splits have their own folders, e.g.
        ``features_dir: features/{split}``), in split order: what the pack holds, where it is,
        how long it took, and whether it was built or reused.

    Raises:
        DataError: a manifest or feature file is bad (the same messages as loading per file),
            or the pack cannot be written.
    """
    root = _data_root(cfg, base_dir)
    manifests, folders = _read_manifests(cfg, root)
    infos: list[PackInfo] = []
    for folder in dict.fromkeys(folders):
        group = [m for m, f in zip(manifests, folders, strict=True) if f == folder]
        infos.append(_ensure_pack(group, folder, cfg, Path(cache_dir), force=force, progress=progress)[1])
    return infos


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
        cache_dir: where the tokenizer cache and the packed feature store live.

    Raises:
        DataError: see ``load_split``; also when ``root`` does not exist.
    """
    root = _data_root(cfg, base_dir)
    train, val, test = load_splits(cfg, root, cache_dir=cache_dir)

    tokenizer = load_or_train_tokenizer(
        train.texts,
        vocab_size=cfg.vocab_size,
        lowercase=cfg.lowercase,
        cache_dir=cache_dir,
        pretrained=cfg.tokenizer,  # a Hugging Face tokenizer folder, relative to the study folder
        base_dir=base_dir,
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
