"""Facts about a study read from its stored trials (no Optuna internals)."""

from __future__ import annotations

from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState


def ranked_trials(study: optuna.Study, direction: Literal["maximize", "minimize"]) -> list[FrozenTrial]:
    """The study's complete trials that have a value, best first for ``direction``.

    Trials with equal values keep their trial order. Every ranking of a study (the
    leaderboard, the report, promote-best's top-k) is this one.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done.sort(key=lambda t: t.value or 0.0, reverse=direction == "maximize")
    return done
