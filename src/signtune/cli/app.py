"""The ``study`` Typer app and what every command shares: options, error mapping, loading.

User mistakes (``SigntuneError``) print one message naming the place, the rule, the value and
the fix, and exit with code 2. Ctrl-C exits with 130 (SIGTERM 143) and leaves the study
resumable. The ``cli`` package is the only place that prints.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from signtune.errors import ConfigError, Problem, SigntuneError

if TYPE_CHECKING:
    from signtune.spec import StudySpec
    from signtune.study import StudyDef
    from signtune.tasks import Task

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
            print_problems(exc)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print(f"[yellow]Interrupted.[/] {INTERRUPTED.get(fn.__name__, '')}".rstrip())
            raise typer.Exit(interrupts.exit_code() or 130) from None

    return wrapper  # type: ignore[return-value]


def print_problems(exc: SigntuneError) -> None:
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


def quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def load(study: str | None, overrides: dict[str, Any]) -> StudyDef:
    """Spec + search space + task, all validated; nothing is written."""
    from signtune.study import load_def

    return load_def(study, overrides)


def load_settled(study: str | None, overrides: dict[str, Any]) -> StudyDef:
    """``load``, at the settings the study's trials run at (see ``signtune.study.stored_settings``).

    Raises:
        ConfigError: ``--subset``/``--epochs`` differ from what the study's trials ran at.
    """
    from signtune.study import stored_settings

    loaded = load(study, overrides)
    if loaded.spec.raw.get("stages") is not None:  # each stage keeps its own (cli/staged.py)
        return loaded
    settled, changed = stored_settings(loaded.spec, overrides)
    if settled:
        loaded = load(study, {**overrides, **settled})
    say_continuing(loaded.spec.name, changed, "the study's")
    return loaded


def say_continuing(name: str, changed: dict[str, Any], whose: str) -> None:
    """Say that a study goes on at its stored fidelity rather than the spec's (nothing if the same)."""
    from signtune.study import FIDELITY

    if changed:
        err.print(
            f"{name}: continuing at "
            + ", ".join(f"{FIDELITY[k].lstrip('-')} {v}" for k, v in changed.items())
            + f", as {whose} trials ran",
            highlight=False,
        )


def prepare(task: Task, spec: StudySpec) -> dict[str, Any]:
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
        print_problems(exc)
        ref = spec.name if (Path("studies") / spec.name / "study.yaml").resolve() == spec.path.resolve() else spec.path
        err.print(
            "No trial was started: the data has errors. The loader stops at the first kind it meets; "
            f"`study data check --study {ref}` lists every problem of the data at once.",
            highlight=False,
        )
        raise typer.Exit(2) from None


def tracking_override(tracking_uri: str | None, no_tracking: bool) -> dict[str, Any]:
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
