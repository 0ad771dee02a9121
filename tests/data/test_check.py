"""The data check: one row per rule, each a defect planted in a small clean dataset."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from tests.data.helpers import DIM, H2S_HEADER, Dataset, sentence

from signtune.config import DataConfig
from signtune.data import dataset
from signtune.data.check import check_data
from signtune.data.findings import Finding
from signtune.errors import DataError


class Pickled:
    """A class reference inside a .pt: weights-only loading refuses it."""

    def __init__(self) -> None:
        self.x = 1


def _set_field(line: str, column: int, value: str) -> str:
    cells = line.rstrip("\n").split("\t")
    cells[column] = value
    return "\t".join(cells) + "\n"


def _edit_row(ds: Dataset, split: str, index: int, column: int, value: str) -> None:
    """Set a field of the ``index``-th row (How2Sign: after the header)."""
    lines = ds.lines(split)
    at = index + (ds.format != "ssvp")
    lines[at] = _set_field(lines[at], column, value)
    ds.write_lines(split, lines)


def _first(ds: Dataset, k: int = 0) -> str:
    return ds.ids["train"][k]


def _unchanged(ds: Dataset) -> DataConfig:
    return ds.cfg()


@dataclass(frozen=True)
class Case:
    """A defect (``plant`` edits the dataset and returns the config to check) and its finding."""

    plant: Callable[[Dataset], DataConfig]
    severity: str
    split: str
    rule: str
    needles: tuple[str, ...]
    rows: tuple[int, ...] | None = None  # the finding's rows, when the case pins them
    format: str = "how2sign"


def _feature(change: Callable[[Dataset, str], object], k: int = 0) -> Callable[[Dataset], DataConfig]:
    def plant(ds: Dataset) -> DataConfig:
        change(ds, _first(ds, k))
        return ds.cfg()

    return plant


def _lines(split: str, change: Callable[[list[str]], list[str]], **cfg: object) -> Callable[[Dataset], DataConfig]:
    def plant(ds: Dataset) -> DataConfig:
        ds.write_lines(split, change(ds.lines(split)))
        return ds.cfg(**cfg)

    return plant


def _rows(split: str, index: int, column: int, value: str) -> Callable[[Dataset], DataConfig]:
    def plant(ds: Dataset) -> DataConfig:
        _edit_row(ds, split, index, column, value)
        return ds.cfg()

    return plant


def _shared_video_names(ds: Dataset) -> DataConfig:
    """60 sentences over 4 videos, keyed on VIDEO_NAME: the real failure (31k rows, 2,108 ids)."""
    rows = [
        f"vid{v}\tvid{v}-1-rgb_front\tvid{v}_{s}\tvid{v}_{s}-1-rgb_front\t{s}.00\t{s}.90\t{sentence(v * 15 + s)}\n"
        for v in range(4)
        for s in range(15)
    ]
    ds.write_lines("train", [H2S_HEADER, *rows])
    return ds.cfg(id_column="VIDEO_NAME")


def _one_video_per_row_keyed_on_video(ds: Dataset) -> DataConfig:
    for split in ("train", "val", "test"):
        header, *rows = ds.lines(split)
        videos = [f"video-{split}{i}-1-rgb_front" for i in range(len(rows))]
        ds.write_lines(split, [header, *(_set_field(r, 1, v) for r, v in zip(rows, videos, strict=True))])
        for clip_id, video in zip(ds.ids[split], videos, strict=True):
            shutil.copy(ds.files[clip_id], ds.files[clip_id].with_name(f"{video}.npy"))
    return ds.cfg(id_column="VIDEO_NAME")


def _pickled_pt(ds: Dataset, clip_id: str) -> None:
    ds.files[clip_id].unlink()
    torch.save({"features": Pickled()}, ds.files[clip_id].with_suffix(".pt"))


def _nan(ds: Dataset, clip_id: str) -> None:
    arr = np.load(ds.files[clip_id])
    arr[3, 1] = np.nan
    ds.save(clip_id, arr)


def _ssvp_length(value: str) -> Callable[[Dataset], DataConfig]:
    return _rows("train", 1, 1, value)


CASES: dict[str, Case] = {
    # errors: folders and manifests
    "data-root": Case(lambda ds: ds.cfg(root=str(ds.root / "nope")), "error", "data", "data-root", ("does not exist",)),
    "features-dir": Case(
        lambda ds: ds.cfg(features_dir="feats"), "error", "data", "features-dir", ("the features folder",)
    ),
    "manifest-missing": Case(
        lambda ds: (ds.manifest("val").unlink(), ds.cfg())[1], "error", "val", "manifest", ("does not exist",)
    ),
    "header-missing-column": Case(
        _lines("train", lambda ls: [ls[0].replace("\tSENTENCE\n", "\tTEXT\n"), *ls[1:]]),
        "error",
        "train",
        "header",
        ("lacks the column ['SENTENCE']", "columns found:"),
    ),
    "empty-split": Case(_lines("val", lambda ls: ls[:1]), "error", "val", "empty-split", ("has no rows",)),
    "short-row": Case(
        _lines("train", lambda ls: [*ls, "v\tv-1-rgb_front\n"]),
        "error",
        "train",
        "fields",
        ("row 26", "has 2 fields"),
        (26,),
    ),
    "empty-id": Case(_rows("train", 2, 3, ""), "error", "train", "empty-id", ("SENTENCE_NAME is empty",), (4,)),
    "empty-text": Case(_rows("train", 4, 6, "  "), "error", "train", "empty-text", ("SENTENCE is empty",), (6,)),
    "ssvp-length-not-a-number": Case(
        _ssvp_length("12 frames"),
        "error",
        "train",
        "length-field",
        ("row 2", "non-negative integer", "'12 frames'"),
        (2,),
        "ssvp",
    ),
    "ssvp-length-minus-one": Case(
        _ssvp_length("-1"), "error", "train", "length-field", ("length is -1", "get_feature_lengths"), (2,), "ssvp"
    ),
    # errors: ids
    "duplicate-id": Case(
        _lines("train", lambda ls: [*ls, ls[3]]), "error", "train", "duplicate-id", ("is a duplicate of row 4",), (26,)
    ),
    "shared-id": Case(
        _shared_video_names,
        "error",
        "train",
        "shared-id",
        ("60 rows share 4 ids (column VIDEO_NAME)", "names a whole How2Sign video", "key on SENTENCE_NAME"),
        tuple(range(2, 62)),
    ),
    "unsafe-id": Case(_rows("val", 1, 3, "../../etc/x"), "error", "val", "unsafe-id", ("path separator",), (3,)),
    # errors: feature files
    "missing-feature": Case(
        _feature(lambda ds, i: ds.files[i].unlink(), k=2),
        "error",
        "train",
        "missing-feature",
        ("1 of 24 clips has no feature file", "row 4"),
        (4,),
    ),
    "pickled-pt": Case(
        _feature(_pickled_pt), "error", "train", "unreadable-feature", ("pickled Python object", "never run code"), (2,)
    ),
    "ndim": Case(
        _feature(lambda ds, i: ds.save(i, np.ones((4, DIM, 2), np.float32))),
        "error",
        "train",
        "ndim",
        ("2 dimensions",),
    ),
    "feature-dim": Case(
        _feature(lambda ds, i: ds.save(i, np.ones((80, DIM + 1), np.float32))),
        "error",
        "train",
        "feature-dim",
        (f"has {DIM + 1} features per frame, but data.feature_dim is {DIM}",),
        (2,),
    ),
    "empty-clip": Case(
        _feature(lambda ds, i: ds.save(i, np.ones((0, DIM), np.float32))), "error", "train", "empty-clip", ("0 frames",)
    ),
    "non-finite": Case(_feature(_nan), "error", "train", "non-finite", ("NaN or infinite values in 1 of",), (2,)),
    # warnings
    "id-column": Case(
        _one_video_per_row_keyed_on_video, "warning", "train", "id-column", ("VIDEO_NAME", "not one sentence")
    ),
    "ssvp-length-mismatch": Case(
        _ssvp_length("75"), "warning", "train", "length-mismatch", ("length 75, file 81 frames",), (2,), "ssvp"
    ),
    "truncated": Case(lambda ds: ds.cfg(max_frames=90), "warning", "train", "truncated", ("data.max_frames = 90",)),
    "long-clip": Case(
        _feature(lambda ds, i: ds.save(i, np.ones((600, DIM), np.float32))),
        "warning",
        "train",
        "long-clip",
        ("1 clip is a length outlier", "600 frames"),
        (2,),
    ),
    "short-clip": Case(
        _feature(lambda ds, i: ds.save(i, np.ones((3, DIM), np.float32)), k=5),
        "warning",
        "train",
        "short-clip",
        ("3 frames for 7 words",),
        (7,),
    ),
    "long-text": Case(
        _rows("train", 7, 6, " ".join(["and then they signed more"] * 20) + "."),
        "warning",
        "train",
        "long-text",
        ("100 words",),
        (9,),
    ),
    "overlap": Case(
        _rows("val", 2, 6, "  the BOY reads a red book   every morning."),
        "warning",
        "val",
        "overlap",
        ("1 of 6 val sentences appears in train", "(row 4)"),
        (4,),
    ),
    "cross-split-id": Case(
        lambda ds: (_edit_row(ds, "test", 0, 3, _first(ds)), ds.cfg())[1],
        "warning",
        "test",
        "cross-split-id",
        ("also train ids",),
        (2,),
    ),
    "vocab-oov": Case(
        _rows("val", 0, 6, "Zebras juggle purple umbrellas quietly."),
        "warning",
        "val",
        "vocab",
        ("5 of 45 val words", "'zebras'"),
        (2,),
    ),
    "no-test": Case(lambda ds: (ds.manifest("test").unlink(), ds.cfg())[1], "info", "test", "no-test", ("skipped",)),
}


def _matching(findings: list[Finding], case: Case) -> list[Finding]:
    return [f for f in findings if (f.severity, f.split, f.rule) == (case.severity, case.split, case.rule)]


@pytest.mark.parametrize("name", list(CASES))
def test_each_rule(make_dataset: Callable[..., Dataset], name: str) -> None:
    case = CASES[name]
    ds = make_dataset(format=case.format)
    report = check_data(case.plant(ds), ds.root)
    found = _matching(report.findings, case)
    assert len(found) == 1, [(f.severity, f.split, f.rule, f.message) for f in report.findings]
    f = found[0]
    for needle in case.needles:
        assert needle in f.message + f.fix, f
    assert f.where and f.message
    if case.severity != "info":
        assert f.fix
    if case.rows is not None:
        assert f.rows == case.rows
    if f.rows and case.rule not in ("empty-id", "fields"):  # rows without an id
        assert f.ids
    assert bool(report.errors) == (case.severity == "error")


ERRORS = [name for name, case in CASES.items() if case.severity == "error"]


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_is_refused_by_the_loader(make_dataset: Callable[..., Dataset], name: str) -> None:
    """The check's errors are exactly the loader's refusals, so `study run` stops on each."""
    case = CASES[name]
    ds = make_dataset(format=case.format)
    cfg = case.plant(ds)
    dataset.clear_cache()
    with pytest.raises(DataError):
        dataset.load_task_data(cfg, ds.root, cache_dir=ds.root / ".cache")


@pytest.mark.parametrize("fmt", ["how2sign", "ssvp"])
def test_clean_data_has_no_errors_or_warnings(make_dataset: Callable[..., Dataset], fmt: str) -> None:
    ds = make_dataset(format=fmt)
    seen: list[tuple[str, int, int]] = []
    report = check_data(ds.cfg(), ds.root, progress=lambda s, done, total: seen.append((s, done, total)), workers=2)
    assert [(f.severity, f.rule) for f in report.findings] == [("info", "vocab"), ("info", "vocab")]
    assert [(s.name, s.rows, s.clips) for s in report.splits] == [("train", 24, 24), ("val", 6, 6), ("test", 4, 4)]
    assert seen[-1] == ("test", 4, 4) and len(seen) == 34
    assert report.to_dict()["splits"][0]["frames_max"] == report.splits[0].frames_max


def test_every_finding_at_once(make_dataset: Callable[..., Dataset]) -> None:
    ds = make_dataset()
    ds.files[_first(ds, 1)].unlink()
    _nan(ds, _first(ds, 2))
    ds.save(_first(ds, 3), np.ones((80, DIM + 1), np.float32))
    ds.save(_first(ds, 4), np.ones((80, DIM + 2), np.float32))  # another D: its own finding
    _edit_row(ds, "train", 6, 6, "")
    ds.write_lines("val", [*ds.lines("val"), ds.lines("val")[1]])
    report = check_data(ds.cfg(), ds.root)
    got = sorted((f.split, f.rule, f.rows) for f in report.errors)
    assert got == [
        ("train", "empty-text", (8,)),
        ("train", "feature-dim", (5,)),
        ("train", "feature-dim", (6,)),
        ("train", "missing-feature", (3,)),
        ("train", "non-finite", (4,)),
        ("val", "duplicate-id", (8,)),
    ]
    assert [p.where for p in report.problems()] == [f.where for f in report.errors]


def test_many_files_with_one_defect_are_one_finding(make_dataset: Callable[..., Dataset]) -> None:
    ds = make_dataset(sizes=(24, 3, 0))
    shutil.rmtree(ds.root / "features")
    (ds.root / "features").mkdir()
    for clip_id in ds.ids["train"][:10]:
        np.save(ds.files[clip_id], np.ones((80, DIM + 1), np.float32))
    report = check_data(ds.cfg(), ds.root)
    by_rule = {(f.split, f.rule): f for f in report.errors}
    dim = by_rule[("train", "feature-dim")]
    assert dim.message.startswith(f"10 of 24 feature files (e.g. {ds.files[ds.ids['train'][0]]}) have {DIM + 1}")
    assert len(dim.rows) == len(dim.ids) == 10
    missing = by_rule[("train", "missing-feature")]
    assert missing.message.startswith("14 of 24 clips have no feature file") and len(missing.rows) == 14
    assert by_rule[("val", "missing-feature")].rows == (2, 3, 4)
