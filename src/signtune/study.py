"""A study's facts, in one place: how it is opened, sampled and pruned, what it stores about
itself (settings, owners, reasons), and how its trials are counted and ranked.

Everything here reads or writes through Optuna's public API; the CLI, the runner, export and
promote-best ask this module rather than keeping their own copies of these rules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from signtune.errors import ConfigError, Problem, StudyError
from signtune.space import SearchSpace
from signtune.spec import StudySpec
from signtune.storage import create_storage, mask_url
from signtune.tasks import Task

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STARTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)

# Why a trial ended other than complete: its ``reason`` user attr and MLflow tag.
Reason = Literal[
    "pruned",  # below the pruner's threshold
    "diverged",  # the objective became NaN or infinite
    "timeout",  # no report for budget.trial_timeout seconds
    "error",  # the task raised
    "data",  # a data file broke mid-study
    "oom",  # out of GPU memory (retried at half batch)
    "cuda_error",  # the process's CUDA context broke
    "no_metric",  # the task returned no finite objective
    "interrupted",  # Ctrl-C or SIGTERM
    "supervisor_gone",  # the `study run` that started the worker died
    "worker_died",  # the worker process died (reaped by pid)
    "heartbeat",  # the worker's host went silent (reaped by heartbeat age)
]
# A trial stopped from outside says nothing about its params: the next run samples afresh.
NOT_RETRIED: tuple[Reason, ...] = ("interrupted", "supervisor_gone")


class StudyDef(NamedTuple):
    """A study's definition, validated: its spec, search space and task. Nothing is written."""

    spec: StudySpec
    space: SearchSpace
    task: Task


def load_def(study: str | None, overrides: dict[str, Any]) -> StudyDef:
    """Spec + search space + task, all validated (enqueued configs included).

    Raises:
        ConfigError: every problem of the spec, the space and the enqueued configs at once.
    """
    from signtune.space import check_params, parse
    from signtune.spec import load_spec
    from signtune.tasks import get_task

    spec = load_spec(study, overrides)
    task = get_task(spec.task, where=f"{spec.path}: task", study_dir=spec.dir)
    space = parse(spec.search_space, known_keys=task.config_keys())
    problems: list[Problem] = []
    for i, params in enumerate(spec.enqueue):
        problems += check_params(space, params, f"{spec.path}: enqueue[{i}]")
    from signtune.stages import read as read_stages

    problems += read_stages(spec, space)[1]
    if problems:
        raise ConfigError(problems)
    return StudyDef(spec, space, task)


# --- samplers and pruners, by name ------------------------------------------------------------


def startup_trials(spec: StudySpec) -> int:
    """Random trials before the model-based sampler takes over: the spec's, or sized to the budget.

    A tenth of ``budget.trials``, at least 4 and at most 10 (Optuna's default): with 30 trials,
    TPE starts modelling at the 4th instead of the 9th.
    """
    if spec.sampler.n_startup_trials is not None:
        return spec.sampler.n_startup_trials
    return max(4, min(10, spec.budget.trials // 10))


def resolve_strategy(spec: StudySpec) -> StudySpec:
    """``spec`` with ``sampler: auto`` and ``pruner: auto`` replaced by what they stand for.

    Chosen on the replay benchmark (``python -m benchmarks.replay``; RESULTS.md section 9):

    - sampler: TPE with a start-up sized to the budget (``startup_trials``);
    - pruner, with fewer than 3 epochs: none;
    - pruner on a separate early signal (``pruner.metric`` names a metric other than the
      objective's, e.g. val_loss while the objective is val_bleu): successive halving from
      the first epoch (rungs at epochs 1, 3, 9, ..., the top third of each rung goes on). On
      the demo's table val_loss after one epoch ranks the final BLEU with Spearman 0.88;
    - pruner on the objective itself: a median pruner from the first epoch once a few trials
      have finished, gentler where early values are noisy (MF-Hartmann's low fidelities, on
      which successive halving fails to reach the target in most seeds).
    """
    import dataclasses

    sampler, pruner = spec.sampler, spec.pruner
    if sampler.name == "auto":
        sampler = dataclasses.replace(sampler, name="tpe")
    if pruner.name == "auto":
        if spec.epochs < 3:
            pruner = dataclasses.replace(pruner, name="none")
        elif pruning_metric(spec)[0] != spec.objective.metric:
            pruner = dataclasses.replace(pruner, name="sha", min_resource=1, reduction_factor=AUTO_SHA_FACTOR)
        else:
            pruner = dataclasses.replace(pruner, name="median", n_startup_trials=AUTO_PRUNER_STARTUP, n_warmup_steps=0)
    if sampler is spec.sampler and pruner is spec.pruner:
        return spec
    return dataclasses.replace(spec, sampler=sampler, pruner=pruner)


AUTO_PRUNER_STARTUP = 3  # finished trials before ``pruner: auto`` prunes on the objective
AUTO_SHA_FACTOR = 3  # ``pruner: auto`` on an early signal: the top 1/3 of each rung goes on


def _tpe(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    # Optuna 5's TPE is multivariate with constant liar by default: parallel workers do not
    # all sample the same point while earlier trials are still running.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec))


def _gp(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    # GPSampler learns from complete trials only: a pruned trial teaches it nothing.
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(spec), warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[[StudySpec, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "gp": _gp,
    "random": lambda spec, seed: optuna.samplers.RandomSampler(seed=seed),
}

PRUNERS: dict[str, Callable[[StudySpec], optuna.pruners.BasePruner]] = {
    "none": lambda spec: optuna.pruners.NopPruner(),
    "median": lambda spec: optuna.pruners.MedianPruner(
        n_startup_trials=spec.pruner.n_startup_trials, n_warmup_steps=spec.pruner.n_warmup_steps
    ),
    "hyperband": lambda spec: optuna.pruners.HyperbandPruner(
        min_resource=spec.pruner.min_resource, max_resource=spec.epochs, reduction_factor=spec.pruner.reduction_factor
    ),
    "sha": lambda spec: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.pruner.min_resource, reduction_factor=spec.pruner.reduction_factor
    ),
}


def build_sampler(spec: StudySpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. Each worker process passes its own ``seed_offset``: samplers seeded
    alike in several processes would propose the same configs in parallel."""
    spec = resolve_strategy(spec)
    return SAMPLERS[spec.sampler.name](spec, spec.sampler.seed + seed_offset)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    spec = resolve_strategy(spec)
    return PRUNERS[spec.pruner.name](spec)


def pruning_metric(spec: StudySpec) -> tuple[str, str]:
    """The metric the pruner compares, and its better direction."""
    metric = spec.pruner.metric or spec.objective.metric
    if spec.pruner.direction is not None:
        return metric, spec.pruner.direction
    if metric == spec.objective.metric:
        return metric, spec.objective.direction
    return metric, "minimize" if metric.endswith("loss") else "maximize"


def intermediate_metric(spec: StudySpec) -> tuple[str, float]:
    """What a trial's intermediate values hold: the pruning metric's name, and the sign that
    turns an intermediate value back into it (-1 when it was negated for the study's direction)."""
    metric, direction = pruning_metric(spec)
    return metric, 1.0 if direction == spec.objective.direction else -1.0


def pruning_value(spec: StudySpec, metrics: dict[str, float]) -> float:
    """The intermediate value a trial reports after an epoch: the pruning metric, negated when
    it runs against the study's direction (Optuna's pruners compare in the study's direction).

    Raises:
        KeyError: the task's report lacks the metric.
    """
    metric, direction = pruning_metric(spec)
    value = float(metrics[metric])
    return value if direction == spec.objective.direction else -value


# --- opening ----------------------------------------------------------------------------------


def open_study(spec: StudySpec, *, create: bool = True, seed_offset: int = 0) -> optuna.Study:
    """Create (or load) the study named in ``spec`` on its storage.

    Raises:
        StudyError: with ``create=False``, no such study; or the stored study optimises in the
            other direction than the spec says.
    """
    if not create:
        path = spec.storage.split(":///", 1)[1] if spec.storage.startswith(("sqlite:///", "journal:///")) else None
        if path is not None and not Path(path).exists():  # don't leave an empty database behind
            raise _no_study(spec, "the file does not exist yet")
    storage = create_storage(spec.storage)
    sampler, pruner = build_sampler(spec, seed_offset), build_pruner(spec)
    if not create:
        try:
            return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise _no_study(spec, "the storage holds no study of that name") from None
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=spec.objective.direction,
        load_if_exists=True,
    )
    stored = study.direction.name.lower()
    if stored != spec.objective.direction:
        raise StudyError(
            Problem(
                f"{spec.path}: objective.direction",
                f"is {spec.objective.direction}, but study {spec.name!r} in {mask_url(spec.storage)} was created "
                f"to {stored}",
                "use another study name, or set the direction the study was created with",
            )
        )
    if study.metric_names is None:
        study.set_metric_names([spec.objective.metric])
    return study


def _no_study(spec: StudySpec, why: str) -> StudyError:
    return StudyError(
        Problem(
            f"storage {mask_url(spec.storage)}",
            f"no study named {spec.name!r}: {why}",
            f"run `study run --study {spec.name}` first",
        )
    )


def enqueue_defaults(study: optuna.Study, spec: StudySpec) -> None:
    """Queue the spec's known-good configs once (skipped when a trial already used them).

    ``load_def`` has validated them against the search space.
    """
    for params in spec.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)


# --- settings a study keeps --------------------------------------------------------------------

# What a study's trials are trained at: stored on the study at its first run (or `study create`)
# so that resuming, remote workers and exports use it, and a run at another fidelity is refused.
FIDELITY = {"budget.subset": "--subset", "fixed.run.epochs": "--epochs"}


def fidelity_of(spec: StudySpec) -> dict[str, Any]:
    return {"budget.subset": spec.budget.subset, "fixed.run.epochs": spec.epochs}


def stored_settings(spec: StudySpec, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored settings ``overrides`` lacks, and those of them that change the fidelity.

    A study keeps its first run's subset and epochs (and the budget last set by ``--trials``):
    a later command without those flags continues at the stored values, and one that asks for
    another subset or epochs is refused, since its trials would not be comparable.

    Returns:
        ``(settled, changed)``: overrides to load the spec with, and the fidelity settings
        among them that differ from the spec's own (for the CLI to say so).

    Raises:
        ConfigError: ``--subset``/``--epochs`` differ from what the study's trials ran at.
    """
    try:
        existing = open_study(spec, create=False)
    except StudyError:
        return {}, {}
    stored = dict(existing.user_attrs.get("settings", {}))
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
    changed = {k: v for k, v in settled.items() if k in FIDELITY and fidelity_of(spec)[k] != v}
    if settled.get("budget.trials") == spec.budget.trials:
        settled.pop("budget.trials")
    return settled, changed


def record_settings(spec: StudySpec) -> None:
    """Store the study's subset, epochs and budget on it (creating it), for later commands."""
    settings = {**fidelity_of(spec), "budget.trials": spec.budget.trials}
    study = open_study(spec)
    if study.user_attrs.get("settings") != settings:
        study.set_user_attr("settings", settings)


# --- counting and ranking ----------------------------------------------------------------------


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def ranked_trials(study: optuna.Study, direction: Literal["maximize", "minimize"]) -> list[FrozenTrial]:
    """The study's complete trials that have a value, best first for ``direction``.

    Trials with equal values keep their trial order. Every ranking of a study (the
    leaderboard, the report, promote-best's top-k) is this one.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done.sort(key=lambda t: t.value or 0.0, reverse=direction == "maximize")
    return done


def objective_value(trial: FrozenTrial) -> float | None:
    """The trial's objective value as a person reads it. A pruned trial's Optuna value is its
    last intermediate value (the pruning metric, e.g. -val_loss), so for it this is the
    objective's best before it stopped (the ``value_so_far`` user attr) where recorded."""
    if trial.state == TrialState.PRUNED:
        return trial.user_attrs.get("value_so_far", trial.value)
    return trial.value


def best_of(study: optuna.Study) -> tuple[float | None, int | None]:
    """The best complete trial's value and number (None, None before the first one)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None, None
    best = study.best_trial
    return best.value, best.number


def best_params(study: optuna.Study) -> dict[str, Any]:
    try:
        return dict(study.best_params)
    except ValueError:
        return {}


# --- owners and retries ------------------------------------------------------------------------


def retry_once(study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> bool:
    """Re-queue a failed trial's params once (not a retry's, not a stopped one's); whether it did.

    An out-of-memory failure is retried with half the batch size and twice the gradient
    accumulation, which keeps the effective batch. ``reason`` overrides the trial's own
    (a trial failed by another process has not recorded it yet in ``trial``).
    """
    reason = reason or trial.user_attrs.get("reason")
    if "retry_of" in trial.user_attrs or reason in NOT_RETRIED or not trial.params:
        return False
    attrs: dict[str, Any] = {"retry_of": trial.number}
    if reason == "oom":
        attrs["oom_retry"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs)
    return True
