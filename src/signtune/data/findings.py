"""What the data check returns: ``Finding`` s in a ``DataReport`` (the CLI renders it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from signtune.data.manifest import ManifestRow
from signtune.errors import Problem

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Finding:
    """One finding of the data check.

    Attributes:
        severity: ``error`` (the loader refuses the data), ``warning`` or ``info``.
        split: ``train``, ``val``, ``test``, or ``data`` for the whole data folder.
        rule: the rule's name, e.g. ``missing-feature``.
        where: the file (or folder) the finding is about.
        message: what was found, with the values.
        fix: what to do about it.
        rows: the manifest line numbers concerned (all of them).
        ids: the clip ids concerned (all of them).
    """

    severity: Severity
    split: str
    rule: str
    where: str
    message: str
    fix: str
    rows: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitSummary:
    """What was read of one split."""

    name: str
    manifest: str
    rows: int
    clips: int  # feature files read as (T, D)
    frames_median: float | None
    frames_max: int | None
    words_median: float | None


@dataclass
class DataReport:
    """The findings of ``check_data``: errors first, then warnings, then info."""

    root: Path
    findings: list[Finding] = field(default_factory=list)
    splits: list[SplitSummary] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def problems(self) -> list[Problem]:
        """The errors as ``Problem`` s, for a ``DataError``."""
        return [Problem(f.where, f.message, f.fix) for f in self.errors]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"root": str(self.root), **{k: v for k, v in asdict(self).items() if k != "root"}}


@dataclass
class CheckedSplit:
    """One split as the check read it: its rows (the first of each id) and clip lengths."""

    name: str
    manifest: Path
    rows: list[ManifestRow]
    frames: dict[str, int] = field(default_factory=dict)  # id -> T, for files read as (T, D)


def many(n: int, one: str, more: str) -> str:
    """``1 clip has`` / ``3 clips have``."""
    return f"{n} {one if n == 1 else more}"


def finding(
    severity: Severity, split: CheckedSplit, rule: str, rows: list[ManifestRow], message: str, fix: str
) -> Finding:
    """A finding about some rows of a split's manifest."""
    return Finding(
        severity,
        split.name,
        rule,
        str(split.manifest),
        message,
        fix,
        tuple(r.row for r in rows),
        (*(r.id for r in rows),),
    )
