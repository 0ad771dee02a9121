"""Which configs promote-best retrains, and which candidate wins: both by the study's objective."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import FrozenTrial

from signtune.errors import Problem, StudyError
from signtune.spec import ObjectiveSpec, StudySpec
from signtune.storage import mask_url
from signtune.study import ranked_trials


@dataclass
class Candidate:
    """One config x seed retrained on all the training data.

    Attributes:
        trial: the study's trial whose params it trains.
        seed: its ``run.seed``.
        subset_value: the trial's value in the study (at the study's ``budget.subset``).
        value: ``objective.metric`` of its best epoch on full data.
        epochs_run: epochs trained (fewer than asked when early stopping ended it).
        dir: its checkpoint folder, ``promoted/candidates/trial-<trial>-seed-<seed>``.
        metrics: every metric of its best epoch.
    """

    trial: int
    seed: int
    subset_value: float
    value: float = float("nan")
    epochs_run: int = 0
    dir: Path = Path()
    metrics: dict[str, float] = field(default_factory=dict)


def improves(value: float, best: float | None, direction: Literal["maximize", "minimize"]) -> bool:
    """``value`` is finite and better than ``best`` (None: nothing yet) in ``direction``."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best if direction == "maximize" else value < best)


def top_trials(study: optuna.Study, spec: StudySpec, k: int) -> list[FrozenTrial]:
    """The study's ``k`` best complete trials by ``objective.direction``, best first.

    Raises:
        StudyError: the study has no complete trial yet.
    """
    ranked = ranked_trials(study, spec.objective.direction)
    if not ranked:
        raise StudyError(
            Problem(
                f"study {spec.name!r} in {mask_url(spec.storage)}",
                "has no complete trial yet: promote-best retrains the best complete ones",
                f"run `study run --study {spec.name}` first",
            )
        )
    return ranked[:k]


def pick_winner(candidates: list[Candidate], objective: ObjectiveSpec) -> Candidate:
    """The candidate with the best ``value`` in ``objective.direction`` (the first of equals)."""
    pick = max if objective.direction == "maximize" else min
    return pick(candidates, key=lambda c: c.value)
