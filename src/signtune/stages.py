"""Staged studies: the ``stages:`` list of a study.yaml, each stage its own Optuna study.

A stage searches some of the search space's parameters for its own number of trials, at its
own fidelity (``subset``, ``epochs``), with the best values of the earlier stages fixed::

    stages:
      - {name: arch, params: [model.d_model, model.num_encoder_layers], trials: 20}
      - {name: optim, params: [optim.lr, optim.weight_decay], trials: 20, epochs: 4}

Which value a parameter has in stage k:

- searched by stage k: the sampler's;
- searched by an earlier stage: that stage's best complete trial's (by ``objective``);
- otherwise (a later stage's, or no stage's): ``fixed:`` if it names it, else the first
  ``enqueue`` config's value when it has one, else the trainer's base config.

A conditional parameter (``when:``) is searched with its parent categorical: naming the parent
brings its conditional parameters along; naming one without its parent is an error.

Stage k's study is ``<name>.<k>-<stage>`` (``demo.1-arch``) on the spec's storage, with its own
MLflow experiment and parent run. A stage is finished when it has ``trials`` finished
(complete + pruned) trials. The parsing and the derivation of a stage's ``StudySpec`` are pure;
``earlier_fixed`` and ``progress`` read the stages' studies from storage.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from signtune.errors import ConfigError, Problem, StudyError
from signtune.space import SearchSpace
from signtune.spec import BUILTIN_TASKS, StudySpec

KEYS = ("name", "params", "trials", "subset", "epochs")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Stage:
    """One validated stage.

    Attributes:
        index: its place, from 1.
        name: its short name (``arch``).
        params: the parameters it searches: those listed, then the conditional parameters of
            a listed parent, in the search space's order.
        trials: finished trials that make it finished.
        subset: its fraction of the train split; None: the spec's ``budget.subset``.
        epochs: its epochs per trial; None: the spec's ``run.epochs``.
    """

    index: int
    name: str
    params: tuple[str, ...]
    trials: int
    subset: float | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Fixed:
    """What an earlier stage fixed: its best complete trial and that trial's params."""

    stage: str
    study: str
    trial: int
    value: float
    params: dict[str, Any] = field(default_factory=dict)


def has_stages(spec: StudySpec) -> bool:
    """Whether the spec has a ``stages:`` list (an empty or malformed one is reported by ``read``)."""
    return spec.raw.get("stages") is not None


def study_name(spec: StudySpec, stage: Stage) -> str:
    """The stage's Optuna study: ``<spec name>.<index>-<stage name>``, e.g. ``demo.1-arch``."""
    return f"{spec.name}.{stage.index}-{stage.name}"


# --- parsing ----------------------------------------------------------------------------------


def read(spec: StudySpec, space: SearchSpace) -> tuple[tuple[Stage, ...], list[Problem]]:
    """The spec's stages and every problem of them (each naming ``stages[i]...``, rule, value, fix)."""
    raw = spec.raw.get("stages")
    if raw is None:
        return (), []
    where = f"{spec.path}: stages"
    if not isinstance(raw, list) or not raw:
        return (), [
            Problem(
                where,
                f"must be a non-empty list of stages, but got {raw!r}",
                "write `- {name: arch, params: [model.d_model], trials: 20}` items, or drop `stages:`",
            )
        ]
    problems: list[Problem] = []
    stages: list[Stage] = []
    names: dict[str, int] = {}
    searched_by: dict[str, int] = {}  # param -> index of the stage (from 0) that lists it
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            problems.append(
                Problem(at, f"must be a mapping, but got {item!r}", "e.g. `- {name: arch, params: [...], trials: 20}`")
            )
            continue
        for unknown in sorted(set(item) - set(KEYS), key=str):
            problems.append(Problem(f"{at}.{unknown}", "is not a key of a stage", f"use {list(KEYS)}"))
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(
                Problem(
                    f"{at}.name",
                    f"must be a short name of letters, digits, '-' or '_', but got {name!r}",
                    "e.g. `name: arch`",
                )
            )
            name = f"stage{i + 1}"
        elif name in names:
            problems.append(
                Problem(
                    f"{at}.name",
                    f"{name!r} is already the name of stages[{names[name]}]; stage names must be unique",
                    "rename one of the two stages",
                )
            )
        names.setdefault(name, i)
        params = _read_params(item.get("params"), f"{at}.params", i, spec, space, searched_by, problems)
        trials = item.get("trials")
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            problems.append(
                Problem(f"{at}.trials", f"must be a positive whole number, but got {trials!r}", "e.g. `trials: 20`")
            )
            trials = 1
        subset = item.get("subset")
        if subset is not None and (
            isinstance(subset, bool) or not isinstance(subset, int | float) or not 0.0 < subset <= 1.0
        ):
            problems.append(
                Problem(
                    f"{at}.subset",
                    f"must be a fraction in (0, 1], but got {subset!r}",
                    "e.g. `subset: 0.3`, or drop it for budget.subset",
                )
            )
            subset = None
        epochs = item.get("epochs")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            problems.append(
                Problem(
                    f"{at}.epochs",
                    f"must be a positive whole number, but got {epochs!r}",
                    "e.g. `epochs: 4`, or drop it",
                )
            )
            epochs = None
        stages.append(Stage(i + 1, name, params, trials, float(subset) if subset is not None else None, epochs))
    return tuple(stages), problems


def _read_params(
    raw: Any,
    at: str,
    i: int,
    spec: StudySpec,
    space: SearchSpace,
    searched_by: dict[str, int],
    problems: list[Problem],
) -> tuple[str, ...]:
    """One stage's ``params``: checked, each recorded in ``searched_by``; conditional ones added."""
    if not isinstance(raw, list) or not raw:
        problems.append(
            Problem(
                at,
                f"must be a non-empty list of search-space parameters, but got {raw!r}",
                f"e.g. `params: [{space.names[0] if space.names else 'optim.lr'}]`",
            )
        )
        return ()
    listed: list[str] = []
    for j, name in enumerate(raw):
        here = f"{at}[{j}]"
        if not isinstance(name, str) or name not in space.names:
            problems.append(
                Problem(
                    here,
                    f"must name a parameter of the search space {space.path}, but got {name!r}",
                    f"use one of {space.names}",
                )
            )
            continue
        if name in spec.fixed:
            problems.append(
                Problem(
                    here,
                    f"{name!r} is in `fixed:` (= {spec.fixed[name]!r}), so no stage can search it",
                    f"drop {name} from this stage, or from `fixed:`",
                )
            )
            continue
        if name in listed:
            problems.append(Problem(here, f"{name!r} is listed twice in this stage", "list it once"))
            continue
        if name in searched_by:
            problems.append(
                Problem(
                    here,
                    f"{name!r} is already searched by stages[{searched_by[name]}]; each parameter is searched "
                    "by one stage (later stages take its best value)",
                    f"drop {name} from one of the two stages",
                )
            )
            continue
        listed.append(name)
    for j, name in enumerate(raw):
        if name not in listed:
            continue
        parents = [parent for parent, _ in space[name].when if parent not in listed]
        if parents:
            problems.append(
                Problem(
                    f"{at}[{j}]",
                    f"{name!r} is searched only when {parents[0]} takes some values, so it must be searched in "
                    f"the stage that searches {parents[0]}",
                    f"list {name} with {parents[0]} in one stage (naming the parent brings it along)",
                )
            )
    chosen = set(listed)
    for p in space.params:  # conditional parameters follow their parent into its stage
        follows = p.when and all(parent in chosen for parent, _ in p.when)
        if follows and p.name not in chosen and p.name not in spec.fixed and p.name not in searched_by:
            chosen.add(p.name)
    ordered = tuple(n for n in space.names if n in chosen)
    for name in ordered:
        searched_by.setdefault(name, i)
    return ordered


def parse(spec: StudySpec, space: SearchSpace) -> tuple[Stage, ...]:
    """The spec's validated stages (empty without ``stages:``).

    Raises:
        ConfigError: every problem of the ``stages:`` list at once.
    """
    stages, problems = read(spec, space)
    if problems:
        raise ConfigError(problems)
    return stages


def find(spec: StudySpec, stages: Sequence[Stage], name: str) -> Stage:
    """The stage named ``name`` (``--stage``).

    Raises:
        ConfigError: no such stage (the message lists them).
    """
    for stage in stages:
        if stage.name == name:
            return stage
    raise ConfigError(
        Problem(
            f"--stage {name}",
            f"is not a stage of {spec.path}",
            f"use one of {[s.name for s in stages]}" if stages else "drop --stage: this study has no stages",
        )
    )


# --- a stage's spec ---------------------------------------------------------------------------


def defaults(spec: StudySpec, space: SearchSpace) -> dict[str, Any]:
    """Values of search-space parameters that no stage has searched yet and ``fixed:`` lacks:
    the first ``enqueue`` config's. A parameter it does not name keeps the trainer's base value."""
    first = spec.enqueue[0] if spec.enqueue else {}
    return {n: first[n] for n in space.names if n in first and n not in spec.fixed}


def stage_spec(
    spec: StudySpec,
    space: SearchSpace,
    stage: Stage,
    earlier: Sequence[Fixed],
    *,
    subset: float | None = None,
    epochs: int | None = None,
) -> tuple[StudySpec, SearchSpace]:
    """The spec and search space that run ``stage`` as a study of its own.

    Args:
        spec: the staged study's spec.
        space: its whole search space.
        stage: the stage to run.
        earlier: what each earlier stage fixed, in order (``earlier_fixed``).
        subset: a fraction that wins over the stage's and the spec's (``--subset``).
        epochs: epochs that win over the stage's and the spec's (``--epochs``).

    Returns:
        The stage's spec (its study name, its ``fixed`` values with the earlier stages' best,
        its budget, fidelity, enqueued configs and MLflow experiment) and its search space.
    """
    values = defaults(spec, space)
    for f in earlier:
        values.update(f.params)
    values = {k: v for k, v in values.items() if k not in stage.params}
    fixed = {**spec.fixed, **values}
    base = spec.base
    if spec.task in BUILTIN_TASKS:  # the typed config every trial starts from
        from signtune.config import apply_overrides

        base = apply_overrides(base, values, where=f"{spec.path}: stages[{stage.index - 1}]")
    enqueue: list[dict[str, Any]] = []
    for params in spec.enqueue:
        mine = {k: v for k, v in params.items() if k in stage.params}
        if mine and mine not in enqueue:
            enqueue.append(mine)
    name = study_name(spec, stage)
    raw = {
        **spec.raw,
        "stage": {"name": stage.name, "index": stage.index, "params": list(stage.params), "fixed": values},
    }
    out = dataclasses.replace(
        spec,
        name=name,
        base=base,
        fixed=fixed,
        budget=dataclasses.replace(spec.budget, trials=stage.trials),
        tracking=dataclasses.replace(spec.tracking, experiment=f"{spec.experiment}.{stage.index}-{stage.name}"),
        enqueue=tuple(enqueue),
        raw=json.loads(json.dumps(raw, default=str)),
    )
    out = with_fidelity(
        out,
        subset=subset if subset is not None else stage.subset,
        epochs=epochs if epochs is not None else stage.epochs,
    )
    return out, SearchSpace(space.path, tuple(p for p in space.params if p.name in stage.params))


def with_fidelity(spec: StudySpec, *, subset: float | None = None, epochs: int | None = None) -> StudySpec:
    """``spec`` at another subset and/or epochs (None keeps its own)."""
    if subset is not None:
        spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, subset=float(subset)))
    if epochs is not None:
        base = spec.base
        if spec.task in BUILTIN_TASKS:
            from signtune.config import apply_overrides

            base = apply_overrides(base, {"run.epochs": epochs})
        spec = dataclasses.replace(spec, epochs=epochs, base=base, fixed={**spec.fixed, "run.epochs": epochs})
    return spec


def stage_attr(spec: StudySpec, stages: Sequence[Stage], stage: Stage, earlier: Sequence[Fixed]) -> dict[str, Any]:
    """The ``stage`` user attr of a stage's study: the stage, its params, and what each earlier
    stage fixed (study, trial, value, params); ``chain`` turns it into provenance."""
    return {
        "parent": spec.name,
        "name": stage.name,
        "index": stage.index,
        "of": len(stages),
        "params": list(stage.params),
        "trials": stage.trials,
        "fixed_from": [dataclasses.asdict(f) for f in earlier],
    }


def chain(attr: Mapping[str, Any] | None, study: str) -> list[dict[str, Any]] | None:
    """A stage study's provenance: each earlier stage's study, best trial, value and the values
    it fixed, then this stage (``None`` for a study that is not a stage)."""
    if not attr:
        return None
    links = [
        {
            "stage": f["stage"],
            "study": f["study"],
            "best_trial": f["trial"],
            "value": f["value"],
            "fixed": f["params"],
        }
        for f in attr.get("fixed_from", [])
    ]
    links.append({"stage": attr.get("name"), "study": study, "searched": attr.get("params", [])})
    return links


# --- reading the stages' studies ---------------------------------------------------------------


def _open(spec: StudySpec, stage: Stage) -> optuna.Study | None:
    """The stage's study, or None when it does not exist yet (nothing is created)."""
    from signtune.study import open_study

    try:
        return open_study(dataclasses.replace(spec, name=study_name(spec, stage)), create=False)
    except StudyError:
        return None


def progress(spec: StudySpec, stages: Sequence[Stage]) -> list[tuple[Stage, int, int, float | None]]:
    """Per stage: finished trials, complete trials, best value (None: none complete or no study)."""
    from optuna.trial import TrialState

    from signtune.study import FINISHED, ranked_trials

    rows: list[tuple[Stage, int, int, float | None]] = []
    for stage in stages:
        study = _open(spec, stage)
        if study is None:
            rows.append((stage, 0, 0, None))
            continue
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        ranked = ranked_trials(study, spec.objective.direction)
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        rows.append((stage, finished, complete, ranked[0].value if ranked else None))
    return rows


def earlier_fixed(spec: StudySpec, stages: Sequence[Stage], stage: Stage) -> list[Fixed]:
    """What each stage before ``stage`` fixed: its best complete trial by the study's objective.

    Raises:
        StudyError: an earlier stage is not finished, or finished without a complete trial.
    """
    from signtune.study import count_finished, ranked_trials

    fixed: list[Fixed] = []
    for before in stages[: stage.index - 1]:
        name = study_name(spec, before)
        study = _open(spec, before)
        done = count_finished(study) if study is not None else 0
        if study is None or done < before.trials:
            raise StudyError(
                Problem(
                    f"stage {before.name} ({name})",
                    f"has {done}/{before.trials} finished trials, so stage {stage.name} has no values to start "
                    "from yet",
                    f"run `study run --study {spec.name}` to finish the earlier stages first",
                )
            )
        ranked = ranked_trials(study, spec.objective.direction)
        if not ranked:
            raise StudyError(
                Problem(
                    f"stage {before.name} ({name})",
                    f"finished {done} trials, none complete (all pruned or failed), so it has no best values "
                    f"for stage {stage.name}",
                    f"raise stages[{before.index - 1}].trials (or loosen the pruner) and run again",
                )
            )
        best = ranked[0]
        fixed.append(Fixed(before.name, name, best.number, float(best.value or 0.0), dict(best.params)))
    return fixed


Want = Literal["finished", "complete"]


def pick(spec: StudySpec, stages: Sequence[Stage], name: str | None, *, want: Want = "finished") -> Stage:
    """The stage a command reads: ``--stage NAME``, else the last one with finished trials
    (``want="finished"``: status, export) or complete ones (``want="complete"``: promote-best).

    Raises:
        ConfigError: ``name`` is not a stage.
        StudyError: no stage has such trials yet.
    """
    if name is not None:
        return find(spec, stages, name)
    rows = progress(spec, stages)
    for stage, finished, complete, _ in reversed(rows):
        if (finished if want == "finished" else complete) > 0:
            return stage
    raise StudyError(
        Problem(
            f"study {spec.name}",
            f"has {len(stages)} stages and none has a {want} trial yet",
            f"run `study run --study {spec.name}` first",
        )
    )
