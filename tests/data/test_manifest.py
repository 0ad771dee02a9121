"""Manifest formats and every row problem, one row per case."""

from __future__ import annotations

from pathlib import Path

import pytest

from signtune.data.manifest import ManifestRow, read_manifest
from signtune.errors import DataError

REALIGNED = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
ORIGINAL = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART\tEND\tSENTENCE\n"


def _h2s_row(k: int, text: str) -> str:
    return f"vid\tvid-1-rgb_front\tvid_{k}\tvid_{k}-1-rgb_front\t1.00\t2.50\t{text}\n"


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


H2S = {"format": "how2sign", "id_column": "SENTENCE_NAME", "text_column": "SENTENCE"}


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "expected"),
    [
        pytest.param(
            "m.csv",
            REALIGNED + _h2s_row(0, 'He said "hi", then left.') + _h2s_row(1, "It's 'fine'  "),
            H2S,
            [
                ManifestRow(2, "vid_0-1-rgb_front", 'He said "hi", then left.'),
                ManifestRow(3, "vid_1-1-rgb_front", "It's 'fine'"),
            ],
            id="how2sign-realigned-quotes-kept",
        ),
        pytest.param(
            "m.csv",
            ORIGINAL + _h2s_row(0, "Hello there."),
            H2S,
            [ManifestRow(2, "vid_0-1-rgb_front", "Hello there.")],
            id="how2sign-original-start-end",
        ),
        pytest.param(
            "m.csv",
            REALIGNED + _h2s_row(0, "One.") + "\n" + _h2s_row(1, "Two."),
            H2S,
            [ManifestRow(2, "vid_0-1-rgb_front", "One."), ManifestRow(4, "vid_1-1-rgb_front", "Two.")],
            id="blank-line-skipped-rows-are-line-numbers",
        ),
        pytest.param(
            "m.csv",
            "\ufeff" + REALIGNED + _h2s_row(0, "Bom."),
            H2S,
            [ManifestRow(2, "vid_0-1-rgb_front", "Bom.")],
            id="utf8-bom",
        ),
        pytest.param(
            "m.tsv",
            "name\tduration\ttranslation\na\t3\tFirst one.\nb\t4\tSecond, one.\n",
            {"format": "tsv", "id_column": "name", "text_column": "translation"},
            [ManifestRow(2, "a", "First one."), ManifestRow(3, "b", "Second, one.")],
            id="generic-tsv",
        ),
        pytest.param(
            "m.csv",
            'id,text\nx1,"Hello, world"\nx2,Plain\n',
            {"format": "tsv", "id_column": "id", "text_column": "text"},
            [ManifestRow(2, "x1", "Hello, world"), ManifestRow(3, "x2", "Plain")],
            id="comma-csv",
        ),
        pytest.param(
            "m.csv",
            "id\ttext\nx1\tHas, commas\n",
            {"format": "tsv", "id_column": "id", "text_column": "text"},
            [ManifestRow(2, "x1", "Has, commas")],
            id="tab-separated-csv-name",
        ),
    ],
)
def test_formats(tmp_path: Path, name: str, content: str, kwargs: dict[str, str], expected: list[ManifestRow]) -> None:
    assert read_manifest(_write(tmp_path, name, content), **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "where", "needles"),
    [
        pytest.param(
            "m.csv",
            "VIDEO_ID\tSENTENCE\nv\tHi.\n",
            H2S,
            "header",
            ["lacks the column ['SENTENCE_NAME']", "columns found: ['VIDEO_ID', 'SENTENCE']"],
            id="missing-column",
        ),
        pytest.param(
            "m.csv",
            "VIDEO_ID,SENTENCE_NAME,SENTENCE\nv,v_0,Hi.\n",
            H2S,
            "header",
            ["looks comma-separated", "data.format: tsv"],
            id="comma-file-read-as-how2sign",
        ),
        pytest.param(
            "m.csv",
            REALIGNED + _h2s_row(0, "A.") + _h2s_row(1, "B.") + _h2s_row(0, "C."),
            H2S,
            "row 4",
            ["duplicate of row 2", "vid_0-1-rgb_front"],
            id="duplicate-id",
        ),
        pytest.param(
            "m.csv",
            REALIGNED + _h2s_row(0, "A.") + _h2s_row(1, "   "),
            H2S,
            "row 3",
            ["SENTENCE is empty", "vid_1-1-rgb_front"],
            id="empty-text",
        ),
        pytest.param(
            "m.tsv",
            "id\ttext\n\tHello.\n",
            {"format": "tsv", "id_column": "id", "text_column": "text"},
            "row 2",
            ["id is empty"],
            id="empty-id",
        ),
        pytest.param(
            "m.csv",
            REALIGNED + "vid\tvid-1-rgb_front\n",
            H2S,
            "row 2",
            ["has 2 fields but the header has 7"],
            id="short-row",
        ),
        pytest.param("m.csv", "", H2S, "header", ["empty"], id="empty-file"),
    ],
)
def test_errors(
    tmp_path: Path, name: str, content: str, kwargs: dict[str, str], where: str, needles: list[str]
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        read_manifest(path, **kwargs)  # type: ignore[arg-type]
    problem = err.value.problems[0]
    assert problem.where == f"{path}: {where}"
    assert problem.fix
    for needle in needles:
        assert needle in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        read_manifest(tmp_path / "nope.csv", **H2S)  # type: ignore[arg-type]
    assert "study data synth" in err.value.problems[0].fix


def test_all_row_problems_at_once_and_capped(tmp_path: Path) -> None:
    body = "".join(_h2s_row(k, "") for k in range(30)) + _h2s_row(0, "dup")
    path = _write(tmp_path, "m.csv", REALIGNED + _h2s_row(0, "ok") + body)
    with pytest.raises(DataError) as err:
        read_manifest(path, **H2S)  # type: ignore[arg-type]
    problems = err.value.problems
    assert len(problems) == 21
    assert problems[0].where == f"{path}: row 3"
    assert problems[-1].message == "and 11 more problems like these"
