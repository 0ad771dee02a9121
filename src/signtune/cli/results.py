"""Commands that read a study's results: export (with the report), report, and the leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from signtune.cli.staged import StageOpt, resolve

if TYPE_CHECKING:
    from signtune.spec import StudySpec


@app.command()
@handle_errors
def export(
    study: StudyOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to write (default studies/<name>/export).")
    ] = None,
    storage: StorageOpt = None,
    stage: StageOpt = None,
) -> None:
    """Write best_params.json, trials.csv, the HTML plots and report.html; back-fill MLflow's gaps.

    A staged study exports its last stage that has finished trials, or --stage NAME.
    """
    path = _export(study, storage, out_dir, stage)
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


def _export(study: str | None, storage: str | None, out_dir: Path | None, stage: str | None = None) -> Path:
    """One export for both commands, at the settings the study's trials ran at."""
    from signtune.export import export_study
    from signtune.storage import mask_url
    from signtune.study import intermediate_metric, open_study
    from signtune.tracking import make_tracker, trials_missing

    quiet()
    spec, space, _ = load_settled(study, {"storage": storage})
    spec, _ = resolve(spec, space, stage, {})
    study_obj = open_study(spec, create=False)
    path = export_study(study_obj, spec, out_dir)
    if trials_missing(study_obj):
        try:
            filled = make_tracker(spec).backfill(study_obj, spec.objective.metric, epochs_as=intermediate_metric(spec))
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


def print_leaderboard(spec: StudySpec, top: int = 10) -> None:
    """The top trials, one line each: only the params that vary among them, by short names
    (a legend under the table says which is which; trials.csv has every value in full)."""
    from rich import box

    from signtune.study import count_states, open_study, ranked_trials

    study = open_study(spec, create=False)
    done = ranked_trials(study, spec.objective.direction)[:top]
    counts = {s.name.lower(): n for s, n in count_states(study).items()}
    total = sum(counts.values()) - counts["waiting"]
    names = varying_params(done)
    short = short_names(names)
    cells = {n: [_fmt(t.params.get(n, "-")) for t in done] for n in names}
    fixed = [
        ("#", [str(t.number) for t in done]),
        (spec.objective.metric, [f"{t.value:.2f}" for t in done]),
        ("ep", [str(t.user_attrs.get("epochs_run", "")) for t in done]),
        ("time", [f"{t.user_attrs.get('wall_time_s', 0):.0f}s" for t in done]),
    ]
    # As many varying params as the terminal's width holds, each column as wide as its cells.
    used = sum(max(len(h), *(len(c) for c in col)) + 2 for h, col in fixed) if done else 0
    shown: list[str] = []
    for name in names:
        need = max(len(short[name]), *(len(c) for c in cells[name])) + 2
        if used + need > out.width - 1:
            break
        shown.append(name)
        used += need
    out.print(
        f"[bold]{spec.name}[/]: top {len(done)} of {total} trials "
        f"(complete {counts['complete']}, pruned {counts['pruned']}, failed {counts['fail']})",
        highlight=False,
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header, col in fixed:
        table.add_column(header, justify="right", no_wrap=True, min_width=max(len(header), *map(len, col or [""])))
    for name in shown:
        table.add_column(short[name], justify="right", no_wrap=True, min_width=max(len(c) for c in cells[name]))
    for i in range(len(done)):
        table.add_row(*(col[i] for _, col in fixed), *(cells[n][i] for n in shown))
    out.print(table)
    legend = ", ".join(f"{short[n]} {n}" for n in shown if short[n] != n)
    more = f"{len(names) - len(shown)} more varying params and " if len(shown) < len(names) else ""
    out.print(
        (f"{legend}. " if legend else "") + f"{more}every value: {spec.dir / 'export' / 'trials.csv'}",
        highlight=False,
    )


def varying_params(trials: list[Any]) -> list[str]:
    """The params whose values differ among ``trials`` (in first-seen order)."""
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    return [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]


def short_names(names: list[str]) -> dict[str, str]:
    """Short column names: the initials of the last dotted part's words (``loss.label_smoothing``
    -> ``ls``) or its first four letters (``optim.lr`` -> ``lr``); clashes keep more letters."""

    def abbreviate(name: str, width: int) -> str:
        words = [w for w in name.rsplit(".", 1)[-1].split("_") if w]
        if len(words) == 1:
            return words[0] if len(words[0]) <= 6 or width > 3 else words[0][: width + 3]
        return "".join(w if w.isdigit() else w[:width] for w in words)

    short: dict[str, str] = {}
    for width in (1, 2, 3, 20):
        short = {n: abbreviate(n, width) for n in names}
        if len(set(short.values())) == len(names):
            return short
    return {n: n for n in names}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:.2g}"
