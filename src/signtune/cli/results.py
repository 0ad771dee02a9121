"""Commands that read a study's results: export (with the report), report, and the leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from signtune.cli.app import (
    StorageOpt,
    StudyOpt,
    app,
    err,
    handle_errors,
    load_settled,
    out,
    quiet,
)


@app.command()
@handle_errors
def export(
    study: StudyOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to write (default studies/<name>/export).")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Write best_params.json, trials.csv, the HTML plots and report.html; back-fill MLflow's gaps."""
    path = _export(study, storage, out_dir)
    out.print(f"Exported to {path}")


@app.command()
@handle_errors
def report(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """The same as `study export`, naming the single-file report it writes."""
    path = _export(study, storage, None)
    out.print(f"Report: {path / 'report.html'}")


def _export(study: str | None, storage: str | None, out_dir: Path | None) -> Path:
    """One export for both commands, at the settings the study's trials ran at."""
    from signtune.export import export_study
    from signtune.storage import mask_url
    from signtune.study import open_study
    from signtune.tracking import make_tracker, trials_missing

    quiet()
    spec, _, _ = load_settled(study, {"storage": storage})
    study_obj = open_study(spec, create=False)
    path = export_study(study_obj, spec, out_dir)
    if trials_missing(study_obj):
        try:
            filled = make_tracker(spec).backfill(study_obj, spec.objective.metric)
            if filled:
                out.print(f"MLflow: back-filled trials {filled} it had missed.")
        except Exception as exc:
            err.print(
                f"[yellow]MLflow ({mask_url(spec.tracking_uri)}) still misses trials "
                f"{[t.number for t in trials_missing(study_obj)]}[/]: {mask_url(str(exc).splitlines()[0])}. "
                f"`study doctor --study {spec.name}` checks the store.",
                highlight=False,
            )
    return path


def print_leaderboard(spec: Any, top: int = 10) -> None:
    from optuna.trial import TrialState

    from signtune.study import open_study, ranked_trials

    study = open_study(spec, create=False)
    trials = study.get_trials(deepcopy=False)
    done = ranked_trials(study, spec.objective.direction)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    table = Table(
        title=f"{spec.name}: top {min(top, len(done))} of {len(trials)} trials "
        f"(complete {counts['complete']}, pruned {counts['pruned']}, failed {counts['fail']})",
        show_lines=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column(spec.objective.metric, justify="right", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("params", overflow="fold")
    for t in done[:top]:
        params = "  ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in t.params.items())
        table.add_row(
            str(t.number),
            f"{t.value:.2f}",
            str(t.user_attrs.get("epochs_run", "")),
            f"{t.user_attrs.get('wall_time_s', 0):.0f}s",
            params,
        )
    out.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
