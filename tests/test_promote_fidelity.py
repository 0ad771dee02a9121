"""promote-best's fidelity check: a tie-aware Spearman and notes that never overclaim."""

from __future__ import annotations

import math
from typing import Any

import pytest

from signtune.promote import MIN_FIDELITY_CONFIGS, Candidate, _average_ranks, _fidelity, _spearman


def cands(pairs: list[tuple[float, float]], seeds: int = 1) -> list[Candidate]:
    """One candidate per (subset value, full-data value) pair, trial numbers 0, 1, ..."""
    return [
        Candidate(trial=t, seed=s, subset_value=sub, value=full)
        for t, (sub, full) in enumerate(pairs)
        for s in range(seeds)
    ]


def test_average_ranks_share_ties() -> None:
    assert _average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]) == [3.0, 0.0, 3.0, 1.0, 3.0]
    assert _average_ranks([5.0, 5.0]) == [0.5, 0.5]
    assert _average_ranks([2.0, 1.0, 0.0]) == [2.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]),
        ([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]),  # a tie on one side
        ([0.0, 0.0, 1.0, 2.0, 2.0], [3.0, 1.0, 1.0, 5.0, 4.0]),  # ties on both sides
        ([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]),
    ],
)
def test_spearman_matches_scipy_with_ties(a: list[float], b: list[float]) -> None:
    stats = pytest.importorskip("scipy.stats")
    assert _spearman(a, b) == pytest.approx(float(stats.spearmanr(a, b).statistic))


def test_spearman_is_undefined_without_variance() -> None:
    assert _spearman([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]) is None  # the bug: this used to read as 1.00
    assert _spearman([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) is None
    assert _spearman([1.0, 2.0, 3.0], [7.0, 7.0, 7.0]) is None
    assert _spearman([1.0], [2.0]) is None


def test_all_tied_values_are_not_reported_as_agreement() -> None:
    rho, note = _fidelity(cands([(0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]), 1, subset=0.3)
    assert rho is None
    assert "cannot be judged" in note and "all values equal" in note
    assert "1.00" not in note and "ranked the configs like full data" not in note


def test_agreement_and_disagreement_with_a_subset() -> None:
    rho, note = _fidelity(cands([(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]), 1, subset=0.3)
    assert rho == pytest.approx(1.0)
    assert note == "--subset 0.3 ranked the configs like full data (Spearman 1.00)"
    rho, note = _fidelity(cands([(3.0, 10.0), (2.0, 20.0), (1.0, 30.0)]), 1, subset=0.3)
    assert rho == pytest.approx(-1.0)
    assert "did not rank" in note and "tune on a larger subset" in note


def test_no_larger_subset_advice_when_the_study_used_all_data() -> None:
    rho, note = _fidelity(cands([(3.0, 10.0), (2.0, 20.0), (1.0, 30.0)]), 1, subset=1.0)
    assert rho == pytest.approx(-1.0)
    assert "did not rank" in note
    assert "larger subset cannot help" in note and "tune on a larger subset" not in note
    assert "--subset 1" not in note
    _, tied = _fidelity(cands([(0.0, 0.0)] * 3), 1, subset=1.0)
    assert "tune on a larger subset" not in tied


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_configs_ask_for_top_k_3(n: int) -> None:
    assert MIN_FIDELITY_CONFIGS == 3  # README: "With --top-k of 3 or more"
    rho, note = _fidelity(cands([(float(i), float(i)) for i in range(n)], seeds=2), 2, subset=0.3)
    assert rho is None
    assert "--top-k 3 or more" in note


def test_seeds_are_averaged_and_non_finite_values_skipped() -> None:
    pairs = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0), (4.0, math.nan)]
    rho, note = _fidelity(cands(pairs, seeds=2), 2, subset=0.5)
    assert rho == pytest.approx(1.0) and "Spearman 1.00" in note


def test_unknown_subset_gives_hedged_advice() -> None:
    rho, note = _fidelity(cands([(3.0, 10.0), (2.0, 20.0), (1.0, 30.0)]), 1, subset=None)
    assert rho == pytest.approx(-1.0)
    assert note.startswith("the study's values did not rank") and "if the trials used one" in note


def test_study_subset_comes_from_the_recorded_settings() -> None:
    from types import SimpleNamespace

    from signtune.promote import _study_subset

    spec: Any = SimpleNamespace(hash=lambda: "abc", budget=SimpleNamespace(subset=1.0))
    # `study run --subset 0.3` recorded its settings: they win over the spec file's 1.0
    recorded = SimpleNamespace(user_attrs={"settings": {"budget.subset": 0.3}, "spec_hash": "other"})
    assert _study_subset(spec, recorded) == pytest.approx(0.3)
    # no settings, but the spec is loaded as the last run loaded it: its subset stands
    assert _study_subset(spec, SimpleNamespace(user_attrs={"spec_hash": "abc"})) == pytest.approx(1.0)
    # loaded differently (e.g. the run had --subset): unknown, so no claim either way
    assert _study_subset(spec, SimpleNamespace(user_attrs={"spec_hash": "other"})) is None
    assert _study_subset(spec, SimpleNamespace(user_attrs={})) is None
