"""Corpus translation scores from sacrebleu, with their signatures for the record."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


def corpus_scores(
    hyps: list[str],
    refs: list[str],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
) -> dict[str, float | str]:
    """Corpus BLEU-4 and chrF of ``hyps`` against one reference each.

    Args:
        hyps: detokenized hypotheses.
        refs: one reference per hypothesis, aligned by index.
        tokenize: sacrebleu's BLEU tokenizer (``13a``, ``intl``, ``none``...).
        lowercase: case-insensitive BLEU and chrF.

    Returns:
        ``bleu`` (corpus BLEU-4, 0-100), ``precision1`` .. ``precision4`` (BLEU's modified 1- to
        4-gram precisions, 0-100: ``BLEUScore.precisions``, not BLEU-1..4 scores), ``chrf``
        (0-100), ``bleu_signature`` and ``chrf_signature`` (sacrebleu's strings, to record with
        scores).

    Raises:
        ValueError: the lists are empty or of different lengths.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("no hypotheses to score: the split is empty")
    bleu = BLEU(tokenize=tokenize, lowercase=lowercase)
    chrf = CHRF(lowercase=lowercase)
    bleu_score = bleu.corpus_score(hyps, [refs])
    chrf_score = chrf.corpus_score(hyps, [refs])
    scores: dict[str, float | str] = {"bleu": float(bleu_score.score)}
    for n, precision in enumerate(bleu_score.precisions, start=1):
        scores[f"precision{n}"] = float(precision)  # n-gram precision, not a BLEU-n score
    scores["chrf"] = float(chrf_score.score)
    scores["bleu_signature"] = str(bleu.get_signature())
    scores["chrf_signature"] = str(chrf.get_signature())
    return scores
