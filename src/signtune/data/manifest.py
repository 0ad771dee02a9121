"""Manifest readers: How2Sign realigned/original CSVs (tab-separated) and generic TSV/CSV.

A manifest maps a clip id (the feature file's name) to its sentence. Every row problem is
reported at once, each with the file and the line number (the header is line 1).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from signtune.errors import DataError, Problem

MAX_PROBLEMS = 20
HOW2SIGN_REALIGNED = [
    "VIDEO_ID",
    "VIDEO_NAME",
    "SENTENCE_ID",
    "SENTENCE_NAME",
    "START_REALIGNED",
    "END_REALIGNED",
    "SENTENCE",
]
HOW2SIGN_ORIGINAL = ["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START", "END", "SENTENCE"]


@dataclass(frozen=True)
class ManifestRow:
    """One clip of a manifest.

    Attributes:
        row: the 1-based line number in the file (the header is line 1).
        id: the clip id, the stem of its feature file.
        text: the sentence, stripped of surrounding whitespace.
    """

    row: int
    id: str
    text: str


def capped(problems: list[Problem], where: str, limit: int = MAX_PROBLEMS) -> list[Problem]:
    """The first ``limit`` problems, then one that says how many more there are."""
    if len(problems) <= limit:
        return problems
    more = len(problems) - limit
    return [*problems[:limit], Problem(where, f"and {more} more problems like these")]


def read_manifest(
    path: Path,
    *,
    format: Literal["how2sign", "tsv"],
    id_column: str,
    text_column: str,
) -> list[ManifestRow]:
    """Read a manifest into rows of (line number, id, text).

    Args:
        path: the manifest file.
        format: ``how2sign`` reads a How2Sign CSV, which is tab-separated and unquoted (its
            sentences contain quotes); ``tsv`` reads a tab-separated file with a header, or a
            comma-separated one when the name ends with ``.csv`` and the header has no tab.
        id_column: the column holding the clip id (How2Sign: ``SENTENCE_NAME``).
        text_column: the column holding the sentence (How2Sign: ``SENTENCE``).

    Returns:
        The rows in file order; blank lines are skipped.

    Raises:
        DataError: the file is missing or unreadable, a column is missing, or rows have an
            empty id, an empty text or a duplicate id (all such rows at once).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(
            Problem(
                str(path),
                "the manifest does not exist",
                "check data.root and the manifest name, or generate the demo data with `study data synth --out DIR`",
            )
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            Problem(str(path), f"cannot be read as UTF-8 text: {exc}", "save the manifest as UTF-8")
        ) from exc

    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].strip():
        raise DataError(
            Problem(
                f"{path}: header",
                "the file is empty or its first line is blank",
                "put the column names on the first line",
            )
        )
    header_line = lines[0]
    comma = format == "tsv" and path.suffix.lower() == ".csv" and "\t" not in header_line
    if comma:
        reader = csv.reader(lines, delimiter=",")
    elif format == "how2sign":
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(lines, delimiter="\t")

    header = [c.strip() for c in next(reader)]
    missing = [c for c in (id_column, text_column) if c not in header]
    if missing:
        raise DataError(_missing_columns(path, format, header, header_line, missing))
    id_at, text_at = header.index(id_column), header.index(text_column)

    rows: list[ManifestRow] = []
    problems: list[Problem] = []
    first_row: dict[str, int] = {}
    repeats: dict[str, tuple[int, list[int]]] = {}  # id -> (its problem's index, the repeating rows)
    line_no = reader.line_num  # lines consumed so far; a record starts on the next one
    for record in reader:
        start, line_no = line_no + 1, reader.line_num
        if not record or all(not c.strip() for c in record):
            continue
        where = f"{path}: row {start}"
        if len(record) <= max(id_at, text_at):
            problems.append(
                Problem(
                    where,
                    f"has {len(record)} fields but the header has {len(header)}",
                    "give every row a value for every column"
                    + (" (separate them with tabs)" if format == "how2sign" else ""),
                )
            )
            continue
        clip_id, sentence = record[id_at].strip(), record[text_at].strip()
        if not clip_id:
            problems.append(
                Problem(where, f"{id_column} is empty", f"give every row an id in {id_column}, or delete the row")
            )
            continue
        if not sentence:
            problems.append(
                Problem(
                    where, f"{text_column} is empty for id {clip_id!r}", "give the row its sentence, or delete the row"
                )
            )
            continue
        if clip_id in first_row:
            if clip_id not in repeats:  # one problem per id, however many rows repeat it
                repeats[clip_id] = (len(problems), [])
                problems.append(
                    Problem(
                        where,
                        f"{id_column} {clip_id!r} is a duplicate of row {first_row[clip_id]}",
                        "give each clip a unique id, or delete one of the two rows",
                    )
                )
            repeats[clip_id][1].append(start)
            continue
        first_row[clip_id] = start
        rows.append(ManifestRow(row=start, id=clip_id, text=sentence))
    for clip_id, (at, again) in repeats.items():
        if len(again) > 1:
            shown = ", ".join(map(str, again[:10])) + (", ..." if len(again) > 10 else "")
            problems[at] = Problem(
                problems[at].where,
                f"{id_column} {clip_id!r} is a duplicate of row {first_row[clip_id]}, "
                f"repeated in {len(again)} rows ({shown})",
                "give each clip a unique id, or delete the repeated rows",
            )
    if problems:
        raise DataError(capped(problems, str(path)))
    return rows


def _missing_columns(path: Path, format: str, header: list[str], header_line: str, missing: list[str]) -> Problem:
    message = f"lacks the column{'s' if len(missing) > 1 else ''} {missing}; columns found: {header}"
    if format == "how2sign":
        fix = (
            "set data.id_column / data.text_column to columns of this file; How2Sign "
            f"manifests have {HOW2SIGN_REALIGNED} or, in the original release, START/END"
        )
        if "\t" not in header_line and "," in header_line:
            message += " (the header has commas but no tab: the file looks comma-separated)"
            fix = (
                "How2Sign manifests are tab-separated: re-save it with tabs, or set "
                "data.format: tsv to read a comma-separated .csv"
            )
    else:
        fix = "set data.id_column / data.text_column to columns of this file"
        if "\t" not in header_line and "," in header_line and path.suffix.lower() != ".csv":
            message += " (the header has commas but no tab: the file looks comma-separated)"
            fix = "name the file *.csv to read it as comma-separated, or re-save it with tabs"
    return Problem(f"{path}: header", message, fix)
