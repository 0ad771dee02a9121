"""The ``Task`` protocol and the registry of built-in tasks.

A task trains one configuration and reports per-epoch metrics. It knows nothing of Optuna or
MLflow: ``report(epoch, metrics)`` is its only channel out, and it may raise ``StopTrial``
(pruned) back into the task, which should let it propagate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from signtune.config import TrainConfig, config_keys
from signtune.errors import ConfigError, Problem

ReportFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrialContext:
    """What a task may know about the trial it runs in."""

    device: str
    seed: int
    subset: float
    trial_number: int
    scratch_dir: Path
    study_dir: Path


@dataclass
class TaskResult:
    """What a task returns: the metrics of its best epoch, and facts worth recording."""

    metrics: dict[str, float]
    epochs_run: int
    n_params: int = 0
    device: str = "cpu"
    attrs: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """A trainer signtune can tune."""

    name: str

    def config_keys(self) -> set[str]:
        """Dotted config keys a search space or ``fixed:`` block may set."""
        ...

    def prepare(self, spec: Any) -> dict[str, Any]:
        """Make the data ready once per process (generate, check, load); return a data summary.

        Raises ``DataError`` for bad data, before any trial is created.
        """
        ...

    def fit(self, cfg: TrainConfig, report: ReportFn, ctx: TrialContext) -> TaskResult:
        """Train ``cfg``; call ``report`` once per epoch (1-based) with the metrics."""
        ...


class Sign2TextTask:
    """The built-in task: sign-language features -> English text with the fast trainer."""

    name = "sign2text"

    def __init__(self) -> None:
        self._spec: Any = None

    def config_keys(self) -> set[str]:
        return set(config_keys())

    def prepare(self, spec: Any) -> dict[str, Any]:
        from signtune.data.dataset import load_task_data

        self._spec = spec
        if spec.synthetic is not None:
            from signtune.data.synth import ensure_synthetic

            s = spec.synthetic
            ensure_synthetic(
                spec.data_root,
                seed=s.seed,
                n_train=s.n_train,
                n_val=s.n_val,
                n_test=s.n_test,
                feature_dim=spec.base.data.feature_dim,
            )
        data = load_task_data(self._data_cfg(spec.base, spec.budget.subset), spec.dir, cache_dir=spec.dir / ".cache")
        lengths = [f.shape[0] for f in data.train.features]
        return {
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test) if data.test is not None else 0,
            "feature_dim": data.feature_dim,
            "vocab_size": data.tokenizer.vocab_size,
            "mean_frames": round(sum(lengths) / max(1, len(lengths)), 1),
            "root": str(spec.data_root),
        }

    @staticmethod
    def _data_cfg(cfg: TrainConfig, subset: float) -> Any:
        import dataclasses

        return dataclasses.replace(cfg.data, subset=subset)

    def fit(self, cfg: TrainConfig, report: ReportFn, ctx: TrialContext) -> TaskResult:
        import torch

        from signtune.data.dataset import load_task_data
        from signtune.train.loop import fit

        data = load_task_data(cfg.data, ctx.study_dir, cache_dir=ctx.study_dir / ".cache")
        result = fit(cfg, data, report=report, device=torch.device(ctx.device))
        return TaskResult(
            metrics=dict(result.best),
            epochs_run=result.epochs_run,
            n_params=result.n_params,
            device=result.device,
            attrs={"bleu_signature": result.bleu_signature},
        )


BUILTIN: dict[str, Callable[[], Task]] = {"sign2text": Sign2TextTask}


def get_task(name: str, *, where: str = "task") -> Task:
    """Look up a task by name; unknown names list the valid ones."""
    factory = BUILTIN.get(name)
    if factory is None:
        raise ConfigError(Problem(where, f"unknown task {name!r}", f"use one of {sorted(BUILTIN)}"))
    return factory()
