"""promote-best's one candidate loop, for the built-in task and plug-ins alike.

Each candidate (trial x seed) trains through the task's ``fit`` with ``ctx.checkpoint`` set,
so its checkpoints land in ``promoted/candidates/trial-<trial>-seed-<seed>/{best,last}/``;
``--resume`` hands it its ``last/`` checkpoint as ``ctx.resume``. The winner by the study's
``objective`` goes to the task's ``ship`` (test it, write what loading it needs), and its
best weights to ``promoted/model.safetensors``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from signtune.errors import Problem, SigntuneError, StopTrial, StudyError
from signtune.folders import recover_dir
from signtune.promote.checkpoint import WEIGHTS, Checkpointer, load_checkpoint
from signtune.promote.fidelity import rank_fidelity, study_subset
from signtune.promote.provenance import write_metrics, write_provenance
from signtune.promote.select import Candidate, improves, pick_winner, top_trials
from signtune.spec import StudySpec
from signtune.tasks import Task, TrialContext

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

OnEpoch = Callable[[str, int, dict[str, float]], None]


@dataclass
class PromoteResult:
    """What promote-best did: where the model went, the winner, every candidate, the test."""

    out_dir: Path
    winner: Candidate
    candidates: list[Candidate]
    test: dict[str, float | str]
    fidelity: float | None
    fidelity_note: str
    metric: str  # what picked the winner: the study's objective.metric


def promote_best(
    spec: StudySpec,
    study: optuna.Study,
    task: Task[Any],
    *,
    top_k: int = 1,
    epochs: int | None = None,
    seeds: int = 1,
    resume: bool = False,
    on_epoch: OnEpoch | None = None,
) -> PromoteResult:
    """Retrain the study's top-k configs on the full training split and ship the winner.

    Args:
        spec: the study's spec; ``promote:`` sets epochs, patience, beam and overrides.
        study: the study whose complete trials are ranked by ``objective.direction``.
        task: the study's task, prepared (``task.prepare(spec)``).
        top_k: how many of the best configs to retrain.
        epochs: epochs per candidate; None: ``promote.epochs``, else the trials' own.
        seeds: seeds per config (``run.seed``, ``run.seed + 1``...).
        resume: continue candidates from their ``last/`` checkpoint.
        on_epoch: called as ``on_epoch(candidate_name, epoch, metrics)`` after each epoch.

    Raises:
        StudyError: no complete trial, a task that saves no checkpoint or fails, no test data.
    """
    from signtune.device import resolve_device

    top = top_trials(study, spec, top_k)
    out = spec.dir / "promoted"
    (out / "candidates").mkdir(parents=True, exist_ok=True)
    n_epochs = epochs if epochs is not None else spec.promote.epochs
    device = resolve_device(str(spec.promote.overrides.get("run.device", spec.device)))
    candidates: list[Candidate] = []
    configs: dict[str, Any] = {}
    for trial in top:
        for s in range(seeds):
            seed = spec.seed + s
            cand = Candidate(trial.number, seed, float(trial.value or 0.0))
            cand.dir = out / "candidates" / f"trial-{trial.number}-seed-{seed}"
            configs[cand.dir.name] = task.promote_config(spec, dict(trial.params), epochs=n_epochs, seed=seed)
            train_candidate(spec, task, cand, configs[cand.dir.name], device, resume=resume, on_epoch=on_epoch)
            candidates.append(cand)

    winner = pick_winner(candidates, spec.objective)
    ctx = TrialContext(device, winner.seed, 1.0, winner.trial, winner.dir / "scratch", spec.dir)
    shipped = task.ship(spec, configs[winner.dir.name], load_checkpoint(winner.dir / "best"), ctx, out)
    shutil.copyfile(winner.dir / "best" / WEIGHTS, out / WEIGHTS)
    if spec.objective.direction == "maximize":
        fidelity, note = rank_fidelity(candidates, seeds, study_subset(spec, study))
    else:
        fidelity, note = None, "fidelity is computed for maximised metrics"
    metric = spec.objective.metric
    write_metrics(
        out, metric=metric, winner=winner, candidates=candidates, test=shipped.test, fidelity=fidelity, note=note
    )
    from signtune.stages import chain

    stages = chain(study.user_attrs.get("stage"), study.study_name)
    write_provenance(out, spec, winner, candidates, shipped.inputs, stages=stages)
    result = PromoteResult(out, winner, candidates, shipped.test, fidelity, note, metric=metric)
    if spec.tracking.enabled:
        from signtune.tracking import log_promotion

        log_promotion(spec, result)
    return result


def train_candidate(
    spec: StudySpec,
    task: Task[Any],
    cand: Candidate,
    config: Any,
    device: str,
    *,
    resume: bool,
    on_epoch: OnEpoch | None,
) -> None:
    """Train one candidate through ``task.fit`` with checkpoints; fill in its value, best
    epoch's metrics and epochs run.

    ``report`` stops it (``StopTrial``) after ``promote.patience`` epochs without a better
    ``objective.metric``; the best checkpoint stands.
    """
    objective, patience = spec.objective, spec.promote.patience
    if resume:
        recover_dir(cand.dir / "best")
    last = recover_dir(cand.dir / "last")
    state = load_checkpoint(last) if resume and (last / WEIGHTS).is_file() else None
    if state is None and cand.dir.exists():
        shutil.rmtree(cand.dir)
    best = load_checkpoint(cand.dir / "best") if state is not None and (cand.dir / "best" / WEIGHTS).is_file() else None
    hook = Checkpointer(cand.dir, objective, best, last_epoch=state.epoch if state is not None else 0)
    ctx = TrialContext(
        device=device,
        seed=cand.seed,
        subset=1.0,
        trial_number=cand.trial,
        scratch_dir=cand.dir / "scratch",
        study_dir=spec.dir,
        checkpoint=hook,
        resume=state,
    )
    best_seen, stale = hook.best, 0

    def report(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal best_seen, stale
        if on_epoch is not None:
            on_epoch(cand.dir.name, epoch, metrics)
        value = float(metrics.get(objective.metric, float("nan")))
        if improves(value, best_seen, objective.direction):
            best_seen, stale = value, 0
        else:
            stale += 1
        if patience > 0 and stale >= patience:
            raise StopTrial("early_stop", f"no better {objective.metric} for {patience} epochs")

    stopped: StopTrial | None = None
    try:
        task.fit(config, report, ctx)
    except StopTrial as stop:  # early stopping (or the task's own stop): the best checkpoint stands
        stopped = stop
    except SigntuneError:
        raise
    except Exception as exc:
        raise StudyError(
            Problem(
                f"task {spec.task}",
                f"raised {type(exc).__name__}: {exc} while promoting trial {cand.trial} (seed {cand.seed})",
                "fix the cause (a plug-in's code, the config), then run `study promote-best --resume`",
            )
        ) from None
    if not hook.best_metrics:
        raise StudyError(_no_checkpoint(spec, cand, hook, stopped))
    cand.metrics = dict(hook.best_metrics)
    cand.value = float(hook.best_metrics[objective.metric])
    cand.epochs_run = hook.last_epoch


def _no_checkpoint(spec: StudySpec, cand: Candidate, hook: Checkpointer, stopped: StopTrial | None) -> Problem:
    """Why a candidate has no ``best/`` checkpoint, and what to do."""
    where = f"task {spec.task}"
    metric = spec.objective.metric
    trial = f"trial {cand.trial} (seed {cand.seed})"
    if hook.last_epoch > 0:
        return Problem(
            where,
            f"reported no finite {metric} in any epoch while promoting {trial}",
            "check the config (a diverging learning rate?) and the metrics the task hands to ctx.checkpoint",
        )
    if stopped is not None:
        return Problem(
            where,
            f"stopped ({stopped}) before its first checkpoint while promoting {trial}",
            "change the config with promote.overrides (e.g. a lower optim.lr), or promote other trials (--top-k)",
        )
    return Problem(
        where,
        f"saved no checkpoint while promoting {trial}",
        "call ctx.checkpoint(epoch, model.state_dict(), metrics) after each epoch when ctx.checkpoint is set "
        "(README: Plug-in tasks)",
    )
