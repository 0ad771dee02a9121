"""`study run --workers 4` with MLflow on the default SQLite store: one parent, a child per trial."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from tests.browse.conftest import BrowseProject, run_cli

from signtune.storage import create_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 12


def test_four_workers_log_one_parent_and_a_child_per_trial(browse_project: BrowseProject) -> None:
    from mlflow.tracking import MlflowClient

    # No enqueued configs: on SQLite, workers popping one waiting trial at once may both run
    # it (test_a_waiting_trial_goes_to_one_worker below).
    name = browse_project.new_study(trials=TRIALS, epochs=4, delay=0.05)
    res = run_cli("run", "--study", name, "--workers", "4", cwd=browse_project.root)
    assert res.returncode == 0, res.stderr[-3000:]

    db = browse_project.mlflow_db(name)
    assert db.is_file(), "tracking on by default writes studies/<name>/mlflow.db"
    study = optuna.load_study(study_name=name, storage=create_storage(browse_project.storage(name)))
    trials = study.get_trials()
    assert len(trials) == TRIALS, res.stderr[-3000:]
    assert [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner pruned nothing; configs far from x = 0.3 should be pruned"

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None, "one experiment per study, named after it"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("signtune.role") == "study"]
    children = [r for r in runs if r.data.tags.get("signtune.role") == "trial"]
    assert len(parents) == 1 and len(children) == TRIALS and len(runs) == 1 + TRIALS
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags.get("mlflow.parentRunId") for c in children} == {parent.info.run_id}

    by_number = {int(c.data.tags["signtune.trial"]): c for c in children}
    assert sorted(by_number) == [t.number for t in trials], "one child run per trial number"
    workers = set()
    for t in trials:
        child = by_number[t.number]
        assert t.user_attrs.get("mlflow_run_id") == child.info.run_id, f"trial {t.number}"
        tags = child.data.tags
        assert tags["signtune.host"] == t.user_attrs["host"]
        assert tags["signtune.worker"] == str(t.user_attrs["worker"])
        workers.add(tags["signtune.worker"])
        state = "pruned" if t.state == TrialState.PRUNED else "complete"
        assert tags.get("signtune.state") == state, f"trial {t.number}"
        assert child.info.status == "FINISHED", "pruned runs end FINISHED too, tagged signtune.state=pruned"
        assert child.data.params.get("x") == str(t.params["x"])

        history = sorted(client.get_metric_history(child.info.run_id, "score"), key=lambda m: m.step)
        assert len(history) == len(t.intermediate_values) == t.user_attrs["epochs_run"], f"trial {t.number}"
        assert {m.step: m.value for m in history} == t.intermediate_values, f"trial {t.number}"
    assert len(workers) > 1, "trials ran in several workers"

    assert parent.data.metrics.get("best_value") == study.best_value
    best_tags = {k: v for k, v in parent.data.tags.items() if k.startswith("best.")}
    assert best_tags == {"best.x": str(study.best_params["x"])}
    exported = {a.path for a in client.list_artifacts(parent.info.run_id, "export")}
    assert {"export/report.html", "export/best_params.json", "export/trials.csv"} <= exported


def _ask_at_once(url: str, name: str, rounds: int, barrier: Any, out: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=create_storage(url))
    numbers = []
    for _ in range(rounds):
        barrier.wait()  # every worker asks for its next trial at the same moment
        numbers.append(study.ask().number)
    out.put(numbers)


def test_a_waiting_trial_goes_to_one_worker(tmp_path: Path) -> None:
    """Enqueued configs (study.yaml enqueue, retries of failed trials) must each run once.

    SQLite ignores SELECT ... FOR UPDATE; signtune's storage starts SQLite transactions with
    BEGIN IMMEDIATE so that one worker at a time pops a WAITING trial. Without it, when two
    workers run one trial, the slower one's tell raises "Cannot tell a COMPLETE trial",
    the worker process dies, its budget slot is lost (the study ends one trial short, exit 0),
    and MLflow keeps two child runs for that trial number, one of them RUNNING forever.
    """
    workers, rounds = 4, 3
    url, name = f"sqlite:///{tmp_path / 'race.db'}", "race"
    study = optuna.create_study(study_name=name, storage=create_storage(url))
    for i in range(workers * rounds):
        study.enqueue_trial({"x": i / 100})
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_ask_at_once, args=(url, name, rounds, barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        handed = [n for _ in procs for n in out.get(timeout=90)]
    finally:
        for p in procs:
            p.join(10)
            if p.exitcode is None:
                p.kill()
    assert sorted(handed) == sorted(set(handed)), f"trials handed to two workers at once: {sorted(handed)}"
