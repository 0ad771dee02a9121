"""Plug-in tasks: the digits example end to end, and clear errors for broken plug-ins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "signtune.cli"]


def run(*args: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(pythonpath)}
    return subprocess.run([*STUDY, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.integration
def test_digits_example_with_two_workers(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (pip install -e .[dev])")
    ex = tmp_path / "digits"
    shutil.copytree(ROOT / "examples" / "digits", ex)
    spec = ex / "study.yaml"
    spec.write_text(spec.read_text().replace("run.epochs: 8", "run.epochs: 5").replace("trials: 12", "trials: 8"))
    res = run("run", "--study", str(spec), "--workers", "2", cwd=tmp_path, pythonpath=ex)
    assert res.returncode == 0, res.stderr
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{ex / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 8
    assert TrialState.PRUNED in states, "the lr=1e-4, fully frozen config is pruned against the good one"
    assert study.best_value > 50.0  # val accuracy in % after 5 short epochs (chance: 10%)
    for name in ("best_params.json", "trials.csv", "report.html"):
        assert (ex / "export" / name).is_file()
    import mlflow

    runs = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ex / 'mlflow.db'}").search_runs(
        [
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{ex / 'mlflow.db'}")
            .get_experiment_by_name("digits")
            .experiment_id
        ]
    )
    assert sum(r.data.tags.get("signtune.role") == "trial" for r in runs) == len(study.trials)


BROKEN = {
    "raises": "def objective(config, report, ctx):\n    raise ValueError('boom from plug-in')\n",
    "returns": "def objective(config, report, ctx):\n    report(1, {'score': 1.0})\n    return 'not a dict'\n",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_plugin_fails_trials_clearly_and_the_study_survives(fast_project: Path, kind: str) -> None:
    from tests.runner.conftest import fast_spec

    (fast_project / "broken.py").write_text(BROKEN[kind])
    text = fast_spec(trials=2).replace("task: fastplug:objective", "task: broken:objective")
    (fast_project / "studies" / "fast" / "study.yaml").write_text(text)
    res = run("run", "--study", "fast", cwd=fast_project, pythonpath=fast_project)
    assert res.returncode == 2, res.stderr  # 5 failures in a row stop the study with the error
    assert "Traceback" not in res.stderr
    assert ("boom from plug-in" if kind == "raises" else "must return a dict of metric names to numbers") in res.stderr
    study = optuna.load_study(study_name="fast", storage="sqlite:///studies/fast/study.db")
    started = [t for t in study.trials if t.state != TrialState.WAITING]
    assert len(started) == 5 and all(t.state == TrialState.FAIL for t in started)
    assert all(t.user_attrs["reason"] == "error" and "traceback" in t.user_attrs for t in started)


@pytest.mark.parametrize(
    ("task", "fragment"),
    [("nosuchmod:objective", "cannot import module 'nosuchmod'"), ("fastplug:nosuchfn", "has no callable 'nosuchfn'")],
)
def test_missing_plugin_is_a_config_error(fast_project: Path, task: str, fragment: str) -> None:
    from tests.runner.conftest import fast_spec

    text = fast_spec(trials=2).replace("task: fastplug:objective", f"task: {task}")
    (fast_project / "studies" / "fast" / "study.yaml").write_text(text)
    res = run("run", "--study", "fast", cwd=fast_project, pythonpath=fast_project)
    assert res.returncode == 2 and fragment in res.stderr and "Traceback" not in res.stderr
    assert not (fast_project / "studies" / "fast" / "study.db").exists()


@pytest.fixture(scope="module")
def digits_tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example, tuned once (4 short trials) for the promote-best tests."""
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (pip install -e .[dev])")
    ex = tmp_path_factory.mktemp("digits") / "digits"
    shutil.copytree(ROOT / "examples" / "digits", ex)
    spec = ex / "study.yaml"
    spec.write_text(spec.read_text().replace("run.epochs: 8", "run.epochs: 3").replace("trials: 12", "trials: 4"))
    res = run("run", "--study", str(spec), cwd=ex.parent, pythonpath=ex)
    assert res.returncode == 0, res.stderr
    return ex


@pytest.mark.slow
@pytest.mark.integration
def test_digits_promote_best_through_the_checkpoint_hook(digits_tuned: Path, tmp_path: Path) -> None:
    ex = tmp_path / "digits"
    shutil.copytree(digits_tuned, ex)
    res = run(
        "promote-best", "--study", str(ex / "study.yaml"), "--top-k", "2", "--epochs", "4", cwd=tmp_path, pythonpath=ex
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = ex / "promoted"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "val_acc" and len(metrics["candidates"]) == 2
    winner = metrics["winner"]
    assert winner["val_acc"] == max(c["val_acc"] for c in metrics["candidates"])
    assert winner["epochs"] == 4
    assert metrics["test"]["test_acc"] > 50.0  # the test hook scored the best checkpoint (chance: 10%)
    assert f"test: test_acc {metrics['test']['test_acc']:.4g}" in res.stdout
    # The shipped weights are the winner's best checkpoint, loadable without unpickling.
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert "head.weight" in weights and weights["head.weight"].shape[0] == 10
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "digits_task:objective" and config["config"]["data.subset"] == 1.0
    assert json.loads((out / "provenance.json").read_text())["hashes"]["digits_task.py"]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ex / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    (promo,) = [r for r in runs if r.data.tags.get("signtune.role") == "promote"]
    assert promo.data.metrics["test_acc"] == pytest.approx(metrics["test"]["test_acc"])
    assert promo.data.tags["signtune.winner_trial"] == str(winner["trial"])


@pytest.mark.slow
@pytest.mark.integration
def test_digits_promote_resumes_after_a_kill(digits_tuned: Path, tmp_path: Path) -> None:
    ex = tmp_path / "digits"
    shutil.copytree(digits_tuned, ex)
    args = ("promote-best", "--study", str(ex / "study.yaml"), "--epochs", "4")
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ex), "SIGNTUNE_FAULTS": "promote_kill@2"}
    killed = subprocess.run([*STUDY, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode == -9, killed.stderr
    assert not (ex / "promoted" / "metrics.json").exists()
    res = run(*args, "--resume", cwd=tmp_path, pythonpath=ex)
    assert res.returncode == 0, res.stderr
    # The plug-in continued from its epoch-2 checkpoint: only epochs 3 and 4 ran again.
    assert "epoch 3:" in res.stderr and "epoch 4:" in res.stderr and "epoch 1:" not in res.stderr
    assert json.loads((ex / "promoted" / "metrics.json").read_text())["winner"]["epochs"] == 4


def test_plugin_without_checkpoints_gets_a_clear_promote_error(fast_project: Path) -> None:
    from tests.runner.conftest import fast_spec

    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=2, delay=0.0))
    assert run("run", "--study", "fast", cwd=fast_project, pythonpath=fast_project).returncode == 0
    res = run("promote-best", "--study", "fast", cwd=fast_project, pythonpath=fast_project)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "saved no checkpoint" in res.stderr and "ctx.checkpoint(epoch" in res.stderr
    assert "README: Plug-in tasks" in " ".join(res.stderr.split())  # the README section's real name


@pytest.mark.slow
@pytest.mark.integration
def test_a_plugin_beside_its_study_needs_no_pythonpath(tmp_path: Path) -> None:
    """`task: fastplug:objective` with fastplug.py next to study.yaml: run in-process and in
    spawned workers, with only signtune itself importable."""
    from tests.runner.conftest import PLUGIN, fast_spec

    folder = tmp_path / "elsewhere" / "mystudy"
    folder.mkdir(parents=True)
    (folder / "fastplug.py").write_text(PLUGIN)
    (folder / "space.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    spec = fast_spec(trials=4, storage=f"sqlite:///{folder / 'study.db'}").replace(
        "../../search_spaces/fast.yaml", "space.yaml"
    )
    (folder / "study.yaml").write_text(spec)
    src = Path(__import__("signtune").__file__).resolve().parents[1]
    for workers in ("1", "2"):
        res = run(
            "run",
            "--study",
            str(folder / "study.yaml"),
            "--workers",
            workers,
            "--trials",
            str(2 * int(workers)),
            cwd=tmp_path,
            pythonpath=src,
        )
        assert res.returncode == 0, res.stderr
    study = optuna.load_study(study_name="fast", storage=f"sqlite:///{folder / 'study.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    missing = run("validate", str(folder / "nothing.yaml"), cwd=tmp_path, pythonpath=src)
    assert missing.returncode == 2
    (folder / "fastplug.py").unlink()
    broken = run("validate", str(folder / "study.yaml"), cwd=tmp_path, pythonpath=src)
    assert broken.returncode == 2 and "beside" in broken.stderr and "study.yaml" in broken.stderr, broken.stderr
