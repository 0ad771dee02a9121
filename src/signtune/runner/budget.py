"""Budgets: how many trial slots are left, exactly (one supervisor) or nearly (independent workers)."""

from __future__ import annotations

from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from signtune.study import count_states


class Budget(Protocol):
    def claim(self) -> bool:
        """Take one trial slot; False when the study's budget is spent."""
        ...

    def release(self) -> None:
        """Give a slot back (its trial failed, so it does not count)."""
        ...


class SharedBudget:
    """Exact budget for the workers of one supervisor: a counter of claimed slots in shared memory."""

    def __init__(self, total: int, claimed: Any) -> None:
        self.total = total
        self.claimed = claimed  # multiprocessing.Value("i") holding finished + running

    def claim(self) -> bool:
        with self.claimed.get_lock():
            if self.claimed.value >= self.total:
                return False
            self.claimed.value += 1
            return True

    def release(self) -> None:
        with self.claimed.get_lock():
            self.claimed.value -= 1


class StorageBudget:
    """Budget for independent workers (other hosts): finished + running < total, read from storage.

    Workers claim without a lock between them, so each may start at most one trial too many.
    """

    def __init__(self, study: optuna.Study, total: int) -> None:
        self.study = study
        self.total = total

    def claim(self) -> bool:
        counts = count_states(self.study)
        return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING] < self.total

    def release(self) -> None:
        return None
