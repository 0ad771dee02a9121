"""Study exports: ``best_params.json``, ``trials.csv``, HTML plots, ``advice.md`` and ``report.html``.

plotly.js (~4.8 MB) is written once per export, as ``plotly.min.js`` beside the plot pages
that load it; ``report.html`` is the one file to mail, with plotly.js inlined once. Nothing
loads from the network, so every page renders offline.

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

from signtune.advice import Advice, advice_markdown, lineage_line, lineage_of, study_advice
from signtune.errors import Problem, StudyError
from signtune.folders import commit_dir
from signtune.spec import StudySpec
from signtune.storage import mask_url
from signtune.study import objective_value, ranked_trials

PLOTS = ("param_importances", "optimization_history", "parallel_coordinate", "intermediate_values")
PLOTLY_JS = "plotly.min.js"  # the plot pages' shared copy of plotly.js, beside them


def export_study(study: optuna.Study, spec: StudySpec, out_dir: Path | None = None) -> Path:
    """Write the exports of ``study`` to ``out_dir`` (default ``studies/<name>/export``)."""
    out = out_dir or spec.dir / "export"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        trials = study.get_trials(deepcopy=False)
        doc = masked(best_params_doc(study, spec))
        (tmp / "best_params.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        write_trials_csv(trials, tmp / "trials.csv")
        figures = {name: _figure(study, name) for name in PLOTS}
        for name, fig in figures.items():
            (tmp / f"{name}.html").write_text(_page(study, name, fig), encoding="utf-8")
        if any(not isinstance(fig, str) for fig in figures.values()):
            from plotly.offline import get_plotlyjs

            (tmp / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
        advice = _advice(study, spec)
        (tmp / "advice.md").write_text(advice_markdown(study.study_name, advice), encoding="utf-8")
        (tmp / "report.html").write_text(report_html(study, spec, figures, advice), encoding="utf-8")
        commit_dir(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StudyError(
            Problem(
                f"export {out}",
                f"cannot be written: {exc.strerror or exc} (the study itself is intact)",
                "free disk space, or pick another folder with --out",
            )
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def masked(obj: Any) -> Any:
    """``obj`` with the password of every URL in its strings replaced by ``***``.

    A fixed config value such as ``db_url: postgresql+psycopg://user:PW@host/db`` must not reach
    an exported file.
    """
    if isinstance(obj, str):
        return mask_url(obj)
    if isinstance(obj, dict):
        return {masked(k): masked(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [masked(v) for v in obj]
    return obj


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
    links = lineage_of(study, spec)
    if links:
        doc["lineage"] = links
    if not complete:
        doc.update(value=None, trial=None, params={}, note="no trial completed yet")
        return doc
    best = study.best_trial
    from signtune.tasks import get_task

    fixed = get_task(spec.task, study_dir=spec.dir).fixed_config(spec)
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
    return f"study train --study {spec.path} --subset {spec.budget.subset} --epochs {spec.epochs} {sets}".strip()


def write_trials_csv(trials: list[FrozenTrial], path: Path) -> None:
    param_names = sorted({k for t in trials for k in t.params})
    attr_names = [
        "reason",
        "subset",
        "epochs",
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
            value = objective_value(t)
            w.writerow(
                masked(
                    [t.number, t.state.name, "" if value is None else value]
                    + [t.user_attrs.get(a, "") for a in attr_names]
                    + [t.params.get(p, "") for p in param_names]
                )
            )


def _figure(study: optuna.Study, name: str) -> Any:
    """A plotly figure, or the reason it cannot be drawn yet (a string)."""
    import optuna.visualization as vis

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    try:
        if name == "param_importances":
            if len(complete) < 2:
                return "parameter importances need at least 2 complete trials"
            fig = vis.plot_param_importances(study)
        elif name == "optimization_history":
            fig = vis.plot_optimization_history(study)
        elif name == "parallel_coordinate":
            fig = vis.plot_parallel_coordinate(study)
        else:
            fig = vis.plot_intermediate_values(study)
    except Exception as exc:  # a plot that can't be drawn must not sink the export
        return str(exc)
    fig.update_layout(title=f"{study.study_name}: {name.replace('_', ' ')}")
    return fig


def _unavailable(name: str, why: str) -> str:
    return (
        f"<p class='signtune-unavailable'>{html.escape(name.replace('_', ' '))}: not available yet "
        f"({html.escape(why)}).</p>"
    )


def _page(study: optuna.Study, name: str, fig: Any) -> str:
    """One HTML plot that loads ``plotly.min.js`` from its own folder, or a page that says why it is empty."""
    if isinstance(fig, str):
        return f"<!doctype html><meta charset='utf-8'><title>{name}</title>" + _unavailable(name, fig)
    # "directory" writes <script src="plotly.min.js">: a relative path, so it works offline
    # wherever the folder is copied; export_study writes that file once.
    return str(fig.to_html(include_plotlyjs="directory", full_html=True))


# The report fits the page at any width: a table wider than the page (the leaderboard has a
# column per param) scrolls sideways inside its own box, with its first column (the trial
# number, or the key) kept in view; column names wrap after their dots and underscores, and
# long words in headings and text wrap.
REPORT_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "h1,h2,p{overflow-wrap:anywhere}"
    "code{background:#f4f4f4;padding:2px 4px}"
    ".signtune-table{max-width:100%;overflow-x:auto;margin-bottom:1em}"
    "table{border-collapse:separate;border-spacing:0;border-top:1px solid #ccc;border-left:1px solid #ccc}"
    "td,th{border-right:1px solid #ccc;border-bottom:1px solid #ccc;padding:3px 8px;text-align:right;"
    "white-space:nowrap;background:#fff}"
    "th{background:#f4f4f4}thead th{white-space:normal;vertical-align:bottom}"
    "tbody tr:nth-child(even) td{background:#f9f9f9}"
    "tr>:first-child{position:sticky;left:0;z-index:1}"
)


def _advice(study: optuna.Study, spec: StudySpec) -> list[Advice]:
    """The search-space advice of ``signtune.refine`` (none when the space no longer parses)."""
    from signtune.errors import ConfigError
    from signtune.space import parse

    try:
        space = parse(spec.search_space)
    except ConfigError:
        return []
    return study_advice(study, spec, space)


def report_html(
    study: optuna.Study,
    spec: StudySpec,
    figures: dict[str, Any] | None = None,
    advice: list[Advice] | None = None,
) -> str:
    """The single-file study report: summary, lineage, leaderboard, best config, advice, plots,
    failures, data.

    plotly.js is inlined once, so the file opens offline.
    """
    figures = figures or {name: _figure(study, name) for name in PLOTS}
    advice = _advice(study, spec) if advice is None else advice
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    doc = masked(best_params_doc(study, spec))

    def esc(text: str) -> str:
        return html.escape(mask_url(text))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>signtune report: {esc(study.study_name)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>Study <code>{esc(study.study_name)}</code></h1>",
        f"<p>task <b>{esc(spec.task)}</b>, objective <b>{esc(spec.objective.metric)}</b> "
        f"({esc(spec.objective.direction)}), storage <code>{esc(mask_url(spec.storage))}</code>, "
        f"budget {spec.budget.trials} trials, subset {spec.budget.subset}, spec hash {esc(spec.hash())}.</p>",
        "<p>" + ", ".join(f"{k}: {v}" for k, v in counts.items() if v) + "</p>",
    ]
    links = lineage_of(study, spec)
    if links:
        parts.append(f"<p class='signtune-lineage'>{esc(lineage_line(links))}</p>")
    if doc.get("trial") is not None:
        parts += [
            f"<h2>Best: {doc['value']:.3f} (trial {doc['trial']})</h2>",
            _kv_table(doc["params"]),
            f"<p>Reproduce: <code>{esc(str(doc['reproduce']))}</code></p>",
            f"<p>Score signature: <code>{esc(str(doc.get('bleu_signature') or '-'))}</code></p>",
        ]
    parts += ["<h2>Leaderboard</h2>", _leaderboard(study, spec)]
    if advice:
        items = "".join(f"<li><b>{esc(a.param)}</b>: {esc(a.finding)}. Fix: {esc(a.fix)}</li>" for a in advice)
        parts += ["<h2>Search-space advice</h2>", f"<ul class='signtune-advice'>{items}</ul>"]
    parts += ["<h2>Pruned and failed trials</h2>", _reasons(trials)]
    data = study.user_attrs.get("data")
    if isinstance(data, dict) and data:
        parts += ["<h2>Data</h2>", _kv_table(data)]
    first = True
    for name in PLOTS:
        parts.append(f"<h2>{esc(name.replace('_', ' ').capitalize())}</h2>")
        fig = figures[name]
        if isinstance(fig, str):
            parts.append(_unavailable(name, fig))
            continue
        parts.append(str(fig.to_html(include_plotlyjs=first, full_html=False)))
        first = False
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(rows: list[list[Any]], head: list[str] | None = None, *, key_column: bool = False) -> str:
    """An HTML table in a box that scrolls sideways when the table is wider than the page.

    Column names may break after their dots and underscores; with ``key_column`` each
    row's first cell is a ``<th>``.
    """

    def cell(value: Any, tag: str = "td") -> str:
        return f"<{tag}>{html.escape(mask_url(str(value)))}</{tag}>"

    thead = ""
    if head:
        names = "".join(f"<th>{_breakable(html.escape(n))}</th>" for n in head)
        thead = f"<thead><tr>{names}</tr></thead>"
    body = "".join(
        "<tr>" + (cell(r[0], "th") if key_column else cell(r[0])) + "".join(cell(c) for c in r[1:]) + "</tr>"
        for r in rows
    )
    return f"<div class='signtune-table'><table>{thead}<tbody>{body}</tbody></table></div>"


def _breakable(name: str) -> str:
    """``name`` with a line-break opportunity after each ``.`` and ``_``."""
    return name.replace(".", ".<wbr>").replace("_", "_<wbr>")


def _kv_table(d: dict[str, Any]) -> str:
    return _table([[k, v] for k, v in d.items()], key_column=True)


def _leaderboard(study: optuna.Study, spec: StudySpec, top: int = 15) -> str:
    done = ranked_trials(study, spec.objective.direction)[:top]
    if not done:
        return "<p>No complete trial yet.</p>"
    names = sorted({k for t in done for k in t.params})
    rows = [
        [t.number, f"{t.value:.3f}", t.user_attrs.get("epochs_run", ""), _fmt(t.user_attrs.get("wall_time_s", ""))]
        + [_fmt(t.params.get(n, "")) for n in names]
        for t in done
    ]
    return _table(rows, ["#", spec.objective.metric, "epochs", "time (s)", *names])


def _reasons(trials: list[FrozenTrial]) -> str:
    tally: dict[tuple[str, str], int] = {}
    for t in trials:
        if t.state in (TrialState.PRUNED, TrialState.FAIL):
            key = (t.state.name.lower(), str(t.user_attrs.get("reason", "unknown")))
            tally[key] = tally.get(key, 0) + 1
    if not tally:
        return "<p>None.</p>"
    rows = [[state, reason, n] for (state, reason), n in sorted(tally.items())]
    return _table(rows, ["state", "reason", "trials"])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
