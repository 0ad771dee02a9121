"""Feature files: find a clip's ``.npy``/``.pt`` safely and load it as float32 (T, D).

Files are read with ``numpy.load(allow_pickle=False)`` or ``torch.load(weights_only=True)``,
so a feature file can never run code, and a manifest id can never reach outside its
features directory.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

from signtune.errors import DataError, Problem

SUFFIXES = (".npy", ".pt")
NESTED_PREFIX = 5  # How2Sign-style stores shard files into <dir>/<id[:5]>/
NPY_MAGIC = b"\x93NUMPY"


def check_id(clip_id: str, *, where: str = "manifest id") -> None:
    """Refuse an id that could name a path outside the features directory.

    Raises:
        DataError: the id is empty, contains ``/``, ``\\``, ``..`` or NUL, or starts with ``/``.
    """
    bad = [
        why
        for test, why in (
            (not clip_id, "is empty"),
            ("/" in clip_id or "\\" in clip_id, "contains a path separator"),
            (".." in clip_id, "contains '..'"),
            ("\x00" in clip_id, "contains a NUL character"),
        )
        if test
    ]
    if bad:
        raise DataError(
            Problem(
                where,
                f"id {clip_id!r} {bad[0]}; an id must be a plain file name",
                "use the clip's file name without folders as its id",
            )
        )


def candidate_paths(features_dir: Path, clip_id: str) -> list[Path]:
    """Where a clip's features may be, in the order they are looked for."""
    nested = Path(features_dir) / clip_id[:NESTED_PREFIX]
    return [Path(features_dir) / f"{clip_id}{s}" for s in SUFFIXES] + [nested / f"{clip_id}{s}" for s in SUFFIXES]


def resolve_feature_path(features_dir: Path, id: str) -> Path | None:
    """The feature file of clip ``id``, or None when there is none.

    Looks for ``<dir>/<id>.npy``, ``<dir>/<id>.pt``, then ``<dir>/<id[:5]>/<id>.npy|.pt``.

    Args:
        features_dir: the features directory.
        id: the clip id from the manifest.

    Raises:
        DataError: the id is not a plain file name, or the file found is a link that leads
            outside ``features_dir``.
    """
    check_id(id)
    root = Path(features_dir).resolve()
    for path in candidate_paths(features_dir, id):
        if path.is_file():
            if not path.resolve().is_relative_to(root):
                raise DataError(
                    Problem(
                        str(path),
                        f"is a link to {path.resolve()}, outside the features directory {root}",
                        "copy the file into the features directory instead of linking out of it",
                    )
                )
            return path
    return None


def _bad(path: Path, message: str, fix: str) -> DataError:
    return DataError(Problem(str(path), message, fix))


_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _unpickler_reason(exc: Exception) -> str:
    """The one useful line of torch's weights-only refusal.

    torch's message also says that loading with ``weights_only=False`` "will likely succeed";
    that advice (run the file's code) is never passed on.
    """
    text = str(exc)
    found = _GLOBAL_RE.search(text)
    if found:  # torch >= 2.4 words it two ways, depending on whether the module is blocked
        return f"Unsupported global {found[1]}"
    _, _, tail = text.partition("WeightsUnpickler error:")
    lines = [
        line.strip()
        for line in tail.splitlines()
        if line.strip() and "weights_only" not in line and "file an issue" not in line
    ]
    return lines[0] if lines else "it is not a file written by torch.save(tensor)"


def _read_pt(path: Path) -> np.ndarray:
    import torch  # here, not at the top: checking .npy data should not pay for importing torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if reason.startswith("Unsupported global"):
            raise _bad(
                path,
                f"holds a pickled Python object ({reason.split()[-1]}), which is refused: feature files are "
                "loaded with torch.load(weights_only=True) and never run code",
                "re-save it as a plain tensor with torch.save(tensor) or as .npy",
            ) from exc
        raise _bad(
            path, f"cannot be read by torch.load: {reason}", "re-save it with torch.save(tensor) or as .npy"
        ) from exc
    except Exception as exc:  # torch raises many types for damaged files
        raise _bad(
            path,
            f"cannot be read by torch.load: {type(exc).__name__}: {exc}",
            "re-save it with torch.save(tensor) or as .npy",
        ) from exc
    if isinstance(obj, dict):
        if "features" not in obj:
            raise _bad(
                path,
                f"is a dict without key 'features'; keys: {sorted(map(str, obj))}",
                "save {'features': tensor} or the tensor itself",
            )
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise _bad(
            path,
            f"holds a {type(obj).__name__}, not a tensor",
            "re-save it as a plain tensor with torch.save(tensor) or as .npy",
        )
    if obj.is_complex() or obj.dtype == torch.bool:
        raise _bad(path, f"has dtype {obj.dtype}, not a real number type", "save float features")
    return obj.detach().to(torch.float32).numpy()


def _read_npy(path: Path) -> np.ndarray:
    try:
        with path.open("rb") as f:
            magic = f.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC:
            raise _bad(
                path,
                "cannot be read by numpy.load: it is not a .npy file (no NUMPY header)",
                "save one array per clip with np.save(path, array)",
            )
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise _bad(
                path,
                "holds Python objects (dtype=object), which are refused (allow_pickle=False)",
                "re-save it as a numeric array: np.save(path, arr.astype(np.float32))",
            ) from exc
        raise _bad(path, f"cannot be read by numpy.load: {exc}", "re-save it with np.save") from exc
    except (OSError, EOFError) as exc:
        raise _bad(path, f"cannot be read by numpy.load: {exc}", "re-save it with np.save") from exc
    if arr.dtype.kind not in "fiu":
        raise _bad(path, f"has dtype {arr.dtype}, not a real number type", "save float features")
    return arr


def read_feature_array(path: Path) -> np.ndarray:
    """Read a feature file as it is stored: a numeric array of any shape (``.pt`` as float32).

    Raises:
        DataError: the file is unreadable, pickled, not numeric, or not ``.npy``/``.pt``.
    """
    path = Path(path)
    if path.suffix == ".npy":
        return _read_npy(path)
    if path.suffix == ".pt":
        return _read_pt(path)
    raise _bad(path, f"has suffix {path.suffix!r}; feature files must be .npy or .pt", "convert it to .npy")


def feature_problems(path: Path, arr: np.ndarray, *, feature_dim: int | None) -> list[tuple[str, Problem]]:
    """Every problem of a feature array, each tagged with its rule, in the order they matter.

    Rules: ``ndim`` (not (T, D); nothing else is checked then), ``feature-dim`` (D differs from
    ``feature_dim``), ``empty-clip`` (T is 0) and ``non-finite`` (NaN or infinity, counted as
    float32, the dtype it is trained in).
    """
    path = Path(path)
    if arr.ndim != 2:
        return [
            (
                "ndim",
                Problem(
                    str(path),
                    f"must have 2 dimensions (frames, features), but has shape {arr.shape}",
                    "save one (T, D) array per clip",
                ),
            )
        ]
    found: list[tuple[str, Problem]] = []
    if feature_dim is not None and arr.shape[1] != feature_dim:
        found.append(
            (
                "feature-dim",
                Problem(
                    str(path),
                    f"has {arr.shape[1]} features per frame, but data.feature_dim is {feature_dim}",
                    f"set data.feature_dim to {arr.shape[1]}, or re-extract",
                ),
            )
        )
    if arr.shape[0] == 0:
        found.append(
            ("empty-clip", Problem(str(path), "has 0 frames", "re-extract this clip, or drop it from the manifest"))
        )
    elif arr.dtype.kind == "f":  # integers are always finite
        finite = np.isfinite(arr if arr.dtype == np.float32 else arr.astype(np.float32))
        if not finite.all():
            bad = int((~finite).any(axis=1).sum())
            found.append(
                (
                    "non-finite",
                    Problem(
                        str(path),
                        f"holds NaN or infinite values in {bad} of {len(arr)} frames",
                        "re-extract this clip, or drop it from the manifest",
                    ),
                )
            )
    return found


def load_feature(path: Path, *, feature_dim: int | None) -> np.ndarray:
    """Load one clip's features as a contiguous float32 array of shape (T, D).

    Args:
        path: a ``.npy`` file, or a ``.pt`` file holding a tensor or ``{"features": tensor}``.
        feature_dim: the required D, or None to accept any.

    Raises:
        DataError: the file is unreadable, pickled, not 2-D, has the wrong D, has no frames,
            or holds NaN or infinity (the first of these).
    """
    arr = read_feature_array(path)
    found = feature_problems(path, arr, feature_dim=feature_dim)
    if found:
        raise DataError(found[0][1])
    return np.ascontiguousarray(arr, dtype=np.float32)
