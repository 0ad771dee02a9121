"""Feature files kept per split: ``features/{split}``, found ``features/<split>/``, packs and hints."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from signtune.config import DataConfig
from signtune.data import dataset, layout
from signtune.data.check import check_data
from signtune.data.dataset import load_task_data, pack_features
from signtune.data.synth import generate
from signtune.errors import DataError

SPLITS = {"train": "how2sign_realigned_train.csv", "val": "how2sign_realigned_val.csv"}
SPLITS["test"] = "how2sign_realigned_test.csv"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split") / "data"
    generate(root, seed=0, n_train=12, n_val=4, n_test=3, feature_dim=16)
    return root


def ids(root: Path, split: str) -> list[str]:
    return [line.split("\t")[3] for line in (root / SPLITS[split]).read_text().splitlines()[1:]]


def per_split(root: Path) -> Path:
    """Move every clip's file from features/ into features/<its split>/, as the old scripts kept them."""
    for split in SPLITS:
        (root / "features" / split).mkdir()
        for clip_id in ids(root, split):
            (root / "features" / f"{clip_id}.npy").rename(root / "features" / split / f"{clip_id}.npy")
    return root


@pytest.fixture
def root(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy laid out per split."""
    return per_split(Path(shutil.copytree(synth_root, tmp_path / "data")))


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(layout, "_SAID", set())
    dataset.clear_cache()
    yield
    dataset.clear_cache()


def _cfg(root: Path, **kw: object) -> DataConfig:
    return dataclasses.replace(DataConfig(root=str(root), feature_dim=16), **kw)  # type: ignore[arg-type]


def _expected(root: Path, split: str) -> list[np.ndarray]:
    return [np.load(root / "features" / split / f"{i}.npy") for i in ids(root, split)]


@pytest.mark.parametrize("pack", ["auto", "off"])
def test_split_sub_folders_are_found_and_said_once(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, pack: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="signtune.data"):
        data = load_task_data(_cfg(root, pack=pack), tmp_path, cache_dir=tmp_path / "c")
        dataset.clear_cache()
        load_task_data(_cfg(root, pack=pack), tmp_path, cache_dir=tmp_path / "c")  # a second load says nothing
    assert data.test is not None
    for split in (data.train, data.val, data.test):
        assert split.ids == ids(root, split.name)
        assert all(np.array_equal(a, b) for a, b in zip(split.features, _expected(root, split.name), strict=True))
    notes = [r.getMessage() for r in caplog.records if r.name == "signtune.data"]
    assert notes == [
        "data.features_dir 'features' holds no feature files of the train, val, test clips; features/train/, "
        "features/val/, features/test/ do, and are used (set `features_dir: features/{split}` under data: in "
        "study.yaml to say so)"
    ]


def test_placeholder_packs_each_split_apart(root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = ids(root, "train")[0]  # the same id in val, with another file there: the splits must not mix
    np.save(root / "features" / "val" / f"{shared}.npy", np.full((5, 16), 7.0, np.float32))
    lines = (root / SPLITS["val"]).read_text().splitlines(keepends=True)
    cells = lines[1].split("\t")
    (root / "features" / "val" / f"{cells[3]}.npy").unlink()
    cells[3] = shared
    (root / SPLITS["val"]).write_text("".join([lines[0], "\t".join(cells), *lines[2:]]))

    cfg = _cfg(root, features_dir="features/{split}")
    with caplog.at_level(logging.WARNING, logger="signtune.data"):
        infos = pack_features(cfg, tmp_path, tmp_path / "c")
        data = load_task_data(cfg, tmp_path, cache_dir=tmp_path / "c")
    assert not caplog.records  # the setting names the layout: nothing to say
    assert [(i.features_dir.name, i.clips, i.built) for i in infos] == [
        ("train", 12, True),
        ("val", 4, True),
        ("test", 3, True),
    ]
    assert len({i.path for i in infos}) == 3
    assert np.array_equal(data.val.features[0], np.full((5, 16), 7.0, np.float32))
    assert not np.array_equal(data.train.features[0], data.val.features[0])
    assert data.test is not None and data.test.ids == ids(root, "test")
    assert not any(i.built for i in pack_features(cfg, tmp_path, tmp_path / "c"))


def test_a_missing_split_folder_is_named(root: Path, tmp_path: Path) -> None:
    shutil.rmtree(root / "features" / "val")
    with pytest.raises(DataError) as exc:
        load_task_data(_cfg(root, features_dir="features/{split}"), tmp_path, cache_dir=tmp_path / "c")
    (p,) = exc.value.problems
    assert p.where == "data.features_dir"
    assert p.message == (
        f"the val features folder {root / 'features' / 'val'} does not exist (data.features_dir is 'features/{{split}}')"
    )
    assert not (tmp_path / "c" / "pack").exists() or not any((tmp_path / "c" / "pack").rglob("index.json"))


def test_data_check_says_what_it_found(root: Path) -> None:
    report = check_data(_cfg(root), root)
    assert report.errors == [] and [s.clips for s in report.splits] == [12, 4, 3]
    (note,) = [f for f in report.findings if f.rule == "split-folders"]
    assert note.severity == "info" and note.where == str(root / "features")
    assert note.fix == "set `features_dir: features/{split}` under data: in study.yaml to say so"


def test_check_hints_when_features_dir_names_one_split(root: Path) -> None:
    report = check_data(_cfg(root, features_dir="features/train"), root)
    missing = {f.split: f for f in report.errors if f.rule == "missing-feature"}
    assert sorted(missing) == ["test", "val"]
    assert missing["val"].fix == "the val files are in features/val/: set `features_dir: features/{split}`"


def test_check_hints_when_the_placeholder_is_set_but_the_files_are_flat(synth_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(synth_root, tmp_path / "flat"))
    report = check_data(_cfg(root, features_dir="features/{split}"), root)
    folders = [f for f in report.errors if f.rule == "features-dir"]
    assert [f.split for f in folders] == ["train", "val", "test"]
    assert folders[0].where == str(root / "features" / "train")
    assert folders[0].fix == "the train files are in features/, not in per-split folders: set `features_dir: features`"


def test_feature_listing_of_a_flat_folder_is_unchanged(synth_root: Path, root: Path) -> None:
    flat = layout.feature_listing(synth_root, "features")
    assert flat == sorted(p.name for p in (synth_root / "features").iterdir())
    split = layout.feature_listing(root, "features/{split}")
    assert len(split) == 12 + 4 + 3 and split[0].startswith("test/")


@pytest.mark.parametrize("value", ["features/{splt}", "features/{split", "{}/x"])
def test_features_dir_placeholders(value: str) -> None:
    problem = layout.features_dir_problem(value)
    assert problem is not None and "{split}" in problem[1] and repr(value) in problem[0]
    assert layout.features_dir_problem("features/{split}") is None
    assert layout.features_dir_problem("feats_{split}/x") is None


@pytest.mark.parametrize("features_dir", ["features", "features/{split}"])
def test_pt_dicts_with_video_id_and_text_and_an_id_duration_text_tsv(tmp_path: Path, features_dir: str) -> None:
    """Two habits of the scripts signtune replaces: .pt files holding {'features', 'video_id',
    'text'}, and an ``id / duration / text`` TSV read with ``format: tsv``; in one folder or per split."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        folder = root / features_dir.replace("{split}", split)
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["id\tduration\ttext\n"]
        for i in range(n):
            clip_id, text = f"{split}_{i:02d}", f"sentence {split} number {i} ."
            arr = rng.standard_normal((10 + i, 16)).astype(np.float32)
            torch.save(
                {"features": torch.from_numpy(arr), "video_id": f"video{i}", "text": text},
                folder / f"{clip_id}.pt",
            )
            rows.append(f"{clip_id}\t{1.25 + i}\t{text}\n")
        (root / f"{split}.tsv").write_text("".join(rows))
    cfg = _cfg(
        root,
        format="tsv",
        id_column="id",
        text_column="text",
        train_manifest="train.tsv",
        val_manifest="val.tsv",
        test_manifest="test.tsv",
        features_dir=features_dir,
    )
    report = check_data(cfg, tmp_path)
    assert report.errors == [] and [s.clips for s in report.splits] == [6, 3]
    data = load_task_data(cfg, tmp_path, cache_dir=tmp_path / "c")
    assert data.val.ids == ["val_00", "val_01", "val_02"] and data.val.texts[2] == "sentence val number 2 ."
    assert [f.shape for f in data.val.features] == [(10, 16), (11, 16), (12, 16)]
    assert data.test is None
