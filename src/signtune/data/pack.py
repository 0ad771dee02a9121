"""The packed feature store: every clip's frames in one memory-mapped float32 file, plus an index.

Reading 31k small ``.npy`` files costs a worker minutes and a copy of every clip in its own
memory; a pack is opened in well under a second, and the workers of a host share its pages
through the OS page cache. ``signtune.data.dataset`` builds a pack on first use (or
``study data pack`` does) and serves every split from it while it is valid.

A pack folder (``<study>/.cache/pack/<key>/``, ``key`` a hash of the resolved features folder,
so a read-only dataset folder is never written to) holds:

``frames-<token>.f32``
    every packed clip's frames, concatenated along T: raw little-endian float32, C order,
    shape ``(total frames, D)``. Clip ``i`` is rows ``offset[i] : offset[i] + length[i]``.
``index.json``
    the format version, ``token`` (which frames file), ``D``, the total frames, and per clip
    (columns, in pack order): ``ids``, ``lengths``, and its source file's ``paths`` (relative
    to the features folder, ``/``-separated), ``sizes`` and ``mtimes_ns`` as stat'ed before
    the file was read. Plain JSON: nothing in a pack is unpickled.
``.lock``
    ``fcntl.flock``-ed while a process checks or builds the pack, so when many workers start
    at once one builds and the others wait and reuse its pack.

Writing is atomic without fsync: the frames go to ``frames-<token>.f32.partial``, which is
renamed when complete, then the index to a temporary name renamed over ``index.json``; the
index is the commit. A crash at any point leaves either the previous index (and its frames
file) or no index, never an index naming incomplete frames. Old frames files are deleted
after the commit; a process that still maps one keeps reading it (POSIX unlink semantics).
A power loss right after a build, before the OS has written the pages back, is not covered;
``study data pack --force`` rebuilds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from signtune.data.features import NESTED_PREFIX, SUFFIXES
from signtune.errors import DataError, Problem

FORMAT = 1
INDEX = "index.json"
LOCK = ".lock"
DTYPE = np.dtype("<f4")
_OPEN_CACHE = 4  # opened packs kept per process, keyed on the index file's identity


@dataclass(frozen=True)
class PackInfo:
    """What a pack holds and how it was got; what ``study data pack`` prints.

    Attributes:
        path: the pack folder.
        clips: clips in the pack.
        frames: frames of all clips together.
        bytes: size of the frames file.
        feature_dim: D.
        seconds: time to check (and build) the pack.
        built: True when this call built it, False when a valid pack was reused.
        reason: why it was built (``no pack yet``, a changed file...); empty when reused.
        features_dir: the folder its clips were read from (resolved).
    """

    path: Path
    clips: int
    frames: int
    bytes: int
    feature_dim: int
    seconds: float
    built: bool
    reason: str = ""
    features_dir: Path = Path()


@dataclass(frozen=True)
class Source:
    """One clip to pack: its id, its feature file (inside ``features_dir``), the file's array, and
    the file's size and mtime as stat'ed before it was read (so a later change is always noticed;
    -1 when it could not be stat'ed, which makes the pack stale at once)."""

    id: str
    path: Path
    frames: np.ndarray  # float32 (T, D)
    size: int
    mtime_ns: int


class Pack:
    """An opened pack: read-only views of its clips, by id."""

    def __init__(self, folder: Path, index: dict[str, Any], frames: np.ndarray) -> None:
        self.folder = folder
        self.token = str(index["token"])
        self.features_dir = Path(str(index.get("features_dir", "")))
        self.feature_dim = int(index["feature_dim"])
        self.ids: list[str] = [str(x) for x in index["ids"]]
        self.paths: list[str] = [str(x) for x in index["paths"]]
        self.sizes: list[int] = [int(x) for x in index["sizes"]]
        self.mtimes_ns: list[int] = [int(x) for x in index["mtimes_ns"]]
        lengths = np.asarray(index["lengths"], dtype=np.int64)
        ends = np.cumsum(lengths)
        self._spans = list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))
        self._row = {clip_id: i for i, clip_id in enumerate(self.ids)}
        self.frames = frames  # (total frames, D), read-only

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._row

    def view(self, clip_id: str) -> np.ndarray:
        """Clip ``clip_id``'s frames: a read-only (T, D) view into the mapped file, no copy."""
        start, end = self._spans[self._row[clip_id]]
        return self.frames[start:end]

    def info(self, *, seconds: float, built: bool, reason: str = "") -> PackInfo:
        return PackInfo(
            path=self.folder,
            clips=len(self.ids),
            frames=int(self.frames.shape[0]),
            bytes=int(self.frames.nbytes),
            feature_dim=self.feature_dim,
            seconds=seconds,
            built=built,
            reason=reason,
            features_dir=self.features_dir,
        )

    def stale(self, features_dir: Path, ids: Iterable[str], feature_dim: int) -> str | None:
        """Why this pack cannot serve ``ids`` from ``features_dir``, or None when it can.

        Each clip's source file must still be the one packed: same relative path, size and
        mtime (one ``stat`` per clip, no file is read), and no file that
        ``resolve_feature_path`` would now prefer may have appeared (a flat ``<id>.npy``
        beside a packed ``<id[:5]>/<id>.npy``).
        """
        if feature_dim != self.feature_dim:
            return f"the pack has D = {self.feature_dim}, data.feature_dim is {feature_dim}"
        base = os.fspath(features_dir) + os.sep
        first_suffix = SUFFIXES[0]
        for clip_id in ids:
            row = self._row.get(clip_id)
            if row is None:
                return f"clip {clip_id!r} is not in the pack"
            rel = self.paths[row]
            try:
                st = os.stat(base + rel)
            except OSError:
                return f"{rel} is gone"
            if st.st_size != self.sizes[row] or st.st_mtime_ns != self.mtimes_ns[row]:
                return f"{rel} changed"
            if rel != clip_id + first_suffix:  # a file found earlier in the search order wins
                for cand in _candidates(clip_id):
                    if cand == rel:
                        break
                    if os.path.exists(base + cand):
                        return f"{cand} appeared (it is read before {rel})"
        return None


def _candidates(clip_id: str) -> list[str]:
    """``features.candidate_paths`` relative to the features folder, as strings (no Path objects: cheap)."""
    nested = clip_id[:NESTED_PREFIX]
    return [clip_id + s for s in SUFFIXES] + [f"{nested}/{clip_id}{s}" for s in SUFFIXES]


def pack_folder(cache_dir: Path, features_dir: Path) -> Path:
    """Where the pack of ``features_dir`` lives under a study's ``cache_dir``."""
    key = hashlib.sha256(os.fsencode(Path(features_dir).resolve())).hexdigest()[:16]
    return Path(cache_dir) / "pack" / key


_OPENED: dict[Path, tuple[tuple[int, int, int], Pack]] = {}


def forget() -> None:
    """Drop this process's opened packs (their memory maps close once no view is left)."""
    _OPENED.clear()


def open_pack(folder: Path) -> Pack | None:
    """The committed pack in ``folder``, memory-mapped; None when there is none or it is not whole.

    A pack is trusted only when its index parses, has this format's version and fields, and its
    frames file has exactly the size the index says. An opened pack is kept per process and
    reused while ``index.json`` is the same file.
    """
    folder = Path(folder)
    try:
        st = (folder / INDEX).stat()
    except OSError:
        return None
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    known = _OPENED.get(folder)
    if known is not None and known[0] == ident and _token_of(folder) == known[1].token:
        return known[1]  # the same index file: (inode, mtime, size) can repeat, so the token is read too
    pack = _read(folder)
    if pack is not None:
        _OPENED[folder] = (ident, pack)
        while len(_OPENED) > _OPEN_CACHE:
            del _OPENED[next(iter(_OPENED))]
    return pack


def _token_of(folder: Path) -> str | None:
    """The token at the start of ``index.json`` (written first after the format), without parsing it all."""
    try:
        with (folder / INDEX).open("rb") as f:
            head = f.read(96).decode("ascii", "replace")
    except OSError:
        return None
    _, found, rest = head.partition('"token":"')
    return rest.partition('"')[0] if found else None


def _read(folder: Path) -> Pack | None:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("dtype") != DTYPE.str:
            return None
        n, dim, total = len(index["ids"]), int(index["feature_dim"]), int(index["frames"])
        columns = ("paths", "lengths", "sizes", "mtimes_ns")
        if any(len(index[c]) != n for c in columns) or sum(index["lengths"]) != total or n == 0 or total == 0:
            return None
        if not isinstance(index.get("token"), str) or not index["token"].isalnum():
            return None  # the token names the frames file: nothing path-like
        data = folder / f"frames-{index['token']}.f32"
        if data.stat().st_size != total * dim * DTYPE.itemsize:
            return None
        mapped = np.memmap(data, dtype=DTYPE, mode="r", shape=(total, dim))
        return Pack(folder, index, np.asarray(mapped))  # a plain ndarray view: cheaper slices than np.memmap's
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a missing, foreign or half-written pack is rebuilt, never trusted


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the pack folder's lock (blocking until other processes release it).

    Raises:
        DataError: the folder cannot be created or its lock file opened (a read-only cache).
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _unwritable(folder: Path, exc: OSError) -> DataError:
    return DataError(
        Problem(
            str(folder),
            f"cannot write the packed feature store: {exc.strerror or exc}",
            "free disk space or make the study's .cache folder writable, or set data.pack: off "
            "to read the feature files one by one",
        )
    )


def write_pack(
    folder: Path,
    features_dir: Path,
    sources: Iterable[Source],
    *,
    feature_dim: int,
    total: int,
    progress: Callable[[int, int], None] | None = None,
) -> Pack:
    """Write ``sources`` as the pack in ``folder`` and commit it; the caller holds ``locked(folder)``.

    ``sources`` may raise (a bad feature file, reported at the end of its manifest): nothing is
    committed then, the partial file is removed, and any previous pack stays as it was.

    Args:
        folder: the pack folder.
        features_dir: the folder the sources' paths are relative to.
        sources: the clips, in pack order; each array float32 (T, ``feature_dim``).
        feature_dim: D.
        total: how many sources to expect (for ``progress``).
        progress: called with (clips done, ``total``) after each clip.

    Raises:
        DataError: from ``sources``, or the pack cannot be written (disk full, read-only).
    """
    folder = Path(folder)
    token = secrets.token_hex(8)
    partial = folder / f"frames-{token}.f32.partial"
    columns: dict[str, list[object]] = {k: [] for k in ("ids", "paths", "lengths", "sizes", "mtimes_ns")}
    frames = 0
    try:
        with partial.open("wb") as f:
            for done, src in enumerate(sources, 1):
                arr = np.ascontiguousarray(src.frames, dtype=DTYPE)
                f.write(arr.data)
                columns["ids"].append(src.id)
                columns["paths"].append(src.path.relative_to(features_dir).as_posix())
                columns["lengths"].append(len(arr))
                columns["sizes"].append(src.size)
                columns["mtimes_ns"].append(src.mtime_ns)
                frames += len(arr)
                if progress is not None:
                    progress(done, total)
        os.replace(partial, folder / f"frames-{token}.f32")
        index = {
            "format": FORMAT,
            "token": token,
            "dtype": DTYPE.str,
            "feature_dim": feature_dim,
            "frames": frames,
            "features_dir": str(Path(features_dir).resolve()),  # for people reading the index
            **columns,
        }
        tmp_index = folder / f"{INDEX}.{token}.partial"
        tmp_index.write_text(json.dumps(index, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp_index, folder / INDEX)  # the commit
    except BaseException as exc:
        for leftover in (partial, folder / f"frames-{token}.f32", folder / f"{INDEX}.{token}.partial"):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _unwritable(folder, exc) from exc
        raise
    for old in folder.iterdir():  # earlier packs and crashed builds' leftovers; we hold the lock
        if (old.name.startswith("frames-") and old.name != f"frames-{token}.f32") or old.name.endswith(".partial"):
            old.unlink(missing_ok=True)
    pack = open_pack(folder)
    if pack is None:  # only if someone deleted the files under us
        raise DataError(Problem(str(folder), "the pack just written cannot be read back", "run it again"))
    return pack


def ensure_pack(
    folder: Path,
    features_dir: Path,
    ids: list[str],
    sources: Callable[[], Iterable[Source]],
    *,
    feature_dim: int,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pack, PackInfo]:
    """The pack in ``folder`` if it can serve ``ids``; otherwise one built from ``sources()``.

    A valid pack is used without taking the lock. Checking again and building happen under it,
    so when several workers start at once one builds and the others wait and reuse its pack.

    Args:
        folder: the pack folder (``pack_folder``).
        features_dir: the folder the sources' files are in.
        ids: every clip the pack must serve (no duplicates).
        sources: makes the clips to pack, each read and checked once; called only to build.
        feature_dim: D.
        force: build even when the pack is valid.
        progress: see ``write_pack``.

    Raises:
        DataError: from ``sources``, or the pack cannot be written.
    """
    started = time.perf_counter()
    if not force:
        pack = open_pack(folder)
        if pack is not None and pack.stale(features_dir, ids, feature_dim) is None:
            return pack, pack.info(seconds=time.perf_counter() - started, built=False)
    with locked(folder):
        pack = open_pack(folder)  # another process may have built it while this one waited
        if force:
            reason: str | None = "a rebuild was asked for"
        else:
            reason = "no pack yet" if pack is None else pack.stale(features_dir, ids, feature_dim)
        if pack is not None and reason is None:
            return pack, pack.info(seconds=time.perf_counter() - started, built=False)
        pack = write_pack(folder, features_dir, sources(), feature_dim=feature_dim, total=len(ids), progress=progress)
    return pack, pack.info(seconds=time.perf_counter() - started, built=True, reason=reason or "")
