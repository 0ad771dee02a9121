"""Manifest readers: How2Sign realigned/original CSVs (tab-separated), SSVP-SLT TSVs, generic TSV/CSV.

A manifest maps a clip id (the feature file's name) to its sentence. ``scan_manifest`` reads a
file into its rows and every problem found, and never raises; ``read_manifest`` (the loader's
entry point) raises them all at once, each with the file and the line number. Line numbers are
1-based: in a file with a header the header is line 1; SSVP-SLT files have no header.

Size: a little past 400 lines: the three manifest formats share one row type, one problem
list and the line numbering, which a split would duplicate.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from signtune.errors import DataError, Problem

Format = Literal["how2sign", "tsv", "ssvp"]
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
PER_VIDEO_COLUMNS = ("VIDEO_ID", "VIDEO_NAME")  # How2Sign columns that name a whole video, not a sentence
SSVP_COLUMNS = ["name", "length", "label"]  # SSVP-SLT feature manifests: no header, these three fields
SSVP_HEADER_WORDS = {"length", "duration", "frames", "n_frames", "num_frames", "nframes", "len"}
SSVP_NAME_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".pt", ".npy")  # SSVP strips a name's extension
SHARED_MIN_ROWS = 10  # rows with another sentence under an already used id before it is "many"...
SHARED_MIN_SHARE = 0.05  # ...and this share of all rows


@dataclass(frozen=True)
class ManifestRow:
    """One clip of a manifest.

    Attributes:
        row: the 1-based line number in the file (with a header, the header is line 1).
        id: the clip id, the stem of its feature file.
        text: the sentence, stripped of surrounding whitespace.
        length: the number of feature frames the manifest declares (SSVP-SLT), else None.
    """

    row: int
    id: str
    text: str
    length: int | None = None


@dataclass(frozen=True)
class RowProblem:
    """A problem of a manifest, tagged with its rule so the data check can group it.

    ``rule`` is one of ``manifest`` (missing or unreadable file), ``header`` (empty file or
    missing columns), ``fields``, ``empty-id``, ``empty-text`` or ``length-field``; ``row`` is
    None for the first two, which leave no rows to read.
    """

    rule: str
    problem: Problem
    row: int | None = None
    id: str = ""


@dataclass(frozen=True)
class ManifestScan:
    """A manifest as read: every well-formed row (duplicate ids included) and every problem."""

    path: Path
    format: Format
    id_column: str
    text_column: str
    columns: list[str]
    rows: list[ManifestRow]
    problems: list[RowProblem]

    @property
    def readable(self) -> bool:
        """False when the file or its header is unusable, so ``rows`` is empty."""
        return not any(p.rule in ("manifest", "header") for p in self.problems)


@dataclass(frozen=True)
class SharedIds:
    """The ids that more than one row of a manifest uses.

    Attributes:
        groups: id -> its rows in file order, for each id with two rows or more.
        n_rows: how many rows the manifest has.
    """

    groups: dict[str, list[ManifestRow]]
    n_rows: int

    @property
    def rows(self) -> list[int]:
        """Line numbers of every row whose id another row also has."""
        return sorted(r.row for group in self.groups.values() for r in group)

    @property
    def other_sentences(self) -> int:
        """Rows that hold another sentence than the first row of their id."""
        return sum(1 for g in self.groups.values() for r in g[1:] if r.text != g[0].text)

    @property
    def many(self) -> bool:
        """Many different sentences share ids: the manifest is keyed on the wrong column."""
        return self.other_sentences >= max(SHARED_MIN_ROWS, SHARED_MIN_SHARE * self.n_rows)


def capped(problems: list[Problem], where: str, limit: int = MAX_PROBLEMS) -> list[Problem]:
    """The first ``limit`` problems, then one that says how many more there are."""
    if len(problems) <= limit:
        return problems
    more = len(problems) - limit
    return [*problems[:limit], Problem(where, f"and {more} more problems like these")]


def column_names(format: Format, id_column: str, text_column: str) -> tuple[str, str]:
    """How messages name the id and text columns (SSVP-SLT files have no header)."""
    return ("name", "label") if format == "ssvp" else (id_column, text_column)


def scan_manifest(path: Path, *, format: Format, id_column: str, text_column: str) -> ManifestScan:
    """Read a manifest into its rows and every problem found, without raising.

    Args:
        path: the manifest file.
        format: ``how2sign`` reads a How2Sign CSV, which is tab-separated and unquoted (its
            sentences contain quotes); ``tsv`` reads a tab-separated file with a header, or a
            comma-separated one when the name ends with ``.csv`` and the header has no tab;
            ``ssvp`` reads an SSVP-SLT feature manifest: no header, each line
            ``name<TAB>length<TAB>label`` (a header line or a first line holding a root folder,
            as in fairseq manifests, is skipped; a ``.mp4``/``.pt``/``.npy`` suffix is dropped
            from the name, as SSVP-SLT does).
        id_column: the column holding the clip id (How2Sign: ``SENTENCE_NAME``); unused for ssvp.
        text_column: the column holding the sentence (How2Sign: ``SENTENCE``); unused for ssvp.

    Returns:
        Every well-formed row in file order (blank lines skipped, duplicate ids kept) and the
        problems of the file, its header and its other rows.
    """
    path = Path(path)

    def scan(columns: list[str], rows: list[ManifestRow], problems: list[RowProblem]) -> ManifestScan:
        return ManifestScan(path, format, id_column, text_column, columns, rows, problems)

    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        fix = "check data.root and the manifest name, or generate the demo data with `study data synth --out DIR`"
        return scan([], [], [RowProblem("manifest", Problem(str(path), "the manifest does not exist", fix))])
    except (OSError, UnicodeDecodeError) as exc:
        unreadable = Problem(str(path), f"cannot be read as UTF-8 text: {exc}", "save the manifest as UTF-8")
        return scan([], [], [RowProblem("manifest", unreadable)])

    lines = text.splitlines(keepends=True)
    if format == "ssvp":
        return scan(list(SSVP_COLUMNS), *_scan_ssvp(path, lines))
    if not lines or not lines[0].strip():
        empty = Problem(
            f"{path}: header", "the file is empty or its first line is blank", "put the column names on the first line"
        )
        return scan([], [], [RowProblem("header", empty)])
    header_line = lines[0]
    if format == "tsv" and path.suffix.lower() == ".csv" and "\t" not in header_line:
        reader = csv.reader(lines, delimiter=",")
    elif format == "how2sign" or not header_line.lstrip().startswith('"'):
        # Tab-separated text is raw (How2Sign's sentences hold quotes): a quote is just a
        # character, never the start of a field that may run over lines and swallow rows.
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:  # a quoted header: written by a CSV writer (e.g. pandas) that quotes fields
        reader = csv.reader(lines, delimiter="\t")

    header = [c.strip() for c in next(reader)]
    missing = [c for c in (id_column, text_column) if c not in header]
    if missing:
        return scan(header, [], [RowProblem("header", _missing_columns(path, format, header, header_line, missing))])
    id_at, text_at = header.index(id_column), header.index(text_column)

    rows: list[ManifestRow] = []
    problems: list[RowProblem] = []
    line_no = reader.line_num  # lines consumed so far; a record starts on the next one
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a quote opened and never closed, running to the end
            where = Problem(
                f"{path}: row {line_no + 1}",
                f"cannot be parsed ({exc}); the rows from here on were not read",
                'close the quoted field, or write a quote inside a quoted field as ""',
            )
            problems.append(RowProblem("fields", where, line_no + 1))
            break
        start, line_no = line_no + 1, reader.line_num
        if not record or all(not c.strip() for c in record):
            continue
        if len(record) <= max(id_at, text_at):
            fix = "give every row a value for every column" + (
                " (separate them with tabs)" if format == "how2sign" else ""
            )
            message = f"has {len(record)} fields but the header has {len(header)}"
            problems.append(RowProblem("fields", Problem(f"{path}: row {start}", message, fix), start))
            continue
        row, problem = _row(path, start, record[id_at], record[text_at], None, id_column, text_column)
        if problem is not None:
            problems.append(problem)
        if row is not None:
            rows.append(row)
    return scan(header, rows, problems)


def _row(
    path: Path, line: int, clip_id: str, sentence: str, length: int | None, id_name: str, text_name: str
) -> tuple[ManifestRow | None, RowProblem | None]:
    """A row, or the problem that keeps it out: an empty id or an empty sentence."""
    clip_id, sentence = clip_id.strip(), sentence.strip()
    where = f"{path}: row {line}"
    if not clip_id:
        fix = f"give every row an id in {id_name}, or delete the row"
        return None, RowProblem("empty-id", Problem(where, f"{id_name} is empty", fix), line)
    if not sentence:
        message = f"{text_name} is empty for id {clip_id!r}"
        problem = Problem(where, message, "give the row its sentence, or delete the row")
        return None, RowProblem("empty-text", problem, line, clip_id)
    return ManifestRow(row=line, id=clip_id, text=sentence, length=length), None


def _scan_ssvp(path: Path, lines: list[str]) -> tuple[list[ManifestRow], list[RowProblem]]:
    rows: list[ManifestRow] = []
    problems: list[RowProblem] = []
    first = True
    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t", 2)  # a tab inside the label stays in the label
        if first:
            first = False
            if len(fields) == 1 and ("/" in line or "\\" in line):
                continue  # a fairseq-style first line naming the root folder
            if len(fields) == 3 and fields[1].strip().lower() in SSVP_HEADER_WORDS:
                continue  # a header line, though SSVP-SLT writes none
        where = f"{path}: row {line_no}"
        if len(fields) < 3:
            message = f"has {len(fields)} tab-separated field{'s' if len(fields) != 1 else ''}, but needs 3"
            if "," in line:
                message += " (the line has commas but no tab: the file looks comma-separated)"
            fix = "write each line as name<TAB>length<TAB>label (SSVP-SLT feature manifests have no header)"
            problems.append(RowProblem("fields", Problem(where, message, fix), line_no))
            continue
        name, length_text, label = (f.strip() for f in fields)
        name = _drop_suffix(name)
        length = _parse_length(length_text)
        if length is None and name:
            problems.append(RowProblem("length-field", _length_problem(where, name, length_text), line_no, name))
        row, problem = _row(path, line_no, name, label, length, "name", "label")
        if problem is not None:
            problems.append(problem)
        if row is not None and length is not None:
            rows.append(row)
    return rows, problems


def _drop_suffix(name: str) -> str:
    for suffix in SSVP_NAME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _parse_length(text: str) -> int | None:
    """A non-negative integer; ``123.0`` is accepted, as SSVP-SLT reads ``int(float(length))``."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def _length_problem(where: str, name: str, text: str) -> Problem:
    if text.strip() in ("-1", "-1.0"):
        return Problem(
            where,
            f"length is -1 for id {name!r}: SSVP-SLT's get_feature_lengths.py writes -1 when it could not "
            "read the clip's feature file",
            "re-extract the clip's features and rerun get_feature_lengths.py, or delete the row",
        )
    return Problem(
        where,
        f"length must be a non-negative integer (the clip's number of feature frames), but got {text!r} "
        f"for id {name!r}",
        "write each line as name<TAB>length<TAB>label, length being T of the clip's (T, D) features "
        "(SSVP-SLT's get_feature_lengths.py writes it)",
    )


def shared_ids(rows: Iterable[ManifestRow]) -> SharedIds:
    """The ids used by more than one row."""
    by_id: dict[str, list[ManifestRow]] = {}
    n = 0
    for r in rows:
        by_id.setdefault(r.id, []).append(r)
        n += 1
    return SharedIds({k: v for k, v in by_id.items() if len(v) > 1}, n)


def keyed_on_videos(scan: ManifestScan, shared: SharedIds) -> bool:
    """Whether the ids name videos rather than sentences: many sentences share ids, or any do
    under How2Sign's VIDEO_ID/VIDEO_NAME."""
    per_video = scan.format != "ssvp" and scan.id_column in PER_VIDEO_COLUMNS
    return shared.many or (per_video and shared.other_sentences > 0)


def shared_ids_problem(scan: ManifestScan, shared: SharedIds) -> Problem:
    """The one message for a manifest whose ids hold many different sentences each."""
    id_name, _ = column_names(scan.format, scan.id_column, scan.text_column)
    biggest_id, biggest = max(shared.groups.items(), key=lambda kv: len(kv[1]))
    shown = ", ".join(str(r.row) for r in biggest[:5]) + (", ..." if len(biggest) > 5 else "")
    sentences = len({r.text for g in shared.groups.values() for r in g})
    message = (
        f"{len(shared.rows)} rows share {len(shared.groups)} ids (column {id_name}): {sentences} different "
        f"sentences, up to {len(biggest)} under one id ({biggest_id!r} on rows {shown}); every sentence of an "
        "id would train on the same feature file"
    )
    if scan.format != "ssvp" and scan.id_column in PER_VIDEO_COLUMNS:
        message += f". {scan.id_column} names a whole How2Sign video, not one sentence"
    if scan.format == "how2sign":
        fix = "key on SENTENCE_NAME (data.id_column: SENTENCE_NAME), with one feature file per sentence"
    elif scan.format == "ssvp":
        fix = "give every sentence its own name and feature file (How2Sign: key on SENTENCE_NAME)"
    else:
        fix = "set data.id_column to a column with one id per sentence (How2Sign: key on SENTENCE_NAME)"
    return Problem(str(scan.path), message, fix)


def duplicate_problems(scan: ManifestScan, shared: SharedIds) -> list[RowProblem]:
    """One problem per repeated id, at its first repeating row."""
    id_name, _ = column_names(scan.format, scan.id_column, scan.text_column)
    out = []
    for clip_id, group in shared.groups.items():
        first, again = group[0].row, [r.row for r in group[1:]]
        message = f"{id_name} {clip_id!r} is a duplicate of row {first}"
        fix = "give each clip a unique id, or delete one of the two rows"
        if len(again) > 1:
            shown = ", ".join(map(str, again[:10])) + (", ..." if len(again) > 10 else "")
            message += f", repeated in {len(again)} rows ({shown})"
            fix = "give each clip a unique id, or delete the repeated rows"
        out.append(RowProblem("duplicate-id", Problem(f"{scan.path}: row {again[0]}", message, fix), again[0], clip_id))
    return out


def read_manifest(path: Path, *, format: Format, id_column: str, text_column: str) -> list[ManifestRow]:
    """Read a manifest into rows of (line number, id, text), refusing any problem.

    Args:
        path: the manifest file.
        format: ``how2sign``, ``tsv`` or ``ssvp``; see ``scan_manifest``.
        id_column: the column holding the clip id (How2Sign: ``SENTENCE_NAME``).
        text_column: the column holding the sentence (How2Sign: ``SENTENCE``).

    Returns:
        The rows in file order; blank lines are skipped.

    Raises:
        DataError: the file is missing or unreadable, a column is missing, or rows are short,
            have an empty id or text, a bad SSVP-SLT length or a duplicate id (all at once; when
            many sentences share ids, one problem says so first).
    """
    scan = scan_manifest(path, format=format, id_column=id_column, text_column=text_column)
    if not scan.readable:
        raise DataError([p.problem for p in scan.problems])
    shared = shared_ids(scan.rows)
    found = sorted([*scan.problems, *duplicate_problems(scan, shared)], key=lambda p: p.row or 0)
    problems = [p.problem for p in found]
    if shared.groups and keyed_on_videos(scan, shared):
        problems.insert(0, shared_ids_problem(scan, shared))
    if problems:
        raise DataError(capped(problems, str(scan.path)))
    return scan.rows


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
