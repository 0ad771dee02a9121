"""Commands that run and mend a study: run, worker, create, status, reap, doctor."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from signtune.cli.app import (
    StorageOpt,
    StudyOpt,
    app,
    err,
    handle_errors,
    load,
    load_settled,
    out,
    prepare,
    quiet,
    tracking_override,
)
from signtune.cli.staged import refuse_stages
from signtune.errors import ConfigError, Problem

if TYPE_CHECKING:
    from collections.abc import Callable

    from signtune.runner import RunSummary
    from signtune.space import SearchSpace
    from signtune.spec import StudySpec
    from signtune.tasks import Task


@app.command()
@handle_errors
def run(
    study: StudyOpt = None,
    trials: Annotated[
        int | None, typer.Option("--trials", "-n", help="Total finished trials the study should have.")
    ] = None,
    subset: Annotated[
        float | None,
        typer.Option(help="Fraction of the train split each trial trains on (seeded, same for all trials)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per trial.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds after which no new trial starts.")] = None,
    storage: StorageOpt = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri", help="MLflow tracking URI (default: the spec's, then sqlite:///studies/<name>/mlflow.db)."
        ),
    ] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    workers: Annotated[int, typer.Option(help="Local worker processes (CPU); each gets a share of the cores.")] = 1,
    gpus: Annotated[str | None, typer.Option(help="GPUs to use: 'all' or a list like 0,1,3.")] = None,
    workers_per_gpu: Annotated[int, typer.Option("--workers-per-gpu", help="Workers sharing each GPU.")] = 1,
    quiet_: Annotated[bool, typer.Option("--quiet", "-q", help="No progress: errors and the final line only.")] = False,
    json_lines: Annotated[
        bool, typer.Option("--json-lines", help="One JSON object per event on stdout (start, trial, heartbeat, end).")
    ] = False,
    heartbeat_every: Annotated[
        float,
        typer.Option(
            "--heartbeat-every", help="Seconds between 'still running' lines when not in a terminal (0: none)."
        ),
    ] = 120.0,
) -> None:
    """Run (or resume) a study until it has --trials finished trials.

    In a terminal it draws a progress bar; redirected to a file (nohup, a cluster job) it prints
    one line per finished trial and a heartbeat line every --heartbeat-every seconds.
    """
    from signtune.runner import parse_gpus

    quiet()
    overrides: dict[str, Any] = {
        "budget.trials": trials,
        "budget.subset": subset,
        "budget.timeout": timeout,
        "fixed.run.epochs": epochs,
        "storage": storage,
        **tracking_override(tracking_uri, no_tracking),
    }
    problems = []
    if gpus is not None and workers > 1:
        problems.append(
            Problem(
                "--workers",
                f"counts CPU workers, but --gpus was given too (--workers {workers})",
                f"with GPUs, set the workers per GPU: --gpus {gpus} --workers-per-gpu {workers}",
            )
        )
    if workers < 1:
        problems.append(Problem("--workers", f"must be >= 1, but got {workers}", "e.g. --workers 2"))
    if workers_per_gpu < 1:
        problems.append(Problem("--workers-per-gpu", f"must be >= 1, but got {workers_per_gpu}", "e.g. 2"))
    if problems:
        raise ConfigError(problems)
    gpu_list = parse_gpus(gpus)
    if gpu_list is None and workers > 1:
        _note_idle_gpus(workers)
    spec, space, task = load_settled(study, overrides)
    opts = {"workers": workers, "gpus": gpu_list, "workers_per_gpu": workers_per_gpu}
    shown = {"quiet": quiet_, "json_lines": json_lines, "heartbeat_every": heartbeat_every}
    from signtune.stages import has_stages

    if has_stages(spec):
        from signtune.cli.staged import run_stages

        run_stages(spec, space, overrides, lambda s, sp, after: _run_one(s, sp, task, opts, shown, after))
        return
    _run_one(spec, space, task, opts, shown)


def _run_one(
    spec: StudySpec,
    space: SearchSpace,
    task: Task[Any],
    opts: dict[str, Any],
    shown: dict[str, Any],
    after_record: Callable[[StudySpec], None] | None = None,
) -> RunSummary:
    """One study's `study run`: data, settings, the runner, then the leaderboard and notes."""
    import time

    from signtune.cli.progress import Reporter, choose_mode
    from signtune.runner import RunEvents, run_study
    from signtune.storage import mask_url

    t0 = time.perf_counter()
    with err.status("Preparing data (generated on first use, then cached)..."):
        data = prepare(task, spec)
    _record(spec)  # after the data passed: a refused run writes nothing
    if after_record is not None:
        after_record(spec)
    clips = (  # a plug-in's data is its own business: no clip counts to show
        f"train {data['train']} clips (subset {spec.budget.subset}), val {data.get('val')}, "
        if data.get("train") is not None
        else f"subset {spec.budget.subset}, epochs {spec.epochs}, "
    )
    mode = choose_mode(quiet=shown["quiet"], json_lines=shown["json_lines"], terminal=err.is_terminal)
    if mode in ("bar", "lines"):
        err.print(
            f"[bold]{spec.name}[/]: {spec.task}, storage {mask_url(spec.storage)}, {clips}"
            f"data ready in {time.perf_counter() - t0:.1f}s",
            highlight=False,
        )
    reporter = Reporter(
        mode, out=out, err=err, metric=spec.objective.metric, epochs=spec.epochs, heartbeat_s=shown["heartbeat_every"]
    )
    reporter.start(spec.name, 0, spec.budget.trials)
    try:
        summary = run_study(
            spec,
            space,
            task,
            **opts,
            events=RunEvents(reporter.on_start, reporter.on_progress, reporter.on_epoch, reporter.on_trial),
            data_summary=data,
        )
    finally:
        reporter.close()
    reporter.end(summary)
    if mode == "json":
        return summary
    if mode == "quiet":
        out.print(
            f"{spec.name}: {summary.finished}/{summary.total} finished, best {summary.best_value} "
            f"(trial {summary.best_trial}), ran {summary.started} trial(s) in {summary.wall_time_s:.1f}s"
        )
        return summary
    if summary.started == 0:
        out.print(
            f"Study [bold]{spec.name}[/] already has {summary.finished}/{summary.total} finished trials; "
            "nothing to run. Raise --trials to run more."
        )
    from signtune.cli.results import print_leaderboard

    print_leaderboard(spec)
    if summary.stopped_by == "timeout":
        out.print(
            f"[yellow]Stopped by --timeout[/] after {summary.wall_time_s:.0f}s with "
            f"{summary.finished}/{summary.total} finished; run again to continue."
        )
    _print_run_notes(spec, summary)
    out.print(f"Ran {summary.started} trial(s) in {summary.wall_time_s:.1f}s. Exports: {spec.dir / 'export'}")
    return summary


def _print_run_notes(spec: StudySpec, summary: RunSummary) -> None:
    """What a run repaired or could not log: reaped trials, back-filled and missing MLflow runs."""
    from signtune.storage import mask_url

    if summary.reaped:
        err.print(
            f"Failed trials {summary.reaped}, left RUNNING by processes that are gone (their params are retried once).",
            highlight=False,
        )
    if summary.backfilled:
        err.print(f"MLflow: back-filled trials {summary.backfilled} it had missed.", highlight=False)
    if summary.tracking_error or summary.tracking_gaps:
        missed = f"misses trials {summary.tracking_gaps}" if summary.tracking_gaps else "missed the study's own run"
        err.print(
            f"[yellow]MLflow ({mask_url(spec.tracking_uri)}) {missed}[/]"
            + (f": {mask_url(summary.tracking_error)}" if summary.tracking_error else "")
            + f". Their results are in the study; `study export --study {spec.name}` (or the next `study run`) "
            f"back-fills MLflow once it works, and `study doctor --study {spec.name}` checks it.",
            highlight=False,
        )


def _note_idle_gpus(workers: int) -> None:
    """``--workers K`` starts CPU workers; say so when GPUs sit idle beside them."""
    from signtune.runner.placement import visible_gpus

    n = visible_gpus()
    if n:
        err.print(
            f"[yellow]Note:[/] --workers {workers} starts CPU workers; {n} GPU(s) are visible and stay idle. "
            f"To train on them: --gpus all --workers-per-gpu {max(1, workers // n)}",
            highlight=False,
        )


@app.command()
@handle_errors
def worker(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    trials: Annotated[
        int | None, typer.Option("--trials", "-n", help="The study's total budget of finished trials.")
    ] = None,
    subset: Annotated[float | None, typer.Option(help="Fraction of the train split.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per trial.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds after which no new trial starts.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    worker_id: Annotated[str | None, typer.Option("--worker-id", help="Name of this worker in trial attrs.")] = None,
    host_id: Annotated[
        str | None, typer.Option("--host-id", help="Name of this host in trial attrs (default: hostname).")
    ] = None,
) -> None:
    """Run one worker against a shared study (other hosts, SLURM, Kubernetes, compose).

    It stops when the study has its budget of finished trials; each concurrent worker may
    start at most one trial over the budget.
    """
    from signtune.runner import run_worker
    from signtune.storage import mask_url

    quiet()
    if host_id:
        os.environ["SIGNTUNE_HOST"] = host_id
    overrides = {
        "budget.trials": trials,
        "budget.subset": subset,
        "budget.timeout": timeout,
        "fixed.run.epochs": epochs,
        "storage": storage,
        **tracking_override(tracking_uri, no_tracking),
    }
    # the budget, subset and epochs `study create` or the first run stored, unless given here
    spec, space, task = load_settled(study, overrides)
    refuse_stages(spec, "study worker")
    prepare(task, spec)
    from signtune.hosts import host_id as this_host

    wid = worker_id or f"{this_host()}-{os.getpid()}"
    err.print(f"worker {wid} on {spec.name} at {mask_url(spec.storage)}", highlight=False)

    def on_trial_end(t: Any) -> None:
        value = "-" if t.value is None else f"{t.value:.3f}"
        err.print(f"trial {t.number} {t.state.name.lower()} {value}", highlight=False)

    stats = run_worker(spec, space, task, worker_id=wid, on_trial_end=on_trial_end)
    out.print(f"worker {wid}: ran {stats.started} trial(s), {stats.failed} failed; stopped by {stats.stopped_by}")


@app.command()
@handle_errors
def create(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="The study's budget.")] = None,
    subset: Annotated[float | None, typer.Option(help="Fraction of the train split.")] = None,
) -> None:
    """Create the study on its storage and queue the spec's known-good configs; run nothing."""
    from signtune.storage import mask_url
    from signtune.study import enqueue_defaults, open_study

    quiet()
    overrides = {"storage": storage, "budget.trials": trials, "budget.subset": subset}
    spec, _, _ = load_settled(study, overrides)
    refuse_stages(spec, "study create")
    _record(spec)
    s = open_study(spec)
    enqueue_defaults(s, spec)
    s.set_user_attr("spec_hash", spec.hash())
    out.print(f"study {spec.name} ready on {mask_url(spec.storage)} ({len(s.trials)} trials so far)")


@app.command()
@handle_errors
def reap(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Fail trials left RUNNING by workers that are gone (dead pid on this host, or stale heartbeat)."""
    from signtune.runner import reap as reap_trials

    quiet()
    spec, _, _ = load(study, {"storage": storage})
    numbers = reap_trials(spec)
    out.print(f"reaped {len(numbers)} trial(s): {numbers}" if numbers else "no abandoned trials")


@app.command()
@handle_errors
def doctor(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Repair what can be repaired with nothing lost (backups are kept).")
    ] = False,
    data: Annotated[bool, typer.Option("--data/--no-data", help="Also check the data (sign2text).")] = True,
) -> None:
    """Check the study's storage, trials, MLflow store and data; --repair mends what it can.

    Exit 0 when everything is (now) sound, 2 when a problem is left, each with its fix.
    """
    from signtune.doctor import Finding, diagnose

    quiet()
    spec, _, _ = load(study, {"storage": storage})

    def data_check(s: StudySpec) -> Finding:
        if s.task != "sign2text":
            return Finding("data", "ok", f"plug-in task {s.task!r}: its prepare hook checks its own data")
        from signtune.cli.data import check_data_with_progress

        report = check_data_with_progress(s)
        if report.errors:
            first = report.errors[0]
            return Finding(
                "data",
                "problem",
                f"{len(report.errors)} error(s), first: {first.split}: {first.rule}",
                f"`study data check --study {spec.name}` lists them all",
            )
        return Finding("data", "ok", f"{sum(x.rows for x in report.splits)} clips in {len(report.splits)} splits")

    findings = diagnose(spec, repair=repair, data_check=data_check if data else None)
    style = {"ok": "green", "problem": "bold red", "repaired": "yellow"}
    for f in findings:
        out.print(f"[{style[f.status]}]{f.status.upper():8}[/] {f.part}: {f.detail}", highlight=False, soft_wrap=True)
        if f.fix:
            out.print(f"         fix: {f.fix}", highlight=False, soft_wrap=True)
    if any(f.status == "problem" for f in findings):
        raise typer.Exit(2)


def _record(spec: StudySpec) -> None:
    from signtune.study import record_settings

    record_settings(spec)
