"""promote-best's fidelity check: did the study's (subset) values rank the configs as full data did?

A tie-aware Spearman rank correlation between the trials' values in the study and their
candidates' full-data values, and a note that says plainly when it cannot mean anything.
"""

from __future__ import annotations

import math

import optuna

from signtune.promote.select import Candidate
from signtune.spec import StudySpec


def study_subset(spec: StudySpec, study: optuna.Study) -> float | None:
    """The train-split fraction the study's trials ran at, or ``None`` when it is not known.

    Read from the study's stored ``settings`` (``budget.subset``, recorded by ``study run``);
    for a study without them, the spec's ``budget.subset`` when the spec is loaded as the last
    run loaded it (same hash: no other ``--subset`` was given), else unknown.
    """
    attrs = dict(getattr(study, "user_attrs", {}) or {})
    settings = attrs.get("settings")
    value = settings.get("budget.subset") if isinstance(settings, dict) else None
    if value is None and attrs.get("spec_hash") == spec.hash():
        value = spec.budget.subset
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


MIN_FIDELITY_CONFIGS = 3  # a rank correlation of 2 points is +1 or -1 whatever the data


def rank_fidelity(candidates: list[Candidate], seeds: int, subset: float | None = None) -> tuple[float | None, str]:
    """Spearman rank correlation between the subset values and the full-data values.

    ``None`` (with a note saying why) when it cannot mean anything: fewer than
    ``MIN_FIDELITY_CONFIGS`` configs, or all values equal on either side. ``subset`` is the
    fraction of the train split the study's trials used (``None``: unknown): at 1.0 a larger
    subset cannot help, so the note does not advise one.
    """
    by_trial: dict[int, list[Candidate]] = {}
    for c in candidates:
        if math.isfinite(c.subset_value) and math.isfinite(c.value):  # a diverged run ranks nowhere
            by_trial.setdefault(c.trial, []).append(c)
    n = len(by_trial)
    if n < MIN_FIDELITY_CONFIGS:
        what = {0: "no promoted config has a finite value", 1: "one config promoted"}.get(n, f"{n} configs promoted")
        return None, (
            f"{what}: too few to compare rankings "
            f"(use --top-k {MIN_FIDELITY_CONFIGS} or more for a Spearman rank correlation)"
        )
    trials = list(by_trial)
    sub = [by_trial[t][0].subset_value for t in trials]
    full = [sum(c.value for c in by_trial[t]) / len(by_trial[t]) for t in trials]
    full_data = subset is not None and subset >= 1.0
    if subset is None:
        source = "the study's values"
    elif full_data:
        source = "the study's values (already on all training data)"
    else:
        source = f"--subset {subset:g}"
    rho = spearman(sub, full)
    if rho is None:  # zero variance on one side: no ranking to compare
        tied = ", ".join(
            f"{name} values all {xs[0]:.2f}" for name, xs in (("study", sub), ("full-data", full)) if len(set(xs)) == 1
        )
        return None, (
            f"how {source} ranked the {n} configs cannot be judged: all values equal ({tied}); "
            "no Spearman rank correlation"
        )
    rho = round(rho, 4)
    if rho < 0.5:
        if full_data:
            advice = "promote more configs (--top-k) or seeds (--seeds): a larger subset cannot help"
        elif subset is None:
            advice = "tune on a larger subset if the trials used one, or promote more configs"
        else:
            advice = "tune on a larger subset, or promote more configs"
        note = f"{source} did not rank these configs the same way as full data (Spearman {rho:.2f}): {advice}"
    else:
        note = f"{source} ranked the configs like full data (Spearman {rho:.2f})"
    return rho, note


def average_ranks(x: list[float]) -> list[float]:
    """0-based ranks of ``x``; tied values share the mean of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho with average ranks for ties; ``None`` when it is undefined (fewer than 2
    points, or every value on one side equal)."""
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} and {len(b)} values")
    ra, rb = average_ranks(a), average_ranks(b)
    n = len(a)
    if n < 2:
        return None
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    if va == 0.0 or vb == 0.0:
        return None
    return max(-1.0, min(1.0, cov / (va * vb)))
