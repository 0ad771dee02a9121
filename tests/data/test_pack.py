"""The packed feature store: built once, reused, invalidated, shared between processes, crash-safe."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from signtune.config import DataConfig
from signtune.data import dataset
from signtune.data import pack as packed
from signtune.data.dataset import load_splits, load_task_data, pack_features
from signtune.data.synth import generate
from signtune.data.types import Split
from signtune.errors import DataError

TRAIN = "how2sign_realigned_train.csv"
VAL = "how2sign_realigned_val.csv"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pack") / "data"
    generate(root, seed=0, n_train=30, n_val=8, n_test=5, feature_dim=16)
    return root


@pytest.fixture
def root(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may change it."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    dataset.clear_cache()
    yield
    dataset.clear_cache()


def _cfg(root: Path, **kw: object) -> DataConfig:
    return dataclasses.replace(DataConfig(root=str(root), feature_dim=16), **kw)  # type: ignore[arg-type]


def _splits(root: Path, cache: Path, **kw: object) -> list[Split]:
    dataset.clear_cache()  # as a fresh worker process: nothing in memory
    return [s for s in load_splits(_cfg(root, **kw), root, cache_dir=cache) if s is not None]


def _ids(root: Path, manifest: str = TRAIN) -> list[str]:
    return [line.split("\t")[3] for line in (root / manifest).read_text().splitlines()[1:]]


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _no_file_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, *, feature_dim: int | None) -> np.ndarray:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(dataset, "load_feature", refuse)


def _pack_dir(cache: Path) -> Path:
    (folder,) = (cache / "pack").iterdir()
    return folder


def test_built_on_first_use_then_reused_without_reading_files(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_task_data(_cfg(root), tmp_path, cache_dir=cache)
    folder = _pack_dir(cache)
    index = json.loads((folder / "index.json").read_text())
    assert len(index["ids"]) == 30 + 8 + 5 and index["feature_dim"] == 16
    assert sorted(p.name for p in folder.iterdir()) == [".lock", f"frames-{index['token']}.f32", "index.json"]

    _no_file_reads(monkeypatch)
    dataset.clear_cache()
    second = load_task_data(_cfg(root, subset=0.5), tmp_path, cache_dir=cache)
    assert second.train.ids == [i for i in first.train.ids if i in set(second.train.ids)]
    [info] = pack_features(_cfg(root), tmp_path, cache)  # one features folder: one pack
    assert not info.built and info.clips == 43 and info.path == folder
    assert info.bytes == info.frames * 16 * 4


def test_views_equal_the_per_file_arrays_and_are_read_only(root: Path, tmp_path: Path) -> None:
    per_file = _splits(root, tmp_path / "c", pack="off")
    views = _splits(root, tmp_path / "c")
    pack = packed.open_pack(_pack_dir(tmp_path / "c"))
    assert pack is not None
    for a, b in zip(per_file, views, strict=True):
        assert (a.name, a.ids, a.texts) == (b.name, b.ids, b.texts)
        for x, y in zip(a.features, b.features, strict=True):
            assert y.dtype == np.float32 and y.shape == x.shape
            assert np.array_equal(x, y)
            assert np.shares_memory(y, pack.frames) and not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        views[0].features[0][0, 0] = 1.0


def test_max_frames_truncates_the_views_not_the_pack(root: Path, tmp_path: Path) -> None:
    full = _splits(root, tmp_path / "c")
    short = _splits(root, tmp_path / "c", max_frames=20)
    assert max(len(f) for s in full for f in s.features) > 20
    for a, b in zip(full, short, strict=True):
        for x, y in zip(a.features, b.features, strict=True):
            assert np.array_equal(x[:20], y)
    assert not pack_features(_cfg(root, max_frames=20), tmp_path, tmp_path / "c")[0].built  # one pack for both


def test_changed_file_is_repacked(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    before = _splits(root, cache)
    clip = root / "features" / f"{before[0].ids[3]}.npy"
    new = np.full((7, 16), 0.5, np.float32)
    np.save(clip, new)
    _touch_later(clip)
    after = _splits(root, cache)
    assert np.array_equal(after[0].features[3], new)
    assert all(np.array_equal(x, y) for x, y in zip(before[1].features, after[1].features, strict=True))


def test_touched_file_with_the_same_size_is_repacked(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    before = _splits(root, cache)
    clip = root / "features" / f"{before[0].ids[0]}.npy"
    arr = np.load(clip)
    np.save(clip, arr + 1.0)  # same shape, so the same size
    _touch_later(clip)
    assert np.array_equal(_splits(root, cache)[0].features[0], arr + 1.0)


def test_added_clip_is_repacked(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    _splits(root, cache)
    lines = (root / TRAIN).read_text().splitlines()
    fields = lines[1].split("\t")
    fields[3], fields[6] = "added_clip_0", "A new sentence."
    (root / TRAIN).write_text("\n".join([*lines, "\t".join(fields)]) + "\n")
    np.save(root / "features" / "added_clip_0.npy", np.ones((4, 16), np.float32))
    train = _splits(root, cache)[0]
    assert train.ids[-1] == "added_clip_0" and np.array_equal(train.features[-1], np.ones((4, 16), np.float32))
    assert pack_features(_cfg(root), tmp_path, cache)[0].clips == 44


def test_removed_file_gives_the_per_file_error(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    _splits(root, cache)
    (root / "features" / f"{_ids(root)[2]}.npy").unlink()
    errors = []
    for mode in ("auto", "off"):
        with pytest.raises(DataError) as err:
            _splits(root, cache, pack=mode)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "row 4" in errors[0] and "no feature file" in errors[0]


def test_a_file_earlier_in_the_search_order_wins(root: Path, tmp_path: Path) -> None:
    """A nested file was packed; a flat one with the same id appears: it is what the per-file path reads."""
    cache = tmp_path / "c"
    clip_id = _ids(root)[0]
    nested = root / "features" / clip_id[:5]
    nested.mkdir()
    shutil.move(root / "features" / f"{clip_id}.npy", nested / f"{clip_id}.npy")
    _splits(root, cache)
    flat = np.zeros((3, 16), np.float32)
    np.save(root / "features" / f"{clip_id}.npy", flat)
    assert np.array_equal(_splits(root, cache)[0].features[0], flat)


def test_same_files_give_the_same_errors_as_the_per_file_path(root: Path, tmp_path: Path) -> None:
    ids, feats = _ids(root), root / "features"
    arr = np.load(feats / f"{ids[1]}.npy")
    arr[2, 3] = np.nan
    np.save(feats / f"{ids[1]}.npy", arr)
    np.save(feats / f"{ids[4]}.npy", np.ones((3, 8), np.float32))  # wrong D
    np.save(feats / f"{ids[5]}.npy", np.array([object()], dtype=object), allow_pickle=True)
    (feats / f"{ids[6]}.npy").write_bytes(b"not numpy")
    (feats / f"{ids[7]}.npy").unlink()
    torch.save({"x": 1}, feats / f"{ids[7]}.pt")  # a dict without 'features'
    messages = []
    for mode in ("off", "auto"):
        with pytest.raises(DataError) as err:
            _splits(root, tmp_path / "c", pack=mode)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    for part in ("NaN or infinite", "8 features per frame", "dtype=object", "no NUMPY header", "without key"):
        assert part in messages[0]
    assert not (tmp_path / "c" / "pack").exists() or not list((tmp_path / "c" / "pack").glob("*/index.json"))


def test_wrong_feature_dim_and_symlink_escape_match_the_per_file_errors(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    _splits(root, cache)  # a valid pack with D = 16 exists
    errs = []
    for mode in ("auto", "off"):
        with pytest.raises(DataError) as err:
            _splits(root, cache, pack=mode, feature_dim=32)
        errs.append(str(err.value))
    assert errs[0] == errs[1] and "data.feature_dim is 32" in errs[0]
    clip = root / "features" / f"{_ids(root)[0]}.npy"
    clip.unlink()
    clip.symlink_to(root / "outside.npy")
    np.save(root / "outside.npy", np.ones((2, 16), np.float32))
    errs = []
    for mode in ("auto", "off"):
        with pytest.raises(DataError, match="outside the features directory") as err:
            _splits(root, cache, pack=mode)
        errs.append(str(err.value))
    assert errs[0] == errs[1]


def test_pack_off_reads_files_and_writes_no_pack(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pack(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pack was used")

    monkeypatch.setattr(packed, "ensure_pack", no_pack)
    data = load_task_data(_cfg(root, pack="off"), tmp_path, cache_dir=tmp_path / "c")
    assert len(data.train) == 30 and data.train.features[0].flags.writeable
    assert not (tmp_path / "c" / "pack").exists()


def test_the_data_folder_is_not_written_to(root: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    _splits(root, tmp_path / "c")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_unwritable_cache_names_the_fix(root: Path, tmp_path: Path) -> None:
    (tmp_path / "c").write_text("a file where the cache folder should be")
    with pytest.raises(DataError, match=r"cannot write the packed feature store") as err:
        _splits(root, tmp_path / "c")
    assert "data.pack: off" in str(err.value)


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_a_crash_mid_pack_leaves_nothing_trusted(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: type[BaseException]
) -> None:
    cache = tmp_path / "c"
    calls = 0
    real = dataset.load_feature

    def flaky(path: Path, *, feature_dim: int | None) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 12:
            raise crash("killed mid-pack")
        return real(path, feature_dim=feature_dim)

    monkeypatch.setattr(dataset, "load_feature", flaky)
    with pytest.raises(crash):
        _splits(root, cache)
    folder = _pack_dir(cache)
    assert packed.open_pack(folder) is None
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the partial frames file is gone
    monkeypatch.setattr(dataset, "load_feature", real)
    assert len(_splits(root, cache)[0]) == 30


def test_a_killed_build_or_damaged_pack_is_rebuilt(root: Path, tmp_path: Path) -> None:
    """What a SIGKILL or a full disk can leave: partial files, an index naming short or missing frames."""
    cache = tmp_path / "c"
    good = _splits(root, cache)
    folder = _pack_dir(cache)
    index = json.loads((folder / "index.json").read_text())
    frames = folder / f"frames-{index['token']}.f32"
    (folder / "frames-0123.f32.partial").write_bytes(b"\0" * 100)  # a killed build's leftover
    with frames.open("r+b") as f:
        f.truncate(frames.stat().st_size - 4)
    dataset.clear_cache()
    assert packed.open_pack(folder) is None
    again = _splits(root, cache)
    assert np.array_equal(again[0].features[-1], good[0].features[-1])
    assert not list(folder.glob("*.partial")) and not frames.exists()
    for damage in ("{not json", json.dumps({**index, "format": 99}), json.dumps({**index, "token": "gone"})):
        (folder / "index.json").write_text(damage)
        dataset.clear_cache()
        assert packed.open_pack(folder) is None
        assert len(_splits(root, cache)[0]) == 30


def test_an_old_pack_survives_a_failed_rebuild(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    _splits(root, cache)
    clip = root / "features" / f"{_ids(root)[0]}.npy"
    good = clip.read_bytes()
    clip.write_bytes(b"\x93NUMPY but then the disk gave up")
    with pytest.raises(DataError, match="re-save"):
        _splits(root, cache)
    assert packed.open_pack(_pack_dir(cache)) is not None  # the previous pack, still whole
    clip.write_bytes(good)
    _touch_later(clip)
    assert len(_splits(root, cache)[0]) == 30


CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
from signtune.config import DataConfig
from signtune.data.dataset import load_splits, pack_features
root, cache, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = DataConfig(root=str(root), feature_dim=16)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
[info] = pack_features(cfg, root, cache)
train, val, test = load_splits(cfg, root, cache_dir=cache)
total = float(sum(np.float64(f.sum()) for s in (train, val, test) for f in s.features))
print(json.dumps({"built": info.built, "total": total}), flush=True)
"""


def test_concurrent_first_use_builds_once(root: Path, tmp_path: Path) -> None:
    cache, go = tmp_path / "c", tmp_path / "go"
    folder = packed.pack_folder(cache, root / "features")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with packed.locked(folder):  # both children find no pack and queue on the lock
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(root), str(cache), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        time.sleep(0.3)
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]
    expected = sum(np.float64(f.sum()) for s in _splits(root, tmp_path / "other", pack="off") for f in s.features)
    assert all(r["total"] == pytest.approx(float(expected), rel=1e-9) for r in results)


def test_progress_and_force(root: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    [info] = pack_features(
        _cfg(root), tmp_path, tmp_path / "c", progress=lambda done, total: seen.append((done, total))
    )
    assert info.built and info.reason == "no pack yet" and seen[-1] == (43, 43) and len(seen) == 43
    [again] = pack_features(_cfg(root), tmp_path, tmp_path / "c", force=True)
    assert again.built and again.reason == "a rebuild was asked for" and again.frames == info.frames


def test_index_holds_no_pickle(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling")

    _splits(root, tmp_path / "c")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    dataset.clear_cache()
    assert packed.open_pack(_pack_dir(tmp_path / "c")) is not None
