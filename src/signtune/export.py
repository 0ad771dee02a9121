"""Study exports: ``best_params.json``, ``trials.csv`` and self-contained HTML plots.

Files are written into a temporary sibling folder and swapped in at the end, so a failed
export (disk full, Ctrl-C) leaves the previous export intact and the study untouched.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune.errors import StudyError
from signtune.spec import StudySpec
from signtune.storage import mask_url

PLOTS = ("param_importances", "optimization_history", "parallel_coordinate", "intermediate_values")


def export_study(study: optuna.Study, spec: StudySpec, out_dir: Path | None = None) -> Path:
    """Write the exports of ``study`` to ``out_dir`` (default ``studies/<name>/export``)."""
    out = out_dir or spec.dir / "export"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        trials = study.get_trials(deepcopy=False)
        (tmp / "best_params.json").write_text(json.dumps(best_params_doc(study, spec), indent=2, default=str) + "\n")
        write_trials_csv(trials, tmp / "trials.csv")
        for name in PLOTS:
            (tmp / f"{name}.html").write_text(_plot_html(study, name), encoding="utf-8")
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StudyError(
            f"cannot write the export to {out}: {exc.strerror or exc}; free disk space or pick another folder with --out. The study itself is intact."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def best_params_doc(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    doc: dict[str, Any] = {
        "study": study.study_name,
        "storage": mask_url(spec.storage),
        "metric": spec.objective.metric,
        "direction": spec.objective.direction,
        "spec_hash": spec.hash(),
        "n_trials": len(study.get_trials(deepcopy=False)),
        "n_complete": len(complete),
    }
    if not complete:
        doc.update(value=None, trial=None, params={}, note="no trial completed yet")
        return doc
    best = study.best_trial
    from signtune.tasks import get_task

    fixed = get_task(spec.task).fixed_config(spec)
    doc.update(
        value=best.value,
        trial=best.number,
        params=best.params,
        fixed={k: v for k, v in fixed.items() if k not in best.params},
        epochs_run=best.user_attrs.get("epochs_run"),
        bleu_signature=best.user_attrs.get("bleu_signature"),
        reproduce=reproduce_command(spec, best),
    )
    return doc


def reproduce_command(spec: StudySpec, trial: FrozenTrial) -> str:
    """A `study train` command line that re-runs ``trial``'s config."""
    sets = " ".join(f"--set {k}={v}" for k, v in sorted(trial.params.items()))
    return f"study train --study {spec.path} --subset {spec.budget.subset} {sets}".strip()


def write_trials_csv(trials: list[FrozenTrial], path: Path) -> None:
    param_names = sorted({k for t in trials for k in t.params})
    attr_names = [
        "reason",
        "epochs_run",
        "wall_time_s",
        "n_params",
        "device",
        "host",
        "worker",
        "seed",
        "mlflow_run_id",
    ]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", *attr_names, *param_names])
        for t in trials:
            w.writerow(
                [t.number, t.state.name, "" if t.value is None else t.value]
                + [t.user_attrs.get(a, "") for a in attr_names]
                + [t.params.get(p, "") for p in param_names]
            )


def _plot_html(study: optuna.Study, name: str) -> str:
    """One self-contained HTML plot (plotly.js inlined), or a page that says why it is empty."""
    import optuna.visualization as vis

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    try:
        if name == "param_importances":
            if len(complete) < 2:
                raise ValueError("parameter importances need at least 2 complete trials")
            fig = vis.plot_param_importances(study)
        elif name == "optimization_history":
            fig = vis.plot_optimization_history(study)
        elif name == "parallel_coordinate":
            fig = vis.plot_parallel_coordinate(study)
        else:
            fig = vis.plot_intermediate_values(study)
    except Exception as exc:  # a plot that can't be drawn must not sink the export
        return (
            "<!doctype html><meta charset='utf-8'><title>" + name + "</title>"
            f"<p class='signtune-unavailable'>{html.escape(name.replace('_', ' '))}: not available yet "
            f"({html.escape(str(exc))}).</p>"
        )
    fig.update_layout(title=f"{study.study_name}: {name.replace('_', ' ')}")
    return str(fig.to_html(include_plotlyjs=True, full_html=True))
