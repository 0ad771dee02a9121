"""Feature files: where they are looked for, what is refused, and what is loaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from signtune.data.features import load_feature, resolve_feature_path
from signtune.errors import DataError


class NotATensor:
    """Saving an instance pickles a class reference: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture
def feats(tmp_path: Path) -> Path:
    d = tmp_path / "features"
    d.mkdir()
    return d


def test_flat_then_nested_lookup(feats: Path) -> None:
    arr = np.ones((3, 4), np.float32)
    np.save(feats / "clip_a.npy", arr)
    torch.save(torch.ones(3, 4), feats / "clip_a.pt")
    assert resolve_feature_path(feats, "clip_a") == feats / "clip_a.npy"  # .npy first
    torch.save(torch.ones(3, 4), feats / "clip_b.pt")
    assert resolve_feature_path(feats, "clip_b") == feats / "clip_b.pt"
    (feats / "abcde").mkdir()
    np.save(feats / "abcde" / "abcdefgh.npy", arr)
    assert resolve_feature_path(feats, "abcdefgh") == feats / "abcde" / "abcdefgh.npy"
    assert resolve_feature_path(feats, "missing") is None


@pytest.mark.parametrize(
    ("clip_id", "rule"),
    [
        ("../x", "path separator"),
        ("..", "'..'"),
        ("/etc/passwd", "path separator"),
        ("a\\b", "path separator"),
        ("a\x00b", "NUL"),
        ("", "empty"),
    ],
)
def test_unsafe_ids_are_refused(feats: Path, clip_id: str, rule: str) -> None:
    with pytest.raises(DataError, match=re.escape(rule)) as err:
        resolve_feature_path(feats, clip_id)
    assert repr(clip_id) in str(err.value)


def test_symlink_out_of_the_folder_is_refused(feats: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.npy"
    np.save(outside, np.ones((2, 2), np.float32))
    os.symlink(outside, feats / "clip.npy")
    with pytest.raises(DataError, match="outside the features directory"):
        resolve_feature_path(feats, "clip")
    np.save(feats / "real.npy", np.ones((2, 2), np.float32))
    os.symlink(feats / "real.npy", feats / "alias.npy")  # a link inside is fine
    assert resolve_feature_path(feats, "alias") == feats / "alias.npy"


@pytest.mark.parametrize(
    ("name", "save"),
    [
        ("a.npy", lambda p, a: np.save(p, a.astype(np.float64))),
        ("b.pt", lambda p, a: torch.save(torch.from_numpy(a), p)),
        ("c.pt", lambda p, a: torch.save({"features": torch.from_numpy(a).half(), "fps": 24}, p)),
    ],
    ids=["npy-float64", "pt-tensor", "pt-dict-half"],
)
def test_loads_as_float32(feats: Path, name: str, save: object) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)
    save(feats / name, arr)  # type: ignore[operator]
    out = load_feature(feats / name, feature_dim=3)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)
    assert load_feature(feats / name, feature_dim=None).shape == (4, 3)


@pytest.mark.parametrize(
    ("name", "save", "needles"),
    [
        (
            "obj.pt",
            lambda p: torch.save({"features": torch.ones(2, 3), "x": NotATensor()}, p),
            ["pickled Python object", "torch.save(tensor) or as .npy"],
        ),
        ("list.pt", lambda p: torch.save([torch.ones(2, 3)], p), ["holds a list, not a tensor"]),
        ("nokey.pt", lambda p: torch.save({"feats": torch.ones(2, 3)}, p), ["without key 'features'"]),
        (
            "obj.npy",
            lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
            ["dtype=object", "allow_pickle=False"],
        ),
        ("garbage.npy", lambda p: p.write_bytes(b"not an array"), ["cannot be read by numpy.load"]),
        ("garbage.pt", lambda p: p.write_bytes(b"not a tensor"), ["cannot be read by torch.load"]),
        ("three.npy", lambda p: np.save(p, np.ones((2, 3, 1))), ["2 dimensions", "(2, 3, 1)"]),
        ("wide.npy", lambda p: np.save(p, np.ones((2, 5))), ["5 features per frame", "data.feature_dim"]),
        ("empty.npy", lambda p: np.save(p, np.ones((0, 3))), ["0 frames"]),
        ("nan.npy", lambda p: np.save(p, np.array([[1, 2, np.nan], [1, 2, 3]])), ["NaN", "1 of 2 frames"]),
        ("inf.pt", lambda p: torch.save(torch.tensor([[1.0, 2.0, float("inf")]]), p), ["infinite"]),
        ("text.npy", lambda p: np.save(p, np.array([["a", "b", "c"]])), ["not a real number type"]),
        ("clip.txt", lambda p: p.write_text("1 2 3"), [".npy or .pt"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_files_are_refused(feats: Path, name: str, save: object, needles: list[str]) -> None:
    path = feats / name
    save(path)  # type: ignore[operator]
    with pytest.raises(DataError) as err:
        load_feature(path, feature_dim=3)
    problem = err.value.problems[0]
    assert problem.where == str(path)
    assert problem.fix
    for needle in needles:
        assert needle in str(err.value)
