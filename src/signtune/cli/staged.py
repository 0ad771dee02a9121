"""How the `study` commands treat a spec with ``stages:`` (see ``signtune.stages``).

``study run`` runs the stages in order, each as its own study, skipping finished ones;
``status``, ``export`` and ``promote-best`` read one stage: ``--stage NAME``, else the last
that has trials.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from signtune.cli.app import out, say_continuing
from signtune.errors import ConfigError, Problem
from signtune.stages import (
    Want,
    earlier_fixed,
    has_stages,
    parse,
    pick,
    progress,
    stage_attr,
    stage_spec,
    study_name,
    with_fidelity,
)

if TYPE_CHECKING:
    from signtune.runner import RunSummary
    from signtune.space import SearchSpace
    from signtune.spec import StudySpec
    from signtune.stages import Stage

StageOpt = Annotated[
    str | None,
    typer.Option("--stage", help="A stage of a staged study (its name in `stages:`); default: the last one run."),
]

# run_one(stage spec, stage space, after_record): run one study as `study run` does, calling
# after_record(spec) once the study exists and its data passed.
RunOne = Callable[["StudySpec", "SearchSpace", Callable[["StudySpec"], None]], "RunSummary"]


def refuse_stages(spec: StudySpec, command: str) -> None:
    """Commands that work on one study name refuse a staged spec rather than make a stray study."""
    if has_stages(spec):
        raise ConfigError(
            Problem(
                f"{spec.path}: stages",
                f"`{command}` runs a single study, but this spec has {len(spec.raw['stages'])} stages",
                f"run the stages with `study run --study {spec.name}`",
            )
        )


def settle(spec: StudySpec, overrides: dict[str, Any]) -> StudySpec:
    """A stage's spec at the subset and epochs its trials ran at (``study.stored_settings``).

    Raises:
        ConfigError: ``--subset``/``--epochs`` differ from what the stage's trials ran at.
    """
    from signtune.study import stored_settings

    settled, changed = stored_settings(spec, overrides)
    spec = with_fidelity(spec, subset=settled.get("budget.subset"), epochs=settled.get("fixed.run.epochs"))
    say_continuing(spec.name, changed, "the stage's")
    return spec


def resolve(
    spec: StudySpec,
    space: SearchSpace,
    name: str | None,
    overrides: dict[str, Any],
    *,
    want: Want = "finished",
) -> tuple[StudySpec, SearchSpace]:
    """The spec and space of the stage a command reads (``--stage``, else the last one run);
    a spec without stages is returned as it is (``--stage`` is then an error)."""
    if not has_stages(spec):
        if name is not None:
            raise ConfigError(
                Problem(
                    f"--stage {name}",
                    f"names a stage, but {spec.path} has no `stages:` list",
                    "drop --stage",
                )
            )
        return spec, space
    stages = parse(spec, space)
    stage = pick(spec, stages, name, want=want)
    sspec, sspace = _derive(spec, space, stages, stage, overrides)
    return settle(sspec, overrides), sspace


def _derive(
    spec: StudySpec, space: SearchSpace, stages: tuple[Stage, ...], stage: Stage, overrides: dict[str, Any]
) -> tuple[StudySpec, SearchSpace]:
    return stage_spec(
        spec,
        space,
        stage,
        earlier_fixed(spec, stages, stage),
        subset=overrides.get("budget.subset"),
        epochs=overrides.get("fixed.run.epochs"),
    )


def run_stages(spec: StudySpec, space: SearchSpace, overrides: dict[str, Any], run_one: RunOne) -> None:
    """``study run`` of a staged spec: each unfinished stage in order, with the earlier stages'
    best values fixed; a stage that ends short (Ctrl-C, --timeout, failures) ends the run, and
    the same command resumes it.

    ``--trials`` is refused: each stage's budget is its ``trials`` in study.yaml. ``--subset``
    and ``--epochs`` set every stage's fidelity; ``--timeout`` bounds the whole run.

    Raises:
        ConfigError: ``--trials`` given, or fidelity flags unlike a started stage's.
        StudyError: an earlier stage finished without a complete trial.
    """
    stages = parse(spec, space)
    if overrides.get("budget.trials") is not None:
        raise ConfigError(
            Problem(
                "--trials",
                f"sets one study's budget, but {spec.path} has stages, each with its own `trials` "
                f"(got --trials {overrides['budget.trials']})",
                "drop --trials, and set each stage's budget with its `trials:` under `stages:` in study.yaml",
            )
        )
    deadline = time.monotonic() + spec.budget.timeout if spec.budget.timeout else None
    n = len(stages)
    for stage, finished, _, best in progress(spec, stages):
        label = f"stage {stage.index}/{n} {stage.name} ({study_name(spec, stage)})"
        if finished >= stage.trials:
            out.print(f"{label}: {finished}/{stage.trials} finished, best {best}; skipped", highlight=False)
            continue
        earlier = earlier_fixed(spec, stages, stage)
        sspec, sspace = _derive(spec, space, stages, stage, overrides)
        sspec = settle(sspec, overrides)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                out.print(f"[yellow]Stopped by --timeout[/] before {label}; run again to continue.")
                return
            sspec = dataclasses.replace(sspec, budget=dataclasses.replace(sspec.budget, timeout=left))
        start = ", ".join(f"{f.stage} trial {f.trial}" for f in earlier)
        out.print(
            f"[bold]{label}[/]: searches {', '.join(stage.params)}; {finished}/{stage.trials} finished"
            + (f"; fixed from {start}" if start else ""),
            highlight=False,
        )
        attr = stage_attr(spec, stages, stage, earlier)

        def record(s: StudySpec, attr: dict[str, Any] = attr) -> None:
            from signtune.study import open_study

            study = open_study(s)
            if study.user_attrs.get("stage") != attr:
                study.set_user_attr("stage", attr)

        summary = run_one(sspec, sspace, record)
        if summary.finished < stage.trials:
            out.print(
                f"{label} has {summary.finished}/{stage.trials} finished trials (stopped by {summary.stopped_by}); "
                "the later stages wait for it. Run the same command again to continue.",
                highlight=False,
            )
            return
    out.print(f"All {n} stages of {spec.name} finished.", highlight=False)


def print_stages(spec: StudySpec, space: SearchSpace) -> None:
    """``study status`` of a staged spec: one line per stage with its progress and best value."""
    stages = parse(spec, space)
    table = Table(title=f"{spec.name}: {len(stages)} stages")
    for c in ("#", "stage", "study", "params", "finished", "best"):
        table.add_column(c)
    for stage, finished, _, best in progress(spec, stages):
        table.add_row(
            str(stage.index),
            stage.name,
            study_name(spec, stage),
            ", ".join(stage.params),
            f"{finished}/{stage.trials}",
            "-" if best is None else f"{best:.4g}",
        )
    out.print(table)
