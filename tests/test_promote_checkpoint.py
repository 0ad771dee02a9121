"""promote-best's pieces without training: ranking, the winner, the checkpoint format and checkpointer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import save_file

from signtune.errors import StudyError
from signtune.promote import Candidate, Checkpointer, improves, load_checkpoint, pick_winner, save_checkpoint
from signtune.spec import ObjectiveSpec
from signtune.study import ranked_trials


def _study(values: list[float | None]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for v in values:
        trial = study.ask()
        if v is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, v)
    return study


def test_ranked_trials_follow_the_direction_and_keep_ties_in_trial_order() -> None:
    study = _study([2.0, None, 5.0, 2.0, 1.0])
    assert [t.number for t in ranked_trials(study, "maximize")] == [2, 0, 3, 4]
    assert [t.number for t in ranked_trials(study, "minimize")] == [4, 0, 3, 2]


def test_the_winner_follows_the_objective_direction() -> None:
    cands = [Candidate(trial=t, seed=0, subset_value=0.0, value=v) for t, v in enumerate([3.0, 1.0, 2.0])]
    assert pick_winner(cands, ObjectiveSpec("val_bleu", "maximize")).trial == 0
    assert pick_winner(cands, ObjectiveSpec("train_loss", "minimize")).trial == 1
    assert improves(1.0, 2.0, "minimize") and not improves(3.0, 2.0, "minimize")
    assert improves(3.0, None, "maximize") and not improves(math.nan, None, "maximize")


def test_checkpointer_keeps_the_best_epoch_by_the_objective(tmp_path: Path) -> None:
    hook = Checkpointer(tmp_path, ObjectiveSpec("train_loss", "minimize"), None)
    state = {"step": 7, "rng": torch.arange(3), "history": [{"epoch": 1.0}]}
    for epoch, loss in enumerate([3.0, 1.0, 2.0, math.nan], start=1):
        hook(epoch, {"w": torch.full((2,), float(epoch))}, {"train_loss": loss, "val_bleu": 10.0 * epoch}, state=state)
    best, last = load_checkpoint(tmp_path / "best"), load_checkpoint(tmp_path / "last")
    assert (best.epoch, last.epoch, hook.last_epoch) == (2, 4, 4)
    assert best.metrics == {"train_loss": 1.0, "val_bleu": 20.0} == hook.best_metrics
    assert torch.equal(best.tensors["w"], torch.full((2,), 2.0))
    assert best.state["step"] == 7 and torch.equal(best.state["rng"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]  # no .tmp or .old left
    with pytest.raises(ValueError, match="objective is 'train_loss'"):
        hook(5, {"w": torch.zeros(2)}, {"val_bleu": 1.0})


def test_a_checkpoint_without_state_has_an_empty_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", {"w": torch.ones(1)}, epoch=3, metrics={"val_acc": 0.5})
    got = load_checkpoint(tmp_path / "last")
    assert (got.epoch, got.metrics, got.state) == (3, {"val_acc": 0.5}, {})
    assert not (tmp_path / "last" / "state.pt").exists()


def test_checkpoints_of_the_earlier_built_in_format_are_read(tmp_path: Path) -> None:
    """Before one format served every task, the built-in task's epoch and history were in state.pt only."""
    (tmp_path / "last").mkdir()
    save_file({"w": torch.ones(1)}, str(tmp_path / "last" / "model.safetensors"))
    history = [{"epoch": 1.0, "val_bleu": 3.0}, {"epoch": 2.0, "val_bleu": 4.0}]
    torch.save({"epoch": 2, "step": 10, "history": history, "best": history[1]}, tmp_path / "last" / "state.pt")
    got = load_checkpoint(tmp_path / "last")
    assert (got.epoch, got.metrics, got.state["step"]) == (2, {"val_bleu": 4.0}, 10)


def test_a_pickled_state_is_refused_unopened(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):  # runs on unpickling
            return (os.system, (f"touch {marker}",))

    save_checkpoint(tmp_path / "last", {"w": torch.ones(1)}, epoch=1, metrics={"m": 1.0})
    torch.save({"step": Evil()}, tmp_path / "last" / "state.pt")
    with pytest.raises(StudyError, match="cannot be read as a checkpoint"):
        load_checkpoint(tmp_path / "last")
    assert not marker.exists()


def test_non_tensor_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"non-tensor values for \['lr'\]"):
        save_checkpoint(tmp_path / "x", {"w": torch.ones(1), "lr": 0.1}, epoch=1, metrics={})
