"""The ``study`` command group. The only module that prints.

User mistakes (``SigntuneError``) print one message naming the place, the rule, the value and
the fix, and exit with code 2. Ctrl-C exits with 130 and leaves the study resumable.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from signtune.errors import ConfigError, Problem, SigntuneError

app = typer.Typer(
    name="study",
    help="Hyperparameter search for sign-language translation (and any plugged-in trainer).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make and inspect data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage URL (sqlite:///, postgresql+psycopg://, journal:///); default from the spec. "
        "Env: SIGNTUNE_STORAGE.",
        envvar="SIGNTUNE_STORAGE",
        show_envvar=False,
    ),
]

StudyOpt = Annotated[
    str | None,
    typer.Option("--study", "-s", help="Study name under ./studies, a folder, or a study.yaml path. Default: demo."),
]


# What Ctrl-C leaves behind, per command that has something to say about it.
_RESUME = "Running trials were marked failed (reason: interrupted); run the same command again to resume."
INTERRUPTED: dict[str, str] = {
    "run": _RESUME,
    "worker": _RESUME,
    "promote_best_cmd": "Finished epochs are checkpointed; add --resume to the same command to go on from them.",
}


def _port_free(host: str, port: int) -> None:
    """Refuse a port another server holds, before starting ours on it.

    Raises:
        ConfigError: the address is in use (or cannot be bound).
    """
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                Problem(
                    f"--port {port}",
                    f"cannot be used on {host}: {exc.strerror or exc}",
                    f"pick another, e.g. --port {port + 1}",
                )
            ) from None


# Commands that place their own interrupt points (storage and tracking writes are never cut);
# every other command may be interrupted anywhere, as Python does by default: what they write
# goes through temporary files renamed into place, or SQLite transactions.
MANAGES_INTERRUPTS = ("run", "worker")


def handle_errors(fn: F) -> F:
    """Map user errors to exit 2 and Ctrl-C to exit 130 (SIGTERM to 143), without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from signtune import interrupts

        try:
            if fn.__name__ in MANAGES_INTERRUPTS:
                return fn(*args, **kwargs)
            with interrupts.interruptible():
                return fn(*args, **kwargs)
        except SigntuneError as exc:
            _print_problems(exc)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print(f"[yellow]Interrupted.[/] {INTERRUPTED.get(fn.__name__, '')}".rstrip())
            raise typer.Exit(interrupts.exit_code() or 130) from None

    return wrapper  # type: ignore[return-value]


def _print_problems(exc: SigntuneError) -> None:
    from signtune.storage import mask_url

    kind = {"ConfigError": "Invalid configuration", "DataError": "Invalid data", "StudyError": "Study error"}.get(
        type(exc).__name__, "Error"
    )
    n = len(exc.problems)
    err.print(f"[bold red]{kind}[/] ({n} problem{'s' if n != 1 else ''}):", highlight=False)
    for p in exc.problems:
        err.print(
            f"  [bold]{mask_url(p.where)}[/]: {mask_url(p.message)}", highlight=False, markup=True, soft_wrap=True
        )
        if p.fix:
            err.print(f"    fix: {mask_url(p.fix)}", highlight=False, soft_wrap=True)


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _load(study: str | None, overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Spec + search space + task, all validated; nothing is written."""
    from signtune.space import parse
    from signtune.spec import load_spec
    from signtune.tasks import get_task

    spec = load_spec(study, overrides)
    task = get_task(spec.task, where=f"{spec.path}: task")
    space = parse(spec.search_space, known_keys=task.config_keys())
    from signtune.space import check_params

    problems: list[Problem] = []
    for i, params in enumerate(spec.enqueue):
        problems += check_params(space, params, f"{spec.path}: enqueue[{i}]")
    if problems:
        raise ConfigError(problems)
    return spec, space, task


# What a study's trials are trained at: stored on the study at its first run (or `study create`)
# so that resuming, remote workers and exports use it, and a run at another fidelity is refused.
FIDELITY = {"budget.subset": "--subset", "fixed.run.epochs": "--epochs"}


def _fidelity_of(spec: Any) -> dict[str, Any]:
    return {"budget.subset": spec.budget.subset, "fixed.run.epochs": spec.epochs}


def _load_settled(study: str | None, overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``_load``, at the settings the study's trials run at (``_record`` stores them).

    A study keeps its first run's subset and epochs (and the budget last set by ``--trials``):
    a later command without those flags continues at the stored values, and one that asks for
    another subset or epochs is refused, since its trials would not be comparable.

    Raises:
        ConfigError: ``--subset``/``--epochs`` differ from what the study's trials ran at.
    """
    from signtune.errors import StudyError
    from signtune.runner import open_study

    spec, space, task = _load(study, overrides)
    try:
        existing = open_study(spec, create=False)
    except StudyError:
        existing = None
    stored = dict(existing.user_attrs.get("settings", {})) if existing is not None else {}
    if stored:
        problems = [
            Problem(
                flag,
                f"is {overrides[key]}, but the trials of study {spec.name!r} ran at {stored[key]}: trials at "
                "another fidelity are not comparable with them",
                f"drop {flag} to continue at {stored[key]}, or tune a new study (a copy of the spec with another name)",
            )
            for key, flag in FIDELITY.items()
            if key in stored and overrides.get(key) is not None and overrides[key] != stored[key]
        ]
        if problems:
            raise ConfigError(problems)
        settled = {k: v for k, v in stored.items() if overrides.get(k) is None}
        changed = {k: v for k, v in settled.items() if k in FIDELITY and _fidelity_of(spec)[k] != v}
        if settled.get("budget.trials") == spec.budget.trials:
            settled.pop("budget.trials")
        if settled:
            spec, space, task = _load(study, {**overrides, **settled})
        if changed:
            err.print(
                f"{spec.name}: continuing at "
                + ", ".join(f"{FIDELITY[k].lstrip('-')} {v}" for k, v in changed.items())
                + ", as the study's trials ran",
                highlight=False,
            )
    return spec, space, task


def _record(spec: Any) -> None:
    """Store the study's subset, epochs and budget on it (creating it), for later commands."""
    from signtune.runner import open_study

    settings = {**_fidelity_of(spec), "budget.trials": spec.budget.trials}
    study_obj = open_study(spec)
    if study_obj.user_attrs.get("settings") != settings:
        study_obj.set_user_attr("settings", settings)


def _prepare(task: Any, spec: Any) -> Any:
    """``task.prepare(spec)``; refused data also says where to see every problem at once."""
    from signtune import interrupts
    from signtune.doctor import check_stores
    from signtune.errors import DataError

    check_stores(spec)  # a damaged store stops here, with the fix, before anything runs
    try:
        with interrupts.interruptible():  # data is generated and packed through renamed temp files
            return task.prepare(spec)
    except DataError as exc:
        if spec.task != "sign2text":
            raise
        _print_problems(exc)
        ref = spec.name if (Path("studies") / spec.name / "study.yaml").resolve() == spec.path.resolve() else spec.path
        err.print(
            "No trial was started: the data has errors. The loader stops at the first kind it meets; "
            f"`study data check --study {ref}` lists every problem of the data at once.",
            highlight=False,
        )
        raise typer.Exit(2) from None


def _tracking_override(tracking_uri: str | None, no_tracking: bool) -> dict[str, Any]:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    o: dict[str, Any] = {}
    if uri:
        from signtune.tracking import check_tracking_uri

        problem = check_tracking_uri(uri)
        if problem:
            where = "--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI"
            raise ConfigError(Problem(where, problem[0], problem[1]))
        o["tracking.uri"] = uri
    if no_tracking:
        o["tracking.enabled"] = False
    return o


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
) -> None:
    """Run (or resume) a study until it has --trials finished trials."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from signtune.runner import RunEvents, run_study
    from signtune.storage import mask_url

    _quiet()
    overrides: dict[str, Any] = {
        "budget.trials": trials,
        "budget.subset": subset,
        "budget.timeout": timeout,
        "fixed.run.epochs": epochs,
        "storage": storage,
        **_tracking_override(tracking_uri, no_tracking),
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
    gpu_list = _parse_gpus(gpus)
    if gpu_list is None and workers > 1:
        _note_idle_gpus(workers)
    spec, space, task = _load_settled(study, overrides)
    t0 = time.perf_counter()
    with err.status("Preparing data (generated on first use, then cached)..."):
        data = _prepare(task, spec)
    _record(spec)  # after the data passed: a refused run writes nothing
    clips = (  # a plug-in's data is its own business: no clip counts to show
        f"train {data['train']} clips (subset {spec.budget.subset}), val {data.get('val')}, "
        if data.get("train") is not None
        else f"subset {spec.budget.subset}, epochs {spec.epochs}, "
    )
    err.print(
        f"[bold]{spec.name}[/]: {spec.task}, storage {mask_url(spec.storage)}, {clips}"
        f"data ready in {time.perf_counter() - t0:.1f}s",
        highlight=False,
    )
    metric = spec.objective.metric
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
        transient=False,
    )
    bar = progress.add_task(spec.name, total=spec.budget.trials, best="-", status="")

    def on_start(finished: int, total: int) -> None:
        progress.update(bar, completed=finished)

    def on_epoch(number: int, epoch: int, metrics: dict[str, float]) -> None:
        progress.update(
            bar,
            status=f"trial {number} epoch {epoch}/{spec.epochs}: {metric} {metrics.get(metric, float('nan')):.2f}",
        )

    def on_progress(finished: int, best: float | None, status: str) -> None:
        progress.update(bar, completed=finished, best=f"{best:.2f}" if best is not None else "-", status=status)

    with progress:
        summary = run_study(
            spec,
            space,
            task,
            workers=workers,
            gpus=gpu_list,
            workers_per_gpu=workers_per_gpu,
            events=RunEvents(on_start, on_progress, on_epoch),
            data_summary=data,
        )
    if summary.started == 0:
        out.print(
            f"Study [bold]{spec.name}[/] already has {summary.finished}/{summary.total} finished trials; "
            "nothing to run. Raise --trials to run more."
        )
    _print_leaderboard(spec)
    if summary.stopped_by == "timeout":
        out.print(
            f"[yellow]Stopped by --timeout[/] after {summary.wall_time_s:.0f}s with "
            f"{summary.finished}/{summary.total} finished; run again to continue."
        )
    _print_run_notes(spec, summary)
    out.print(f"Ran {summary.started} trial(s) in {summary.wall_time_s:.1f}s. Exports: {spec.dir / 'export'}")


def _print_run_notes(spec: Any, summary: Any) -> None:
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
    import torch

    n = torch.cuda.device_count()  # NVML: no CUDA context in the supervisor
    if n:
        err.print(
            f"[yellow]Note:[/] --workers {workers} starts CPU workers; {n} GPU(s) are visible and stay idle. "
            f"To train on them: --gpus all --workers-per-gpu {max(1, workers // n)}",
            highlight=False,
        )


def _parse_gpus(gpus: str | None) -> list[int] | None:
    """``all`` -> every visible GPU; ``0,1,3`` -> those; None -> CPU workers."""
    if gpus is None:
        return None
    if gpus == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError(
                Problem("--gpus all", "no CUDA GPU is visible on this machine", "drop --gpus to use CPU workers")
            )
        return list(range(n))
    try:
        ids = [int(x) for x in gpus.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            Problem(
                "--gpus", f"must be 'all' or a comma-separated list of GPU ids, but got {gpus!r}", "e.g. --gpus 0,1"
            )
        ) from None
    if not ids or any(i < 0 for i in ids):
        raise ConfigError(Problem("--gpus", f"must list GPU ids >= 0, but got {gpus!r}", "e.g. --gpus 0,1"))
    import torch

    n = torch.cuda.device_count()  # the GPUs CUDA_VISIBLE_DEVICES leaves visible (NVML, no context)
    if max(ids) >= n:
        fix = f"use ids 0 to {n - 1}, or --gpus all" if n else "drop --gpus to use CPU workers"
        raise ConfigError(Problem(f"--gpus {gpus}", f"asks for GPU {max(ids)}, but {n} CUDA GPU(s) are visible", fix))
    return ids


def _print_leaderboard(spec: Any, top: int = 10) -> None:
    from optuna.trial import TrialState

    from signtune.runner import open_study
    from signtune.study import ranked_trials

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


@app.command()
@handle_errors
def validate(
    study: Annotated[str | None, typer.Argument(help="Study name, folder or study.yaml (default: demo).")] = None,
) -> None:
    """Check a study spec, its search space and its data (as `study data check`) without running anything."""
    spec, space, _ = _load(study, {})
    if spec.task == "sign2text":
        from signtune.models import check_model_files

        # the pretrained model, tokenizer and sign encoder the spec names (files only, no weights)
        check_model_files(
            spec.base.model,
            tokenizer=spec.base.data.tokenizer,
            base_dir=spec.dir,
            max_frames=spec.base.data.max_frames,
        )
    out.print(
        f"[green]OK[/] {spec.path}: task {spec.task}, {len(space.params)} searched params, "
        f"{len(spec.enqueue)} enqueued configs, budget {spec.budget.trials} trials, subset {spec.budget.subset}"
    )
    if spec.task != "sign2text":
        return  # a plug-in reads its own data
    if spec.synthetic is not None and not spec.data_root.is_dir():
        out.print(f"data: synthetic, generated into {spec.data_root} on first use; nothing to check yet")
        return
    if _print_data_report(_check_data(spec)):
        raise typer.Exit(2)


@app.command()
@handle_errors
def export(
    study: StudyOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to write (default studies/<name>/export).")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Write best_params.json, trials.csv and HTML plots for a study; back-fill MLflow's gaps."""
    from signtune.export import export_study
    from signtune.runner import make_tracker, open_study
    from signtune.storage import mask_url
    from signtune.tracking import Tracker, backfill, trials_missing

    _quiet()
    spec, _, _ = _load_settled(study, {"storage": storage})
    study_obj = open_study(spec, create=False)
    path = export_study(study_obj, spec, out_dir)
    out.print(f"Exported to {path}")
    tracker = make_tracker(spec)
    if isinstance(tracker, Tracker) and trials_missing(study_obj):
        try:
            filled = backfill(tracker, study_obj, spec.objective.metric)
            out.print(f"MLflow: back-filled trials {filled} it had missed.")
        except Exception as exc:
            err.print(
                f"[yellow]MLflow ({mask_url(spec.tracking_uri)}) still misses trials "
                f"{[t.number for t in trials_missing(study_obj)]}[/]: {mask_url(str(exc).splitlines()[0])}. "
                f"`study doctor --study {spec.name}` checks the store.",
                highlight=False,
            )


@app.command()
@handle_errors
def status(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Show trial counts per state, the best value and the running trials."""
    import datetime as dt

    from optuna.trial import TrialState

    from signtune.runner import open_study

    _quiet()
    spec, _, _ = _load(study, {"storage": storage})
    s = open_study(spec, create=False)
    trials = s.get_trials(deepcopy=False)
    counts = {st.name.lower(): sum(t.state == st for t in trials) for st in TrialState}
    out.print(f"[bold]{spec.name}[/]: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        out.print(f"best {spec.objective.metric} {s.best_value:.2f} (trial {s.best_trial.number})")
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


@app.command()
@handle_errors
def create(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="The study's budget.")] = None,
    subset: Annotated[float | None, typer.Option(help="Fraction of the train split.")] = None,
) -> None:
    """Create the study on its storage and queue the spec's known-good configs; run nothing."""
    from signtune.runner import enqueue_defaults, open_study
    from signtune.storage import mask_url

    _quiet()
    overrides = {"storage": storage, "budget.trials": trials, "budget.subset": subset}
    spec, space, _ = _load_settled(study, overrides)
    _record(spec)
    s = open_study(spec)
    enqueue_defaults(s, spec, space)
    s.set_user_attr("spec_hash", spec.hash())
    out.print(f"study {spec.name} ready on {mask_url(spec.storage)} ({len(s.trials)} trials so far)")


@app.command()
@handle_errors
def report(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Write the single-file report (and the other exports) to studies/<name>/export/."""
    from signtune.export import export_study
    from signtune.runner import open_study

    _quiet()
    spec, _, _ = _load(study, {"storage": storage})
    path = export_study(open_study(spec, create=False), spec)
    out.print(f"Report: {path / 'report.html'}")


@app.command()
@handle_errors
def dashboard(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; keep 127.0.0.1 unless others must reach it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study's storage (read side; a running study is not disturbed)."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from signtune.storage import create_storage, mask_url

    _quiet()
    spec, _, _ = _load(study, {"storage": storage})
    _port_free(host, port)
    artifacts = spec.dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    err.print(
        f"optuna-dashboard for {spec.name} ({mask_url(spec.storage)}) on http://{host}:{port}/  (Ctrl-C stops it)"
    )
    # No heartbeat thread: the dashboard only reads and annotates; it never runs trials.
    run_server(
        create_storage(spec.storage),
        host=host,
        port=port,
        artifact_store=FileSystemArtifactStore(str(artifacts)),
    )


@app.command("mlflow-ui")
@handle_errors
def mlflow_ui(
    study: StudyOpt = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Open the MLflow UI on the study's tracking store (binds 127.0.0.1 by default)."""
    import subprocess

    spec, _, _ = _load(study, _tracking_override(tracking_uri, False))
    uri = spec.tracking_uri
    if uri.startswith(("http://", "https://")):
        out.print(f"The tracking store is a server already: open {uri}")
        return
    _port_free(host, port)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    err.print(f"MLflow UI for {spec.name} on http://{host}:{port}/  (Ctrl-C stops it)")
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:  # the server got the Ctrl-C too and stops on its own
        raise typer.Exit(0) from None
    raise typer.Exit(code)


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

    _quiet()
    if host_id:
        os.environ["SIGNTUNE_HOST"] = host_id
    overrides = {
        "budget.trials": trials,
        "budget.subset": subset,
        "budget.timeout": timeout,
        "fixed.run.epochs": epochs,
        "storage": storage,
        **_tracking_override(tracking_uri, no_tracking),
    }
    # the budget, subset and epochs `study create` or the first run stored, unless given here
    spec, space, task = _load_settled(study, overrides)
    _prepare(task, spec)
    wid = worker_id or f"{os.environ.get('SIGNTUNE_HOST') or __import__('socket').gethostname()}-{os.getpid()}"
    err.print(f"worker {wid} on {spec.name} at {mask_url(spec.storage)}", highlight=False)

    def on_trial_end(t: Any) -> None:
        value = "-" if t.value is None else f"{t.value:.3f}"
        err.print(f"trial {t.number} {t.state.name.lower()} {value}", highlight=False)

    stats = run_worker(spec, space, task, worker_id=wid, on_trial_end=on_trial_end)
    out.print(f"worker {wid}: ran {stats.started} trial(s), {stats.failed} failed; stopped by {stats.stopped_by}")


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

    _quiet()
    spec, _, _ = _load(study, {"storage": storage})

    def data_check(s: Any) -> Finding:
        if s.task != "sign2text":
            return Finding("data", "ok", f"plug-in task {s.task!r}: its prepare hook checks its own data")
        report = _check_data(s)
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


@app.command()
@handle_errors
def reap(
    study: StudyOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Fail trials left RUNNING by workers that are gone (dead pid on this host, or stale heartbeat)."""
    from signtune.runner import reap as reap_trials

    _quiet()
    spec, _, _ = _load(study, {"storage": storage})
    numbers = reap_trials(spec)
    out.print(f"reaped {len(numbers)} trial(s): {numbers}" if numbers else "no abandoned trials")


@app.command()
@handle_errors
def train(
    study: StudyOpt = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override KEY=VALUE (dotted key), repeatable.")
    ] = None,
    subset: Annotated[float | None, typer.Option(help="Fraction of the train split.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
) -> None:
    """Train one config of a study (no Optuna), e.g. to reproduce a trial."""
    from signtune.config import apply_overrides
    from signtune.objective import resolve_device
    from signtune.spec import parse_sets
    from signtune.tasks import TrialContext

    spec, _, task = _load(study, {"budget.subset": subset, "fixed.run.epochs": epochs})
    values = parse_sets(set_ or [])
    if spec.task == "sign2text":  # typed config: unknown keys and wrong types are named at once
        apply_overrides(spec.base, values, where="--set")
    cfg = task.make_config(spec, values)
    _prepare(task, spec)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        out.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), highlight=False)

    ctx = TrialContext(resolve_device(spec.device), spec.seed, spec.budget.subset, -1, spec.dir / ".scratch", spec.dir)
    result = task.fit(cfg, report, ctx)
    out.print("best: " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()), highlight=False)


@app.command("promote-best")
@handle_errors
def promote_best_cmd(
    study: StudyOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="How many of the best configs to retrain.")] = 1,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the spec's promote.epochs or run.epochs).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per config.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue candidates from their last checkpoint.")] = False,
    storage: StorageOpt = None,
) -> None:
    """Retrain the best config(s) on the full training split with checkpoints; test the winner."""
    from signtune.promote import promote_best
    from signtune.runner import open_study

    _quiet()
    problems = [
        Problem(f"--{n}", f"must be >= 1, but got {v}", f"e.g. --{n} 1")
        for n, v in (("top-k", top_k), ("seeds", seeds), ("epochs", epochs if epochs is not None else 1))
        if v < 1
    ]
    if problems:
        raise ConfigError(problems)
    spec, _, task = _load(study, {"storage": storage})
    _prepare(task, spec)

    def on_epoch(name: str, epoch: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        err.print(f"{name} epoch {epoch}: {shown}", highlight=False)

    study_obj = open_study(spec, create=False)
    result = promote_best(
        spec, study_obj, task, top_k=top_k, epochs=epochs, seeds=seeds, resume=resume, on_epoch=on_epoch
    )
    t = result.test
    if spec.task != "sign2text":  # a plug-in: its own metrics, its optional test hook
        tested = ", ".join(f"{k} {v:.4g}" for k, v in t.items()) or "no test hook (define objective.test)"
        out.print(
            f"winner: trial {result.winner.trial} seed {result.winner.seed}, "
            f"{result.metric} {result.winner.value:.4g}\ntest: {tested}\n"
            f"{result.fidelity_note}\nmodel: {result.out_dir}",
            highlight=False,
        )
        return
    label = {"val_bleu": "val BLEU", "val_chrf": "val chrF"}.get(result.metric, result.metric)
    out.print(
        f"winner: trial {result.winner.trial} seed {result.winner.seed}, {label} {result.winner.value:.2f}\n"
        f"test (beam {t['beam_size']}): BLEU {t['bleu']:.2f} (1-4-gram precisions: {t['precision1']:.1f}/"
        f"{t['precision2']:.1f}/{t['precision3']:.1f}/{t['precision4']:.1f}), chrF {t['chrf']:.2f}\n"
        f"{t['bleu_signature']}\n{result.fidelity_note}\n"
        f"model: {result.out_dir}",
        highlight=False,
    )


@app.command()
@handle_errors
def translate(
    model: Annotated[Path, typer.Option("--model", help="A promoted model folder (studies/<name>/promoted).")],
    inputs: Annotated[list[Path] | None, typer.Argument(help="Feature files (.npy/.pt) or folders of them.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="A How2Sign-style TSV manifest instead of files.")] = None,
    features: Annotated[Path | None, typer.Option(help="Features folder for --manifest (default: beside it).")] = None,
    beam: Annotated[int, typer.Option(help="Beam size (1 = greedy).")] = 5,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write .tsv or .json here (default: TSV to stdout).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Translate sign clips with a promoted model (batched, CPU or GPU)."""
    import json as _json

    from signtune.data.features import load_feature, resolve_feature_path
    from signtune.inference import load_promoted
    from signtune.inference import translate as translate_clips

    if beam < 1:
        raise ConfigError(Problem("--beam", f"must be >= 1, but got {beam}", "e.g. --beam 5"))
    if not inputs and manifest is None:
        raise ConfigError(
            Problem(
                "study translate",
                "needs feature files, a folder or --manifest",
                "e.g. study translate --model studies/demo/promoted clip.npy",
            )
        )
    promoted = load_promoted(model)
    dim = promoted.feature_dim
    items: list[tuple[str, Path]] = []
    if manifest is not None:
        from signtune.data.manifest import read_manifest

        feats_dir = features or manifest.parent / "features"
        for row in read_manifest(manifest, format="how2sign", id_column="SENTENCE_NAME", text_column="SENTENCE"):
            path = resolve_feature_path(feats_dir, row.id)
            if path is None:
                raise ConfigError(
                    Problem(
                        f"{manifest}: row {row.row}",
                        f"no feature file for id {row.id!r} in {feats_dir}",
                        "check --features",
                    )
                )
            items.append((row.id, path))
    for p in inputs or []:
        if p.is_dir():
            items += [(f.stem, f) for f in sorted(p.iterdir()) if f.suffix in (".npy", ".pt")]
        elif p.is_file():
            items.append((p.stem, p))
        else:
            raise ConfigError(Problem(str(p), "does not exist", "pass .npy/.pt files or a folder of them"))
    clips = [load_feature(path, feature_dim=dim) for _, path in items]
    hyps = translate_clips(promoted, clips, beam_size=beam, device=device)  # with the model's run.amp
    if out_file is not None and out_file.suffix == ".json":
        out_file.write_text(
            _json.dumps([{"id": i, "hypothesis": h} for (i, _), h in zip(items, hyps, strict=True)], indent=2)
        )
        err.print(f"wrote {len(hyps)} translation(s) to {out_file} (JSON)", highlight=False)
        return
    text = "id\thypothesis\n" + "".join(f"{i}\t{h}\n" for (i, _), h in zip(items, hyps, strict=True))
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {len(hyps)} translation(s) to {out_file} (tab-separated; .json gives JSON)", highlight=False)
    else:
        sys.stdout.write(text)


@data_app.command("synth")
@handle_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write features/ and the manifests into.")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    n_train: Annotated[int, typer.Option(help="Train sentences.")] = 3000,
    n_val: Annotated[int, typer.Option(help="Validation sentences.")] = 300,
    n_test: Annotated[int, typer.Option(help="Test sentences.")] = 300,
    dim: Annotated[int, typer.Option(help="Feature dimension D.")] = 64,
) -> None:
    """Write How2Sign-style synthetic data: one (T, D) .npy per sentence and TSV manifests."""
    from signtune.data.synth import generate

    problems = [
        Problem(f"--{name}", f"must be >= {low}, but got {value}", f"pass --{name} {low} or more")
        for name, value, low in (("n-train", n_train, 1), ("n-val", n_val, 1), ("n-test", n_test, 0), ("dim", dim, 4))
        if value < low
    ]
    if problems:
        raise ConfigError(problems)
    summary = generate(out_dir, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, feature_dim=dim)
    out.print(f"Wrote synthetic sign data to {out_dir}: {summary}", highlight=False)


@data_app.command("check")
@handle_errors
def data_check(
    study: StudyOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every finding to this JSON file.")
    ] = None,
) -> None:
    """Check a study's manifests and feature files; list every problem at once (exit 2 on errors)."""
    import json as _json

    spec = _sign2text_spec(study, "study data check")
    report = _check_data(spec)
    if json_path is not None:
        json_path.write_text(_json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if _print_data_report(report):
        raise typer.Exit(2)


@data_app.command("pack")
@handle_errors
def data_pack(
    study: StudyOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the pack is current.")] = False,
) -> None:
    """Pack a study's feature files into one memory-mapped store (also done on first use)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from signtune.data.dataset import pack_features

    spec = _sign2text_spec(study, "study data pack")
    progress = Progress(
        TextColumn("packing features"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        bar = progress.add_task("pack", total=None)
        info = pack_features(
            spec.base.data,
            spec.dir,
            spec.dir / ".cache",
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
            force=force,
        )
    verb = f"built in {info.seconds:.1f}s ({info.reason})" if info.built else "is current, reused"
    out.print(
        f"pack {info.path}: {info.clips} clips, {info.frames} frames of D={info.feature_dim}, "
        f"{info.bytes / 2**20:.1f} MiB; {verb}",
        highlight=False,
    )


def _sign2text_spec(study: str | None, command: str) -> Any:
    """A sign2text study's spec with its synthetic data generated when it has any."""
    from signtune.spec import load_spec

    spec = load_spec(study, {})
    if spec.task != "sign2text":
        raise ConfigError(
            Problem(
                f"{spec.path}: task",
                f"is the plug-in {spec.task!r}; {command} reads the data.* config of the sign2text task",
                "check and load a plug-in's data in its own prepare hook",
            )
        )
    if spec.synthetic is not None:
        from signtune.tasks import ensure_spec_data

        with err.status("Generating the synthetic data (first use only)..."):
            ensure_spec_data(spec)
    return spec


def _check_data(spec: Any) -> Any:
    """Run the data check of a sign2text study, with a progress bar per split (on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from signtune.data.check import check_data

    progress = Progress(
        TextColumn("checking {task.description} features"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    bars: dict[str, TaskID] = {}

    def on_file(split: str, done: int, total: int) -> None:
        if split not in bars:
            bars[split] = progress.add_task(split, total=total)
        progress.update(bars[split], completed=done)

    with progress:
        return check_data(spec.base.data, spec.dir, progress=on_file)


def _print_data_report(report: Any, shown: int = 3) -> bool:
    """Print a data check's splits and findings; True when there are errors."""
    from signtune.storage import mask_url

    for s in report.splits:
        frames = f", frames median {s.frames_median:g} (max {s.frames_max})" if s.frames_median is not None else ""
        words = f", words median {s.words_median:g}" if s.words_median is not None else ""
        out.print(f"data {s.name}: {s.rows} clips, {s.clips} feature files read{frames}{words}", highlight=False)
    n_err, n_warn = len(report.errors), len(report.warnings)
    if not report.findings:
        out.print(f"[green]OK[/] data in {report.root}: no findings")
        return False

    def first(items: tuple[Any, ...]) -> str:
        more = f" +{len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(map(str, items[:shown])) + more

    wide = out.width >= 120  # narrower terminals get the fix inside the message cell
    table = Table(title=f"data check of {report.root}: {n_err} errors, {n_warn} warnings", show_lines=True, expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("split", no_wrap=True)
    table.add_column("rule", no_wrap=wide, overflow="fold")
    table.add_column("rows / ids", overflow="fold", ratio=2)
    table.add_column("message", overflow="fold", ratio=4)
    if wide:
        table.add_column("fix", overflow="fold", ratio=2)
    style = {"error": "bold red", "warning": "yellow", "info": "dim"}
    for f in report.findings:
        rows = f"rows {first(f.rows)}" if f.rows else ""
        ids = f"ids {first(tuple(dict.fromkeys(f.ids)))}" if f.ids else ""
        message = f"{mask_url(f.where)}\n{mask_url(f.message)}"
        fix = [Text(f.fix)] if wide else []
        if f.fix and not wide:
            message += f"\nfix: {f.fix}"
        table.add_row(
            f"[{style[f.severity]}]{f.severity}[/]",
            f.split,
            f.rule,
            Text("\n".join(x for x in (rows, ids) if x)),
            Text(message),
            *fix,
        )
    out.print(table)
    if n_err:
        out.print(
            f"[bold red]{n_err} data error{'s' if n_err != 1 else ''}[/]: "
            "`study run` refuses this data until they are fixed."
        )
    return n_err > 0


def main() -> None:  # pragma: no cover
    from signtune import interrupts

    interrupts.install()
    try:
        app()
    finally:
        interrupts.ignore_from_now()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
