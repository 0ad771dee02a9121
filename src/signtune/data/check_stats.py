"""The data check's warnings on lengths and words: outliers, overlap, vocabulary, decoding length.

Robust bounds use a split's median and MAD (scaled by 1.4826 to estimate a standard deviation,
and floored at 1 so that equal lengths flag nothing); they need ``MIN_CLIPS_FOR_STATS`` clips.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from signtune.data.findings import CheckedSplit, Finding, finding, many
from signtune.data.manifest import ManifestRow
from signtune.data.types import TextTokenizer

OUTLIER_MADS = 6.0  # beyond median + 6 MADs is an outlier
MAD_SCALE = 1.4826
SHORT_RATIO = 4.0  # fewer frames per word than median / 4 is suspicious
OOV_WARN = 0.10  # an out-of-vocabulary word rate above this is a warning, below it info
MAX_LEN_PERCENTILE = 99  # eval.max_len should let this share of a split's references be decoded whole
MIN_CLIPS_FOR_STATS = 20
EXAMPLES = 3
_WORD = re.compile(r"[\w']+")


def robust_bound(values: list[float]) -> float:
    """median + ``OUTLIER_MADS`` scaled MADs (the MAD floored at 1)."""
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    return median + OUTLIER_MADS * max(MAD_SCALE * mad, 1.0)


def words(text: str) -> int:
    """The number of whitespace-separated words."""
    return len(text.split())


def length_findings(split: CheckedSplit, *, max_frames: int, id_name: str) -> list[Finding]:
    """``length-mismatch``, ``truncated``, ``long-clip``, ``short-clip`` and ``long-text`` of a split.

    Args:
        split: the split's rows and the frame counts of its readable feature files.
        max_frames: ``data.max_frames``; longer clips are truncated by the loader.
        id_name: how messages name the id column.
    """
    out: list[Finding] = []
    clips = [r for r in split.rows if split.frames.get(r.id)]  # read, with frames
    frames = {r.id: split.frames[r.id] for r in clips}

    def warn(rule: str, rows: list[ManifestRow], message: str, fix: str) -> None:
        if rows:
            out.append(finding("warning", split, rule, rows, message, fix))

    bad = [r for r in clips if r.length is not None and r.length != frames[r.id]]
    if bad:
        r = bad[0]
        warn(
            "length-mismatch",
            bad,
            f"{many(len(bad), 'row declares', 'rows declare')} a length other than the feature file's frame "
            f"count; e.g. row {r.row} ({id_name} {r.id!r}): length {r.length}, file {frames[r.id]} frames",
            "regenerate the lengths from these features (SSVP-SLT's get_feature_lengths.py), or check that "
            "data.features_dir is the extraction the manifest was made from",
        )
    over = [r for r in clips if frames[r.id] > max_frames]
    if over:
        warn(
            "truncated",
            over,
            f"{many(len(over), 'clip has', 'clips have')} more than data.max_frames = {max_frames} frames "
            f"(up to {max(frames[r.id] for r in over)}) and will be truncated",
            "raise data.max_frames (and model.max_positions) to keep them whole, or accept the truncation",
        )
    if len(clips) >= MIN_CLIPS_FOR_STATS:
        bound = robust_bound([float(frames[r.id]) for r in clips])
        long = [r for r in clips if frames[r.id] > bound]
        if long:
            r = max(long, key=lambda x: frames[x.id])
            warn(
                "long-clip",
                long,
                f"{many(len(long), 'clip is a length outlier', 'clips are length outliers')} (more than "
                f"{bound:.0f} frames, the median + {OUTLIER_MADS:g} MADs); the longest: row {r.row}, "
                f"{frames[r.id]} frames",
                "check these clips' start/end times; a misaligned clip holds other sentences' signing",
            )
        ratios = {r.id: frames[r.id] / max(1, words(r.text)) for r in clips}
        floor = statistics.median(ratios.values()) / SHORT_RATIO
        short = [r for r in clips if ratios[r.id] < floor]
        if short:
            r = min(short, key=lambda x: ratios[x.id])
            warn(
                "short-clip",
                short,
                f"{many(len(short), 'clip has', 'clips have')} fewer than {floor:.2f} frames per word (a quarter "
                f"of the split's median); e.g. row {r.row}: {frames[r.id]} frames for {words(r.text)} words",
                "check these clips' start/end times and feature extraction, or drop them",
            )
    if len(split.rows) >= MIN_CLIPS_FOR_STATS:
        bound = robust_bound([float(words(r.text)) for r in split.rows])
        wordy = [r for r in split.rows if words(r.text) > bound]
        if wordy:
            r = max(wordy, key=lambda x: words(x.text))
            warn(
                "long-text",
                wordy,
                f"{many(len(wordy), 'sentence is', 'sentences are')} longer than {bound:.0f} words (the median + "
                f"{OUTLIER_MADS:g} MADs); the longest: row {r.row}, {words(r.text)} words",
                "check that these rows hold one sentence each",
            )
    return out


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _vocab(texts: Iterable[str]) -> set[str]:
    return {w for t in texts for w in _WORD.findall(t.casefold())}


def cross_split_findings(train: CheckedSplit, others: list[CheckedSplit]) -> list[Finding]:
    """``overlap``, ``cross-split-id`` and ``vocab`` of each of ``others`` against ``train``."""
    out: list[Finding] = []
    sentences = {_norm(r.text) for r in train.rows}
    ids = {r.id for r in train.rows}
    vocab = _vocab(r.text for r in train.rows)
    for split in others:
        name, n = split.name, len(split.rows)
        same = [r for r in split.rows if _norm(r.text) in sentences]
        if same:
            shown = "; ".join(f"{r.text!r} (row {r.row})" for r in same[:EXAMPLES])
            out.append(
                finding(
                    "warning",
                    split,
                    "overlap",
                    same,
                    f"{len(same)} of {n} {name} sentences {'appears' if len(same) == 1 else 'appear'} in train "
                    f"too (lowercased, spaces collapsed); e.g. {shown}",
                    f"expected for stock phrases; otherwise keep each sentence in one split, or the {name} BLEU "
                    "overstates what the model learned",
                )
            )
        both = [r for r in split.rows if r.id in ids]
        if both:
            out.append(
                finding(
                    "warning",
                    split,
                    "cross-split-id",
                    both,
                    f"{len(both)} of {n} {name} ids {'is' if len(both) == 1 else 'are'} also train ids, so the "
                    "same feature file is in both "
                    f"splits; e.g. row {both[0].row}: {both[0].id!r}",
                    "keep each clip in one split",
                )
            )
        tokens = [(r, _WORD.findall(r.text.casefold())) for r in split.rows]
        total = sum(len(t) for _, t in tokens)
        oov = [w for _, t in tokens for w in t if w not in vocab]
        rate = len(oov) / total if total else 0.0
        types = list(dict.fromkeys(oov))
        examples = f", e.g. {', '.join(repr(w) for w in types[:EXAMPLES])}" if types else ""
        high = rate > OOV_WARN
        out.append(
            finding(
                "warning" if high else "info",
                split,
                "vocab",
                [r for r, t in tokens if any(w not in vocab for w in t)],
                f"train vocabulary {len(vocab)} words; {len(oov)} of {total} {name} words ({rate:.1%}) are not "
                f"in it ({len(types)} distinct{examples})",
                f"above {OOV_WARN:.0%}: check that {name} is the same language, casing and domain as train"
                if high
                else "",
            )
        )
    return out


@dataclass(frozen=True)
class DecodeLimit:
    """``eval.max_len`` as a study sets it, for the ``max-len`` rule.

    Attributes:
        value: the most tokens decoded per sentence, EOS included.
        origin: ``default`` (the trainer's), ``fixed`` (the spec's ``fixed:`` block) or
            ``searched`` (``value`` is the smallest the search space can give it).
    """

    value: int
    origin: Literal["default", "fixed", "searched"] = "default"


def max_len_findings(
    split: CheckedSplit, tokenizer: TextTokenizer, limit: DecodeLimit, *, tokenizer_name: str
) -> list[Finding]:
    """``max-len``: the references of ``split`` longer than ``limit.value`` tokens of ``tokenizer``.

    Their hypotheses are cut at ``eval.max_len`` tokens, so the split's BLEU is capped. The fix
    names the split's 99th-percentile length plus EOS; when fewer than 1% are longer (that
    value is no raise), the finding is info and names the longest instead.
    """
    texts = [r.text for r in split.rows]
    encode_batch = getattr(tokenizer, "encode_batch", None)
    encoded = encode_batch(texts) if callable(encode_batch) else [tokenizer.encode(t) for t in texts]
    counts = [len(ids) for ids in encoded]
    over = [(r, n) for r, n in zip(split.rows, counts, strict=True) if n > limit.value]
    if not over:
        return []
    r, longest = max(over, key=lambda x: x[1])
    p99 = math.ceil(float(np.percentile(counts, MAX_LEN_PERCENTILE)))
    origin = {
        "default": "the trainer default",
        "fixed": "fixed in study.yaml",
        "searched": "the smallest value the search space gives it",
    }[limit.origin]
    message = (
        f"{len(over)} of {len(counts)} {split.name} references {'is' if len(over) == 1 else 'are'} longer than "
        f"eval.max_len = {limit.value} tokens ({origin}), counted with the study's tokenizer ({tokenizer_name}); "
        f"their hypotheses are cut at {limit.value} tokens, which lowers {split.name} BLEU; the longest: "
        f"row {r.row}, {longest} tokens"
    )
    rows = [row for row, _ in over]
    if p99 + 1 <= limit.value:
        fix = (
            f"fewer than 1% are longer; eval.max_len: {longest + 1} would decode even the longest whole "
            "(decoding is slower the longer it may run)"
        )
        return [finding("info", split, "max-len", rows, message, fix)]
    target = p99 + 1  # eval.max_len counts the EOS token too
    where = (
        f"raise the lowest eval.max_len of the search space to {target}"
        if limit.origin == "searched"
        else f"`fixed: {{eval.max_len: {target}}}` in study.yaml"
    )
    fix = (
        f"raise eval.max_len to the {split.name} split's {MAX_LEN_PERCENTILE}th percentile "
        f"({p99} tokens, plus EOS): {where}"
    )
    return [finding("warning", split, "max-len", rows, message, fix)]
