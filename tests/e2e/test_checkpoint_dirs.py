"""Checkpoint folders are swapped so that one complete copy exists at every instant."""

from __future__ import annotations

from pathlib import Path

from signtune.promote import commit_dir, recover_dir


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(text)
    return path


def test_commit_replaces_and_leaves_no_leftovers(tmp_path: Path) -> None:
    last = _folder(tmp_path / "last", "epoch 1")
    commit_dir(_folder(tmp_path / "last.tmp", "epoch 2"), last)
    assert (last / "model.safetensors").read_text() == "epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_a_crash_between_the_renames_is_recovered(tmp_path: Path) -> None:
    # The state commit_dir leaves if killed after moving the old copy aside: only last.old.
    _folder(tmp_path / "last.old", "epoch 1")
    _folder(tmp_path / "last.tmp", "epoch 2 (complete, not yet renamed)")
    last = recover_dir(tmp_path / "last")
    assert (last / "model.safetensors").read_text() == "epoch 1"  # the last committed copy
    assert recover_dir(last) == last  # nothing to do when the folder is there
