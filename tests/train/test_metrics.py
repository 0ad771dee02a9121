from __future__ import annotations

import pytest
import sacrebleu

from signtune.train.metrics import corpus_scores

HYPS = ["the cat sat on the mat", "a dog barks at night", "hello there my friend"]
REFS = ["the cat sat on a mat", "the dog barks at night", "hello my good friend"]


def test_equals_sacrebleu() -> None:
    scores = corpus_scores(HYPS, REFS)
    expected = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert scores["bleu"] == pytest.approx(expected.score)
    assert [scores[f"precision{n}"] for n in range(1, 5)] == pytest.approx(expected.precisions)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "tok:13a" in str(scores["bleu_signature"])
    assert "case:mixed" in str(scores["bleu_signature"])
    assert str(scores["chrf_signature"]).startswith("nrefs:1")


def test_ngram_precisions_are_named_as_precisions_not_bleu_n() -> None:
    # sacrebleu's BLEUScore.precisions are modified n-gram precisions; BLEU-4 is their geometric
    # mean times the brevity penalty, so e.g. bleu 10.7 with precision4 2.26 is consistent, and a
    # key named ``bleu4`` holding 2.26 would be misread as a BLEU-4 score.
    scores = corpus_scores(HYPS, REFS)
    assert {"precision1", "precision2", "precision3", "precision4"} <= set(scores)
    assert not {"bleu1", "bleu2", "bleu3", "bleu4"} & set(scores)
    expected = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert scores["precision4"] == pytest.approx(expected.precisions[3])
    assert scores["bleu"] == pytest.approx(expected.score)
    assert scores["bleu"] != pytest.approx(scores["precision4"])


def test_perfect_match_is_100_on_a_0_to_100_scale() -> None:
    scores = corpus_scores(REFS, REFS)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    partial = corpus_scores(HYPS, REFS)["bleu"]
    assert isinstance(partial, float)
    assert 1.0 < partial < 100.0  # percent, not a fraction


def test_lowercase_and_tokenizer_are_passed_on() -> None:
    upper = [h.upper() for h in HYPS]
    assert corpus_scores(upper, REFS)["bleu"] == pytest.approx(0.0)
    lowered = corpus_scores(upper, REFS, lowercase=True, tokenize="intl")
    assert lowered["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="intl").score)
    assert "case:lc" in str(lowered["bleu_signature"])
    assert "tok:intl" in str(lowered["bleu_signature"])


def test_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="2 references"):
        corpus_scores(HYPS, REFS[:2])
    with pytest.raises(ValueError, match="empty"):
        corpus_scores([], [])
