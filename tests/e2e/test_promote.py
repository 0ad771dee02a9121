"""promote-best and translate on a tiny study: checkpoints, resume, test metrics, safe loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = [sys.executable, "-m", "signtune.cli"]
pytestmark = pytest.mark.slow


def study(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*STUDY, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=full)


@pytest.fixture(scope="module")
def tuned_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny study tuned once per module (2 trials); tests work on copies of it."""
    from tests.e2e.conftest import TINY_SPACE, tiny_spec

    root = tmp_path_factory.mktemp("tuned")
    (root / "studies" / "tiny").mkdir(parents=True)
    (root / "search_spaces").mkdir()
    (root / "search_spaces" / "tiny.yaml").write_text(TINY_SPACE)
    text = (
        tiny_spec(trials=2)
        .replace("budget: {trials: 2, subset: 1.0}", "budget: {trials: 2, subset: 0.5}")
        .replace("run.epochs: 3", "run.epochs: 2")
        .replace("pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: {name: none}")
        + "promote: {beam_size: 3}\n"
    )
    (root / "studies" / "tiny" / "study.yaml").write_text(text)
    res = study("run", "--study", "tiny", cwd=root)
    assert res.returncode == 0, res.stderr
    return root


@pytest.fixture
def tuned(tuned_once: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(tuned_once, tmp_path / "p")
    return tmp_path / "p"


def test_promote_best_then_translate(tuned: Path) -> None:
    res = study("promote-best", "--study", "tiny", "--top-k", "2", "--epochs", "3", cwd=tuned)
    assert res.returncode == 0, res.stderr
    out = tuned / "studies" / "tiny" / "promoted"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.json",
        "predictions.tsv",
        "provenance.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert 0.0 <= test["bleu"] <= 100.0 and test["beam_size"] == 3
    # precision1..4 are sacrebleu's n-gram precisions (not BLEU-1..4 scores); bleu is corpus BLEU-4
    assert {"precision1", "precision2", "precision3", "precision4", "chrf", "bleu_signature"} <= set(test)
    assert not {"bleu1", "bleu2", "bleu3", "bleu4"} & set(test)
    assert "1-4-gram precisions" in res.stdout
    # two configs are too few for a rank correlation (always +-1): no Spearman, and the advice says so
    assert len(metrics["candidates"]) == 2 and metrics["fidelity_spearman"] is None
    assert "--top-k 3 or more" in metrics["fidelity_note"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["study"] == "tiny" and prov["hashes"]["how2sign_realigned_train.csv"]
    assert {"torch", "optuna"} <= set(prov["versions"])
    for cand in (out / "candidates").iterdir():
        assert (cand / "best" / "model.safetensors").is_file() and (cand / "last" / "state.pt").is_file()

    # MLflow: a promote run tagged with its source study and trials, the model as artifacts,
    # and a version in the model registry (the SQLite store has one).
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tuned / 'studies' / 'tiny' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id], "tags.`signtune.role` = 'promote'")
    assert run.data.tags["signtune.study"] == "tiny" and run.data.tags["signtune.source_trials"] == "0,1"
    assert run.data.metrics["test_bleu"] == pytest.approx(test["bleu"], abs=1e-3)
    assert run.data.metrics["test_precision4"] == pytest.approx(test["precision4"], abs=1e-3)
    assert "test_bleu4" not in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors"}
    versions = client.search_model_versions("name='signtune-tiny'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    # translate on the test split reproduces predictions.tsv exactly
    data = tuned / "studies" / "tiny" / "data"
    translate = ("translate", "--model", str(out), "--manifest", str(data / "how2sign_realigned_test.csv"))
    res = study(*translate, "--beam", "3", cwd=tuned)
    assert res.returncode == 0, res.stderr
    expected = [line.split("\t") for line in (out / "predictions.tsv").read_text().splitlines()[1:]]
    got = [line.split("\t") for line in res.stdout.splitlines()[1:]]
    assert [(i, h) for i, _, h in expected] == [(i, h) for i, h in got]

    # --out with another suffix than .json writes the same table, and says which format it wrote
    txt = tuned / "hyps.txt"
    res = study(*translate, "--beam", "3", "--out", str(txt), cwd=tuned)
    assert res.returncode == 0, res.stderr
    assert f"to {txt} (tab-separated" in " ".join(res.stderr.split())
    assert txt.read_text().splitlines()[1:] == ["\t".join(row) for row in got]


def test_promote_resume_after_a_kill(tuned: Path) -> None:
    killed = study(
        "promote-best", "--study", "tiny", "--epochs", "4", cwd=tuned, env={"SIGNTUNE_FAULTS": "promote_kill@2"}
    )
    assert killed.returncode != 0
    res = study("promote-best", "--study", "tiny", "--epochs", "4", "--resume", cwd=tuned)
    assert res.returncode == 0, res.stderr
    assert "epoch 3:" in res.stderr and "epoch 1:" not in res.stderr  # the epoch counter goes on
    resumed = json.loads((tuned / "studies" / "tiny" / "promoted" / "metrics.json").read_text())["winner"]
    assert resumed["epochs"] == 4
    fresh = study("promote-best", "--study", "tiny", "--epochs", "4", cwd=tuned)
    assert fresh.returncode == 0, fresh.stderr
    uninterrupted = json.loads((tuned / "studies" / "tiny" / "promoted" / "metrics.json").read_text())["winner"]
    assert resumed["val_bleu"] == pytest.approx(uninterrupted["val_bleu"], abs=0.5)


def test_translate_refuses_a_pickled_model(tmp_path: Path) -> None:
    import torch

    model_dir = tmp_path / "promoted"
    model_dir.mkdir()
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):  # runs on unpickling
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, model_dir / "model.pt")
    res = study("translate", "--model", str(model_dir), str(model_dir / "model.pt"), cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "is missing" in res.stderr
    clip = tmp_path / "clip.pt"
    torch.save({"features": Evil()}, clip)
    assert not marker.exists()


def test_promote_best_ranks_by_the_objective_metric_and_direction(tuned: Path) -> None:
    """The built-in task's candidates are ranked, and their best/ checkpoints kept, by the spec's
    ``objective`` (here the training loss, minimised), not by a hard-coded val BLEU."""
    spec = tuned / "studies" / "tiny" / "study.yaml"
    text = spec.read_text()
    assert "objective: {metric: val_chrf, direction: maximize}" in text
    spec.write_text(
        text.replace(
            "objective: {metric: val_chrf, direction: maximize}", "objective: {metric: train_loss, direction: minimize}"
        )
    )
    res = study("promote-best", "--study", "tiny", "--top-k", "2", "--epochs", "2", cwd=tuned)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tuned / "studies" / "tiny" / "promoted" / "metrics.json").read_text())
    assert metrics["metric"] == "train_loss"
    losses = [c["train_loss"] for c in metrics["candidates"]]
    assert len(losses) == 2 and len(set(losses)) == 2
    assert metrics["winner"]["train_loss"] == min(losses)  # minimised, not maximised
    assert f"train_loss {min(losses):.2f}" in res.stdout


def test_translate_honours_the_promoted_run_amp(tuned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The promoted config.json keeps the run section, and translate decodes with its run.amp."""
    spec = tuned / "studies" / "tiny" / "study.yaml"
    text = spec.read_text()
    assert "promote: {beam_size: 3}" in text
    spec.write_text(text.replace("promote: {beam_size: 3}", "promote: {beam_size: 3, overrides: {run.amp: false}}"))
    res = study("promote-best", "--study", "tiny", "--epochs", "1", cwd=tuned)
    assert res.returncode == 0, res.stderr
    out = tuned / "studies" / "tiny" / "promoted"

    # bf16 autocast changes nothing on a CPU, so the decoder is asked what it was told
    from typer.testing import CliRunner

    import signtune.train.loop as loop
    from signtune.cli import app

    seen: list[bool] = []
    decode = loop.translate

    def spy(*args: object, **kwargs: object) -> list[str]:
        seen.append(bool(kwargs["amp"]))
        return decode(*args, **kwargs)

    monkeypatch.setattr(loop, "translate", spy)
    manifest = tuned / "studies" / "tiny" / "data" / "how2sign_realigned_test.csv"
    result = CliRunner().invoke(app, ["translate", "--model", str(out), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    assert seen == [False]
    assert json.loads((out / "config.json").read_text())["run"]["amp"] is False
