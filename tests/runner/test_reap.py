"""Reaping: the trials of dead local workers are failed, including one that never named its worker."""

from __future__ import annotations

import types
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from signtune.hosts import host_id
from signtune.runner import reaping as runner


def test_reap_fails_named_and_orphaned_trials_and_spares_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "ORPHAN_AGE_S", 0.05)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    spec = types.SimpleNamespace(storage=url)
    host = host_id()

    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # the dead worker's trial
    dead.set_user_attr("pid", 111)
    dead.set_user_attr("host", host)
    orphan = study.ask()  # created, then its worker died before it named itself
    live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # a live worker's
    live.set_user_attr("pid", 222)
    live.set_user_attr("host", host)

    reaped = runner.reap_dead(spec, study, {111})  # type: ignore[arg-type]

    assert sorted(reaped) == [dead.number, orphan.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == states[orphan.number] == TrialState.FAIL
    assert states[live.number] == TrialState.RUNNING
    assert study.trials[orphan.number].user_attrs["reason"] == "worker_died"
    # The named trial's params run again; the orphan had none to re-queue.
    (again,) = study.get_trials(states=(TrialState.WAITING,))
    assert again.user_attrs["retry_of"] == dead.number and again.system_attrs["fixed_params"] == dead.params


def test_reap_waits_for_a_trial_that_names_itself_in_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    newborn = study.ask()  # a live worker's trial, a moment before it sets its pid

    def grace(_: float) -> None:  # the live worker names itself during the grace
        newborn.set_user_attr("pid", 333)

    monkeypatch.setattr(runner.time, "sleep", grace)
    assert runner.reap_dead(types.SimpleNamespace(storage=url), study, {111}) == []  # type: ignore[arg-type]
    assert study.trials[newborn.number].state == TrialState.RUNNING
