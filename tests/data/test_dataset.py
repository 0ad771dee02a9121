"""Loading splits end to end on generated data: subset, tokenizer, cache and errors."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from signtune.config import DataConfig
from signtune.data import dataset
from signtune.data.dataset import load_split, load_task_data, subset_indices
from signtune.data.synth import generate
from signtune.data.types import UNK_ID
from signtune.errors import DataError


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("task") / "data"
    generate(root, seed=0, n_train=40, n_val=10, n_test=6, feature_dim=16)
    return root


@pytest.fixture
def root(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may damage it."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    dataset.clear_cache()
    yield
    dataset.clear_cache()


def _cfg(root: Path, **kw: object) -> DataConfig:
    return dataclasses.replace(DataConfig(root=str(root), feature_dim=16), **kw)  # type: ignore[arg-type]


def test_subset_indices() -> None:
    assert subset_indices(10, 1.0, 0) == list(range(10))
    a = subset_indices(100, 0.3, 7)
    assert a == subset_indices(100, 0.3, 7) == sorted(a) and len(a) == 30
    assert a != subset_indices(100, 0.3, 8)
    assert set(a) <= set(subset_indices(100, 0.5, 7))  # nested for the same seed
    assert len(subset_indices(10, 0.01, 0)) == 1
    assert subset_indices(0, 0.5, 0) == []
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match=r"data\.subset"):
            subset_indices(10, bad, 0)


def test_load_task_data_end_to_end(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data = load_task_data(_cfg(root, subset=0.5, subset_seed=3), tmp_path, cache_dir=cache)
    assert (len(data.train), len(data.val)) == (20, 10)
    assert data.test is not None and len(data.test) == 6
    assert data.feature_dim == 16
    assert len(list(cache.glob("tokenizer-*.json"))) == 1
    for split in (data.train, data.val, data.test):
        assert len(split.ids) == len(split.texts) == len(split.features) == len(split.token_ids)
        for text, ids, feats in zip(split.texts, split.token_ids, split.features, strict=True):
            assert text[0].isupper()  # references keep their case
            assert ids and all(i >= UNK_ID for i in ids)  # no bos/eos/pad
            assert data.tokenizer.decode(ids) == text or UNK_ID in ids
            assert feats.dtype == np.float32 and feats.shape[1] == 16
    full = load_task_data(_cfg(root), tmp_path, cache_dir=cache)
    assert set(data.train.ids) < set(full.train.ids)
    # the tokenizer is trained on the full training split whatever the subset
    assert full.tokenizer.vocab_size == data.tokenizer.vocab_size
    low = load_task_data(_cfg(root, lowercase=True), tmp_path, cache_dir=cache)
    assert low.train.texts == full.train.texts
    assert low.tokenizer.decode(low.train.token_ids[0]) == full.train.texts[0].lower()


def test_relative_root_and_missing_test(root: Path, tmp_path: Path) -> None:
    (root / "how2sign_realigned_test.csv").unlink()
    data = load_task_data(DataConfig(root="data", feature_dim=16), tmp_path, cache_dir=tmp_path / "c")
    assert data.test is None and len(data.train) == 40


def test_features_are_cached_and_invalidated(root: Path, tmp_path: Path) -> None:
    cfg = _cfg(root)
    first = load_task_data(cfg, tmp_path, cache_dir=tmp_path / "c")
    second = load_task_data(_cfg(root, subset=0.5), tmp_path, cache_dir=tmp_path / "c")
    by_id = dict(zip(first.train.ids, first.train.features, strict=True))
    assert all(f is by_id[i] for i, f in zip(second.train.ids, second.train.features, strict=True))
    clip = root / "features" / f"{first.train.ids[0]}.npy"
    np.save(clip, np.zeros((5, 16), np.float32))
    st = clip.stat()
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_task_data(cfg, tmp_path, cache_dir=tmp_path / "c")
    assert third.train.features[0].shape == (5, 16)
    short = load_split("val", root / cfg.val_manifest, root / "features", _cfg(root, max_frames=20), None)
    assert max(len(f) for f in short.features) == 20 and short.token_ids[0] == []


def test_missing_features_are_listed_with_rows(root: Path, tmp_path: Path) -> None:
    manifest = root / "how2sign_realigned_train.csv"
    ids = [line.split("\t")[3] for line in manifest.read_text().splitlines()[1:]]
    for k in (2, 5):
        (root / "features" / f"{ids[k]}.npy").unlink()
    with pytest.raises(DataError) as err:
        load_task_data(_cfg(root), tmp_path, cache_dir=tmp_path / "c")
    problems = err.value.problems
    assert problems[0].message.startswith("2 of 40 rows have no usable feature file")
    assert [p.where for p in problems[1:]] == [f"{manifest}: row 4", f"{manifest}: row 7"]
    assert repr(ids[2]) in problems[1].message
    assert str(root / "features" / f"{ids[2]}.npy") in problems[1].message  # where it looked


def test_missing_folders_name_the_fix(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="study data synth --out DIR"):
        load_task_data(_cfg(tmp_path / "nowhere"), tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="study data synth --out DIR") as err:
        load_task_data(_cfg(root, features_dir="feats"), tmp_path, cache_dir=tmp_path / "c")
    assert str(root / "feats") in str(err.value)


def test_wrong_feature_dim(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"16 features per frame, but data\.feature_dim is 32"):
        load_task_data(_cfg(root, feature_dim=32), tmp_path, cache_dir=tmp_path / "c")


def test_unsafe_id_in_a_manifest_is_reported_with_its_row(root: Path, tmp_path: Path) -> None:
    manifest = root / "how2sign_realigned_val.csv"
    lines = manifest.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[3] = "../../etc/passwd"
    lines[3] = "\t".join(fields)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_task_data(_cfg(root), tmp_path, cache_dir=tmp_path / "c")
    problem = err.value.problems[1]
    assert problem.where == f"{manifest}: row 4"
    assert "'../../etc/passwd' contains a path separator" in problem.message


def test_empty_manifest(root: Path, tmp_path: Path) -> None:
    manifest = root / "how2sign_realigned_val.csv"
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="the val manifest has no rows"):
        load_task_data(_cfg(root), tmp_path, cache_dir=tmp_path / "c")
