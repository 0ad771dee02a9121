"""A t5-family study through the real `study` command, on a tiny T5 saved locally (offline)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tests.models.tiny_t5 import save_tiny_t5

ROOT = Path(__file__).resolve().parents[2]
STUDY = [sys.executable, "-m", "signtune.cli"]
SYNTH = {"seed": 1, "n_train": 96, "n_val": 16, "n_test": 8}

T5_SPACE = """\
# Tiny t5 search space for tests: study run --study t5tiny
params:
  optim.lr: {type: float, low: 1.0e-3, high: 5.0e-3, log: true}
  optim.t5_encoder_lr_ratio: {type: float, low: 0.1, high: 1.0, log: true}
  model.freeze_first_n_layers: {type: int, low: 0, high: 2}
  model.unfreeze_at_epoch: {type: categorical, choices: [0, 2]}
"""


def t5_spec(*, pretrained: str = "t5", trials: int = 3) -> str:
    return textwrap.dedent(
        f"""\
        # Tiny t5 study for tests: study run --study t5tiny
        name: t5tiny
        task: sign2text
        search_space: ../../search_spaces/t5tiny.yaml
        data:
          root: data
          feature_dim: 16
          batch_size: 32
          tokenizer: t5
          synthetic: {{seed: 1, n_train: 96, n_val: 16, n_test: 8}}
        fixed:
          model.family: t5
          model.pretrained: {pretrained}
          run.epochs: 2
          run.device: cpu
          run.threads: 1         # tiny model: one thread beats two busy ones
          eval.max_len: 16
        objective: {{metric: val_chrf, direction: maximize}}
        sampler: {{name: tpe, seed: 0, n_startup_trials: 2}}
        pruner: {{name: none}}
        budget: {{trials: {trials}, subset: 1.0}}
        tracking: {{enabled: false}}
        enqueue:
          - {{optim.lr: 3.0e-3, optim.t5_encoder_lr_ratio: 0.5, model.freeze_first_n_layers: 1, model.unfreeze_at_epoch: 2}}
        promote: {{beam_size: 2}}
        """
    )


def study(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*STUDY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def make_project(root: Path, *, pretrained: str = "t5") -> Path:
    """studies/t5tiny (spec, search space, synthetic data) under ``root``; returns the study folder."""
    from signtune.data.synth import ensure_synthetic

    sdir = root / "studies" / "t5tiny"
    sdir.mkdir(parents=True)
    (root / "search_spaces").mkdir()
    (root / "search_spaces" / "t5tiny.yaml").write_text(T5_SPACE)
    (sdir / "study.yaml").write_text(t5_spec(pretrained=pretrained))
    ensure_synthetic(sdir / "data", feature_dim=16, **SYNTH)
    return sdir


@pytest.fixture
def t5_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """studies/t5tiny with synthetic data and a tiny T5 + tokenizer saved in studies/t5tiny/t5."""
    from signtune.data.manifest import read_manifest

    sdir = make_project(tmp_path)
    texts = [
        row.text
        for split in ("train", "val", "test")
        for row in read_manifest(
            sdir / "data" / f"how2sign_realigned_{split}.csv",
            format="how2sign",
            id_column="SENTENCE_NAME",
            text_column="SENTENCE",
        )
    ]
    save_tiny_t5(sdir / "t5", texts)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_t5_study_runs_promotes_and_translates(t5_project: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    res = study("run", "--study", "t5tiny", cwd=t5_project)
    assert res.returncode == 0, res.stderr + res.stdout
    sdir = t5_project / "studies" / "t5tiny"
    s = optuna.load_study(study_name="t5tiny", storage=f"sqlite:///{sdir / 'study.db'}")
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 3
    assert s.trials[0].params["model.freeze_first_n_layers"] == 1  # the enqueued config
    assert all(t.user_attrs["epochs_run"] == 2 for t in s.trials)

    res = study("promote-best", "--study", "t5tiny", "--epochs", "1", cwd=t5_project)
    assert res.returncode == 0, res.stderr + res.stdout
    out = sdir / "promoted"
    meta = json.loads((out / "config.json").read_text())
    assert meta["family"] == "t5" and meta["architecture"]["t5"]["d_model"] == 32
    assert (out / "tokenizer_config.json").is_file()

    # The promoted folder is self-contained: the source T5 folder is gone, it still translates,
    # and with the same beam it reproduces promote-best's own test predictions.
    shutil.rmtree(sdir / "t5")
    res = study(
        "translate",
        "--model",
        "studies/t5tiny/promoted",
        "--manifest",
        "studies/t5tiny/data/how2sign_realigned_test.csv",
        "--beam",
        "2",
        cwd=t5_project,
    )
    assert res.returncode == 0, res.stderr
    got = dict(line.split("\t", 1) for line in res.stdout.strip().splitlines()[1:])
    with (out / "predictions.tsv").open(encoding="utf-8") as f:
        expected = {row["id"]: row["hypothesis"] for row in csv.DictReader(f, delimiter="\t")}
    assert len(got) == SYNTH["n_test"]
    assert got == expected


@pytest.mark.parametrize("command", [("run", "--study", "t5tiny"), ("validate", "t5tiny")])
def test_missing_pretrained_t5_is_a_clear_error(tmp_path: Path, command: tuple[str, ...]) -> None:
    sdir = make_project(tmp_path, pretrained="models/t5-base")
    res = study(*command, cwd=tmp_path)
    assert res.returncode == 2, res.stderr + res.stdout
    assert "Traceback" not in res.stderr and "OK" not in res.stdout
    text = " ".join((res.stderr + res.stdout).split())  # rich wraps long lines
    assert "model.pretrained" in text and str(sdir / "models" / "t5-base") in text
    assert "save_pretrained" in text and "nothing is downloaded" in text
    assert not (sdir / "study.db").exists()


def test_shipped_t5_templates_are_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    from signtune.config import config_keys
    from signtune.space import check_params, parse
    from signtune.spec import load_spec

    monkeypatch.chdir(ROOT)
    spec = load_spec("studies/how2sign/study.yaml")
    assert spec.base.model.family == "t5"
    assert spec.base.data.feature_dim == 768 and spec.base.data.format == "how2sign"
    assert spec.base.data.tokenizer == spec.base.model.pretrained  # the T5's own vocabulary
    space = parse(spec.search_space, known_keys=set(config_keys()))
    assert spec.search_space.name == "t5.yaml"
    assert {"optim.lr", "model.freeze_first_n_layers", "model.unfreeze_at_epoch"} <= set(space.names)
    for i, params in enumerate(spec.enqueue):
        assert check_params(space, params, f"enqueue[{i}]") == []


def test_t5_study_three_trials_in_process(t5_project: Path) -> None:
    """The runner API in this process (no worker start-up): 3 trials of the tiny T5 complete."""
    import optuna
    from optuna.trial import TrialState

    from signtune.runner import run_study
    from signtune.space import parse
    from signtune.spec import load_spec
    from signtune.tasks import get_task

    spec = load_spec("t5tiny", {"fixed.run.epochs": 1})
    task = get_task(spec.task)
    space = parse(spec.search_space, known_keys=task.config_keys())
    summary = task.prepare(spec)
    assert summary["vocab_size"] == json.loads((spec.dir / "t5" / "config.json").read_text())["vocab_size"]
    threads = torch.get_num_threads()
    try:
        result = run_study(spec, space, task)
    finally:
        torch.set_num_threads(threads)  # the spec's run.threads: 1 must not leak into later tests
    assert result.finished == 3
    s = optuna.load_study(study_name="t5tiny", storage=spec.storage)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 3
    assert all(t.value is not None and t.value >= 0 for t in s.trials)
    assert {"model.freeze_first_n_layers", "model.unfreeze_at_epoch"} <= set(s.best_trial.params)
