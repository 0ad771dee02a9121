"""Storage stress: W workers x N trials of a short task on SQLite, journal and PostgreSQL.

    python -m benchmarks.storage_stress --workers 16 --trials 200 --task-s 0.05

Reports, per backend: wall time, lock errors (trials failed or workers crashed on a storage
error), finished trials (must equal N), and the storage overhead per trial: the worker time
per trial beyond the task's own sleep, measured between the first trial's start and the
last trial's end (process start-up excluded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("SIGNTUNE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def task(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
    """The benchmark's plug-in task: one report, then sleep for the configured time."""
    time.sleep(float(config["task_s"]))
    score = -((config["x"] - 0.3) ** 2)
    report(1, {"score": score})
    return {"score": score}


def _postgres_up() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=2):
            return True
    except Exception:
        return False


def run_backend(backend: str, *, workers: int, trials: int, task_s: float, root: Path) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from signtune.runner import run_study
    from signtune.space import parse
    from signtune.spec import load_spec
    from signtune.storage import create_storage
    from signtune.tasks import get_task

    name = f"stress{uuid.uuid4().hex[:6]}"
    url = {
        "sqlite": f"sqlite:///{root}/{name}.db",
        "journal": f"journal:///{root}/{name}.log",
        "postgresql": PG_URL,
    }[backend]
    study_dir = root / name
    study_dir.mkdir(parents=True)
    (study_dir / "space.yaml").write_text("# stress\nparams:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    (study_dir / "study.yaml").write_text(
        textwrap.dedent(
            f"""\
            # python -m benchmarks.storage_stress
            name: {name}
            task: benchmarks.storage_stress:task
            search_space: space.yaml
            fixed: {{task_s: {task_s}, run.device: cpu}}
            objective: {{metric: score, direction: maximize}}
            sampler: {{name: random, seed: 0}}
            pruner: {{name: none}}
            budget: {{trials: {trials}}}
            tracking: {{enabled: false}}
            storage: {url}
            """
        )
    )
    spec = load_spec(str(study_dir / "study.yaml"))
    task_obj = get_task(spec.task)
    space = parse(spec.search_space, known_keys=None)
    t0 = time.perf_counter()
    error = ""
    try:
        run_study(spec, space, task_obj, workers=workers)
    except Exception as exc:  # a storage failure that stopped the run counts as a lock error
        error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=create_storage(url))
    all_trials = study.get_trials()
    finished = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in all_trials if t.state == TrialState.FAIL]
    lock_errors = sum("locked" in str(t.user_attrs.get("error", "")).lower() for t in failed) + (1 if error else 0)
    starts = [t.datetime_start for t in all_trials if t.datetime_start]
    ends = [t.datetime_complete for t in all_trials if t.datetime_complete]
    busy = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    overhead_ms = (busy * workers - len(all_trials) * task_s) / max(1, len(all_trials)) * 1000
    if backend == "postgresql":
        optuna.delete_study(study_name=name, storage=create_storage(url))
    return {
        "backend": backend,
        "workers": workers,
        "trials": trials,
        "finished": len(finished),
        "failed": len(failed),
        "lock_errors": lock_errors,
        "wall_s": round(wall, 1),
        "trials_window_s": round(busy, 1),
        "overhead_ms_per_trial": round(overhead_ms, 1),
        "error": error[:200],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--task-s", type=float, default=0.05)
    ap.add_argument("--backends", default="sqlite,journal,postgresql")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for backend in args.backends.split(","):
                if backend == "postgresql" and not _postgres_up():
                    rows.append({"backend": backend, "error": "PostgreSQL on 127.0.0.1:5432 is not reachable"})
                    continue
                rows.append(
                    run_backend(backend, workers=args.workers, trials=args.trials, task_s=args.task_s, root=Path(tmp))
                )
                print(rows[-1], flush=True)
        finally:  # the suite runs other benchmarks after this one, from the caller's folder
            os.chdir(cwd)
    return rows


if __name__ == "__main__":
    main()
