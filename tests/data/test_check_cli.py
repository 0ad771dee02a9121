"""`study data check`, `study validate` and `study run` on bad data, through the real command.

Each bad input must give exit code 2, name the file and the fix, and print no traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tests.reliability.helpers import TouchOnUnpickle, edit, make_project, study

from signtune.data.synth import generate

DATA = Path("studies/t/data")
TRAIN = DATA / "how2sign_realigned_train.csv"
WIDE = {"COLUMNS": "400"}  # table cells wide enough that no path is folded


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, seed=0, n_train=20, n_val=5, n_test=2, feature_dim=16)
    return out


@pytest.fixture
def project(tmp_path: Path, synth: Path) -> Path:
    return make_project(tmp_path, synth)


def _first_id(project: Path) -> str:
    return (project / TRAIN).read_text().splitlines()[1].split("\t")[3]


def _wrong_dim(project: Path) -> tuple[str, ...]:
    edit(project / "studies/t/study.yaml", "feature_dim: 16", "feature_dim: 17")
    return (
        "have 16 features per frame, but data.feature_dim is 17",
        "set data.feature_dim to 16",
        f"{_first_id(project)}.npy",
    )


def _no_text_column(project: Path) -> tuple[str, ...]:
    lines = (project / TRAIN).read_text().splitlines(keepends=True)
    (project / TRAIN).write_text("".join([lines[0].replace("\tSENTENCE\n", "\tTEXT\n"), *lines[1:]]))
    return (
        str(TRAIN),
        "lacks the column ['SENTENCE']; columns found:",
        "'TEXT'",
        "set data.id_column / data.text_column to columns of this file",
    )


def _pickled_pt(project: Path) -> tuple[str, ...]:
    clip = project / DATA / "features" / f"{_first_id(project)}.npy"
    clip.unlink()
    torch.save({"features": TouchOnUnpickle(project / "PWNED")}, clip.with_suffix(".pt"))
    return (
        str(clip.with_suffix(".pt").relative_to(project)),
        "holds a pickled Python object (posix.system)",
        "re-save it as a plain tensor with torch.save(tensor) or as .npy",
    )


BAD: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "wrong-feature-dim": _wrong_dim,
    "manifest-without-configured-columns": _no_text_column,
    "pt-holding-a-pickled-object": _pickled_pt,
}


def _clean(output: str) -> None:
    assert "Traceback" not in output


@pytest.mark.parametrize("name", list(BAD))
def test_data_check_bad_input_exit_2(project: Path, name: str) -> None:
    expected = BAD[name](project)
    res = study("data", "check", "--study", "t", "--json", "report.json", cwd=project, env=WIDE)
    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    assert "study run` refuses this data" in output
    _clean(output)
    report = json.loads((project / "report.json").read_text())
    assert any(f["severity"] == "error" and f["fix"] for f in report["findings"])
    assert not (project / "PWNED").exists(), "a feature file ran code"


def test_data_check_clean_data_exit_0(project: Path) -> None:
    res = study("data", "check", "--study", "t", "--json", "report.json", cwd=project, env=WIDE)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert "data train: 20 clips, 20 feature files read" in res.stdout
    assert "0 errors" in res.stdout
    report = json.loads((project / "report.json").read_text())
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    assert [s["name"] for s in report["splits"]] == ["train", "val", "test"]


def test_validate_runs_the_data_check(project: Path) -> None:
    expected = _pickled_pt(project)
    res = study("validate", "t", cwd=project, env=WIDE)
    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    assert "OK studies/t/study.yaml" in res.stdout  # the spec itself is fine
    for fragment in expected:
        assert fragment in output, output
    _clean(output)


def test_run_refuses_bad_data_and_points_to_data_check(project: Path) -> None:
    lines = (project / TRAIN).read_text().splitlines(keepends=True)
    (project / TRAIN).write_text("".join([*lines, lines[1]]))  # a duplicate id: the loader stops there
    _pickled_pt(project)  # ...and never reaches this one, which the data check lists too
    res = study("run", "--study", "t", cwd=project, env=WIDE)
    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    assert "is a duplicate of row 2" in output
    assert "No trial was started" in output and "`study data check --study t` lists every problem" in output
    _clean(output)
    assert not (project / "studies/t/study.db").exists()
    check = study("data", "check", "--study", "t", cwd=project, env=WIDE)
    assert check.returncode == 2
    assert "duplicate-id" in check.stdout and "unreadable-feature" in check.stdout


def test_data_pack_builds_reuses_and_rebuilds(project: Path) -> None:
    first = study("data", "pack", "--study", "t", cwd=project, env=WIDE)
    assert first.returncode == 0, first.stderr
    assert "27 clips" in first.stdout and "built in" in first.stdout and "(no pack yet)" in first.stdout
    again = study("data", "pack", "--study", "t", cwd=project, env=WIDE)
    assert again.returncode == 0 and "is current, reused" in again.stdout
    clip = project / DATA / "features" / f"{_first_id(project)}.npy"
    clip.write_bytes(clip.read_bytes())  # same content, new mtime: the pack no longer vouches for it
    changed = study("data", "pack", "--study", "t", cwd=project, env=WIDE)
    assert changed.returncode == 0 and "built in" in changed.stdout and clip.name in changed.stdout


def test_data_pack_names_a_bad_file(project: Path) -> None:
    clip = project / DATA / "features" / f"{_first_id(project)}.npy"
    clip.write_bytes(b"not an array")
    res = study("data", "pack", "--study", "t", cwd=project, env=WIDE)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert clip.name in res.stderr and "np.save" in res.stderr
    assert not list((project / "studies/t/.cache").glob("pack/*/index.json")), "no half-built pack is left"


def test_narrow_terminal_gets_one_block_per_finding(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    deep = tmp_path_factory.mktemp("d") / "a-data-folder-with-a-long-name" / "that-sits-deep" / "in-the-tree"
    shutil.move(project / DATA, deep)  # outside the working folder: its paths are shown whole, or cut
    edit(project / "studies/t/study.yaml", "  root: data\n", f"  root: {deep}\n")
    first = (deep / TRAIN.name).read_text().splitlines()[1].split("\t")[3]
    (deep / "features" / f"{first}.npy").unlink()
    narrow = study("data", "check", "--study", "t", cwd=project, env={"COLUMNS": "80"})
    assert narrow.returncode == 2, narrow.stdout + narrow.stderr
    lines = narrow.stdout.splitlines()
    assert not any(c in narrow.stdout for c in "┃│┏"), narrow.stdout  # no table
    assert max(len(line) for line in lines) <= 80, narrow.stdout
    assert "error train missing-feature (1 row)" in lines
    assert f"  ids  {first}" in lines  # whole, on a line of its own
    file_line = next(line for line in lines if line.startswith("  file ") and line.endswith(TRAIN.name))
    assert file_line.startswith("  file …") and file_line.endswith("in-the-tree/how2sign_realigned_train.csv")
    assert "  fix  add the file, delete the row, or set data.features_dir to the folder" in lines
    assert "1 data error: `study run` refuses this data until they are fixed." in lines

    wide = study("data", "check", "--study", "t", cwd=project, env={"COLUMNS": "200"})
    assert wide.returncode == 2
    assert "┃ severity ┃ split ┃ rule" in wide.stdout and "┃ fix" in wide.stdout  # the table, fix in its column
    assert f"ids {first}" in wide.stdout and "(1 row)" not in wide.stdout
