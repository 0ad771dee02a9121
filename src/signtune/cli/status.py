"""``study status``: trial counts, the best value, lineage and advice, hosts and running trials."""

from __future__ import annotations

from rich.table import Table

from signtune.cli.app import StorageOpt, StudyOpt, app, handle_errors, load, out, quiet
from signtune.cli.staged import StageOpt
from signtune.errors import StudyError

ADVICE_SHOWN = 5  # `study status` shows this many advice lines; `study export` writes them all


@app.command()
@handle_errors
def status(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    stage: StageOpt = None,
) -> None:
    """Show trial counts per state, the best value and the running trials.

    A staged study lists its stages with their progress, then shows the last stage that has
    finished trials (or --stage NAME).
    """
    import datetime as dt

    from optuna.trial import TrialState

    from signtune.advice import advice_lines, lineage_line, lineage_of, study_advice
    from signtune.cli.staged import print_stages, resolve
    from signtune.stages import has_stages
    from signtune.study import count_states, open_study

    quiet()
    spec, space, _ = load(study, {"storage": storage})
    if has_stages(spec):
        print_stages(spec, space)
    try:
        spec, _ = resolve(spec, space, stage, {})
    except StudyError:
        if stage is None and has_stages(spec):  # the table said it: no stage has run yet
            return
        raise
    s = open_study(spec, create=False)
    trials = s.get_trials(deepcopy=False)
    counts = {st.name.lower(): n for st, n in count_states(s).items()}
    out.print(f"[bold]{spec.name}[/]: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    links = lineage_of(s, spec)
    if links:
        out.print(lineage_line(links), highlight=False, markup=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        out.print(f"best {spec.objective.metric} {s.best_value:.2f} (trial {s.best_trial.number})")
    advice = advice_lines(study_advice(s, spec, space))
    for line in advice[:ADVICE_SHOWN]:
        out.print(f"advice: {line}", highlight=False, markup=False, soft_wrap=True)
    if len(advice) > ADVICE_SHOWN:
        out.print(f"advice: {len(advice) - ADVICE_SHOWN} more in advice.md (study export)", highlight=False)
    hosts: dict[str, dict[str, int]] = {}
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        row = hosts.setdefault(str(t.user_attrs.get("host", "?")), {})
        row[t.state.name.lower()] = row.get(t.state.name.lower(), 0) + 1
    if hosts:
        table = Table(title="trials per host")
        table.add_column("host")
        for c in ("complete", "pruned", "fail", "running"):
            table.add_column(c, justify="right")
        for host, row in sorted(hosts.items()):
            table.add_row(host, *(str(row.get(c, 0)) for c in ("complete", "pruned", "fail", "running")))
        out.print(table)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        table = Table(title="running")
        for c in ("#", "host", "worker", "gpu", "age"):
            table.add_column(c)
        now = dt.datetime.now()
        for t in running:
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0
            table.add_row(
                str(t.number),
                str(t.user_attrs.get("host", "")),
                str(t.user_attrs.get("worker", "")),
                str(t.user_attrs.get("gpu", "")),
                f"{age:.0f}s",
            )
        out.print(table)
