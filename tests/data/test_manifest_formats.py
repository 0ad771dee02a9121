"""Every manifest format with realistic rows, its row errors, and where feature files are found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from signtune.data.features import resolve_feature_path
from signtune.data.manifest import ManifestRow, read_manifest, scan_manifest
from signtune.errors import DataError

REALIGNED = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
ORIGINAL = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART\tEND\tSENTENCE\n"
H2S = {"format": "how2sign", "id_column": "SENTENCE_NAME", "text_column": "SENTENCE"}
SSVP = {"format": "ssvp", "id_column": "SENTENCE_NAME", "text_column": "SENTENCE"}  # columns unused


def _h2s(video: str, k: int, start: float, end: float, text: str) -> str:
    return f"{video}\t{video}-8-rgb_front\t{video}_{k}\t{video}_{k}-8-rgb_front\t{start:.2f}\t{end:.2f}\t{text}\n"


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


FORMATS = [
    pytest.param(
        "how2sign_realigned_train.csv",
        REALIGNED
        + _h2s("--7E2sU6zP4", 10, 129.06, 142.48, 'And I call them "decorative elements" because...')
        + _h2s("--7E2sU6zP4", 11, 142.5, 148.62, "It's a 1/2 inch, 'round' one."),
        H2S,
        [
            ManifestRow(2, "--7E2sU6zP4_10-8-rgb_front", 'And I call them "decorative elements" because...'),
            ManifestRow(3, "--7E2sU6zP4_11-8-rgb_front", "It's a 1/2 inch, 'round' one."),
        ],
        id="how2sign-realigned",
    ),
    pytest.param(
        "how2sign_val.csv",
        ORIGINAL + _h2s("-d5dN54tH2E", 0, 15.17, 18.34, "We're going to work on a arm drill."),
        H2S,
        [ManifestRow(2, "-d5dN54tH2E_0-8-rgb_front", "We're going to work on a arm drill.")],
        id="how2sign-original-start-end",
    ),
    pytest.param(
        "train_features.tsv",
        '00001-abc.mp4\t120\tHello, "world".\n00002-def\t75.0\tSecond\tone.\n\n00003-ghi.pt\t0\tEmpty clip.\n',
        SSVP,
        [
            ManifestRow(1, "00001-abc", 'Hello, "world".', 120),
            ManifestRow(2, "00002-def", "Second\tone.", 75),
            ManifestRow(4, "00003-ghi", "Empty clip.", 0),
        ],
        id="ssvp-no-header-suffix-dropped-float-length",
    ),
    pytest.param(
        "val_features.tsv",
        "/checkpoint/how2sign/features\nclip1\t7\tOne.\n",
        SSVP,
        [ManifestRow(2, "clip1", "One.", 7)],
        id="ssvp-fairseq-root-line-skipped",
    ),
    pytest.param(
        "test_features.tsv",
        "video_name\tlength\tlabel\nclip1\t7\tOne.\n",
        SSVP,
        [ManifestRow(2, "clip1", "One.", 7)],
        id="ssvp-header-line-skipped",
    ),
    pytest.param(
        "clips.tsv",
        "name\tduration\ttranslation\nclip_a\t3.2\tFirst one.\nclip_b\t4.0\tSecond, one.\n",
        {"format": "tsv", "id_column": "name", "text_column": "translation"},
        [ManifestRow(2, "clip_a", "First one."), ManifestRow(3, "clip_b", "Second, one.")],
        id="generic-tsv",
    ),
    pytest.param(
        "clips.csv",
        'id,start,text\nx1,0.0,"Hello, world"\nx2,1.5,"She said ""no"", twice."\nx3,2.0,"Two\nlines"\n',
        {"format": "tsv", "id_column": "id", "text_column": "text"},
        [
            ManifestRow(2, "x1", "Hello, world"),
            ManifestRow(3, "x2", 'She said "no", twice.'),
            ManifestRow(4, "x3", "Two\nlines"),
        ],
        id="generic-comma-csv-quoted",
    ),
    pytest.param(
        "how2sign_realigned_test.csv",
        REALIGNED + _h2s("-fZc293MpJk", 0, 0.0, 2.5, "Hi, my name is Ana."),
        H2S,
        [ManifestRow(2, "-fZc293MpJk_0-8-rgb_front", "Hi, my name is Ana.")],
        id="how2sign-csv-that-is-tab-separated",
    ),
    pytest.param(
        "how2sign_realigned_val.csv",
        REALIGNED + _h2s("-fZc293MpJk", 1, 2.5, 4.0, "Today we'll make a 6\" pie, step by step."),
        {"format": "tsv", "id_column": "SENTENCE_NAME", "text_column": "SENTENCE"},
        [ManifestRow(2, "-fZc293MpJk_1-8-rgb_front", "Today we'll make a 6\" pie, step by step.")],
        id="how2sign-csv-read-as-tsv-stays-tab-separated",
    ),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "expected"), FORMATS)
def test_formats(tmp_path: Path, name: str, content: str, kwargs: dict[str, str], expected: list[ManifestRow]) -> None:
    path = _write(tmp_path, name, content)
    assert read_manifest(path, **kwargs) == expected  # type: ignore[arg-type]
    scan = scan_manifest(path, **kwargs)  # type: ignore[arg-type]
    assert scan.rows == expected and scan.problems == [] and scan.readable


ERRORS = [
    pytest.param(
        "m.csv",
        "VIDEO_ID,VIDEO_NAME,SENTENCE_ID,SENTENCE_NAME,START,END,SENTENCE\nv,v-1,v_0,v_0-1,0.0,1.0,Hi.\n",
        H2S,
        "header",
        ["looks comma-separated", "How2Sign manifests are tab-separated", "data.format: tsv"],
        id="comma-file-given-as-how2sign",
    ),
    pytest.param(
        "clips.tsv",
        "clip\tsentence\nx1\tHello.\n",
        {"format": "tsv", "id_column": "id", "text_column": "text"},
        "header",
        ["lacks the columns ['id', 'text']", "columns found: ['clip', 'sentence']", "data.id_column"],
        id="tsv-without-configured-columns",
    ),
    pytest.param(
        "train_features.tsv",
        "clip1\t12 frames\tOne.\n",
        SSVP,
        "row 1",
        ["length must be a non-negative integer", "'12 frames'", "'clip1'", "name<TAB>length<TAB>label"],
        id="ssvp-length-not-a-number",
    ),
    pytest.param(
        "train_features.tsv",
        "clip1\t7\tOne.\nclip2\t3.5\tTwo.\n",
        SSVP,
        "row 2",
        ["non-negative integer", "'3.5'"],
        id="ssvp-length-fraction",
    ),
    pytest.param(
        "train_features.tsv",
        "clip1\t-1\tOne.\n",
        SSVP,
        "row 1",
        ["length is -1", "get_feature_lengths.py", "re-extract"],
        id="ssvp-length-minus-one",
    ),
    pytest.param(
        "train_features.tsv",
        "clip1,7,One.\n",
        SSVP,
        "row 1",
        ["has 1 tab-separated field, but needs 3", "looks comma-separated", "no header"],
        id="ssvp-comma-separated",
    ),
    pytest.param("train_features.tsv", "clip1\t\tOne.\n", SSVP, "row 1", ["length must be"], id="ssvp-empty-length"),
    pytest.param(
        "train_features.tsv", "clip1\t7\t  \n", SSVP, "row 1", ["label is empty for id 'clip1'"], id="ssvp-no-label"
    ),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "where", "needles"), ERRORS)
def test_errors_name_file_row_value_and_fix(
    tmp_path: Path, name: str, content: str, kwargs: dict[str, str], where: str, needles: list[str]
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        read_manifest(path, **kwargs)  # type: ignore[arg-type]
    problem = err.value.problems[0]
    assert problem.where == f"{path}: {where}"
    assert problem.fix
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    scan = scan_manifest(path, **kwargs)  # type: ignore[arg-type]
    assert scan.problems[0].problem == problem  # the scan reports it without raising


def test_many_sentences_sharing_video_ids_is_said_first(tmp_path: Path) -> None:
    """60 sentences of 4 videos keyed on VIDEO_NAME: one message says what happened and the fix."""
    rows = "".join(
        _h2s(f"vid{v:02d}abcde", s, s, s + 0.9, f"Sentence {s} of video {v}.") for v in range(4) for s in range(15)
    )
    path = _write(tmp_path, "how2sign_realigned_train.csv", REALIGNED + rows)
    with pytest.raises(DataError) as err:
        read_manifest(path, format="how2sign", id_column="VIDEO_NAME", text_column="SENTENCE")
    head = err.value.problems[0]
    assert head.where == str(path)
    assert head.message.startswith("60 rows share 4 ids (column VIDEO_NAME): 60 different sentences, up to 15")
    assert "VIDEO_NAME names a whole How2Sign video" in head.message
    assert head.fix.startswith("key on SENTENCE_NAME")
    assert read_manifest(path, **H2S)[-1].id == "vid03abcde_14-8-rgb_front"  # keyed right, it reads


def test_scan_keeps_duplicate_rows_and_never_raises(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "m.csv", REALIGNED + _h2s("v", 0, 0, 1, "A.") + _h2s("v", 0, 1, 2, "B.") + _h2s("v", 1, 2, 3, "")
    )
    scan = scan_manifest(path, **H2S)  # type: ignore[arg-type]
    assert [r.row for r in scan.rows] == [2, 3]
    assert [(p.rule, p.row, p.id) for p in scan.problems] == [("empty-text", 4, "v_1-8-rgb_front")]
    missing = scan_manifest(tmp_path / "nope.csv", **H2S)  # type: ignore[arg-type]
    assert not missing.readable and missing.problems[0].rule == "manifest"


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_feature_files_are_found_by_id(tmp_path: Path, nested: bool, suffix: str) -> None:
    clip_id = "-fZc293MpJk_0-1-rgb_front"
    folder = tmp_path / "features" / (clip_id[:5] if nested else "")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{clip_id}{suffix}"
    if suffix == ".pt":
        torch.save(torch.ones(3, 4), path)
    else:
        np.save(path, np.ones((3, 4), np.float32))
    assert resolve_feature_path(tmp_path / "features", clip_id) == path
    assert resolve_feature_path(tmp_path / "features", "-fZc293MpJk_1-1-rgb_front") is None


TSV = {"format": "tsv", "id_column": "id", "text_column": "text"}


def test_raw_tsv_keeps_quotes_as_text(tmp_path: Path) -> None:
    # A hand-written TSV: a sentence may start with a quote, which must stay in the reference.
    path = _write(tmp_path, "m.tsv", 'id\ttext\na\t"Hi," he said.\nb\tShe said "no.\nc\tPlain.\n')
    assert [r.text for r in read_manifest(path, **TSV)] == ['"Hi," he said.', 'She said "no.', "Plain."]  # type: ignore[arg-type]


def test_quoted_tsv_is_unquoted_and_an_unclosed_quote_is_a_row_problem(tmp_path: Path) -> None:
    # Written by a CSV writer (quoted header): fields are unquoted; an unclosed quote that would
    # swallow every later row is reported at its row, never a traceback.
    good = _write(tmp_path, "q.tsv", '"id"\t"text"\n"a"\t"She said ""no""."\n')
    assert read_manifest(good, **TSV)[0].text == 'She said "no".'  # type: ignore[arg-type]
    bad = _write(tmp_path, "b.tsv", '"id"\t"text"\n"a"\t"fine"\n"b"\t"never closed\n' + "c\tx\n" * 3)
    import csv

    limit = csv.field_size_limit(20)  # the runaway field exceeds it at once
    try:
        scan = scan_manifest(bad, **TSV)  # type: ignore[arg-type]
    finally:
        csv.field_size_limit(limit)
    assert [r.id for r in scan.rows] == ["a"]
    (problem,) = scan.problems
    assert problem.rule == "fields" and problem.row == 3
    assert "cannot be parsed" in problem.problem.message and "quote" in problem.problem.fix
