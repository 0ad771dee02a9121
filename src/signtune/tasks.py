"""The ``Task`` protocol and the registry of built-in tasks.

A task trains one configuration and reports per-epoch metrics. It knows nothing of Optuna or
MLflow: ``report(epoch, metrics)`` is its only channel out, and it may raise ``StopTrial``
(pruned) back into the task, which should let it propagate.

``study promote-best`` drives every task, the built-in one included, through the same hooks:
``promote_config``, then ``fit`` with ``ctx.checkpoint`` (and ``ctx.resume``) set, then
``ship`` for the winner.

Size: past 400 lines because the protocol, the plug-in wrapper and the built-in task's hooks
are kept together, so the one contract that runs and promote-best drive is in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from signtune.config import TrainConfig, apply_overrides, config_keys, flatten
from signtune.errors import ConfigError, Problem, SigntuneError, StudyError

if TYPE_CHECKING:
    from signtune.spec import StudySpec
    from signtune.train.loop import TrainState

ReportFn = Callable[[int, dict[str, float]], None]
ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True)
class Resume:
    """A checkpoint read back: where ``promote-best --resume`` picks a task up.

    ``state`` is the rest of the training state a task handed to ``checkpoint`` (the
    built-in task's optimizer, scheduler, RNG and history); empty when it handed none.
    """

    epoch: int
    tensors: dict[str, Any]  # name -> torch.Tensor, as handed to ``checkpoint``
    metrics: dict[str, float]
    state: dict[str, Any] = field(default_factory=dict)


class CheckpointFn(Protocol):
    """``ctx.checkpoint(epoch, tensors, metrics)``, optionally with ``state=``: tensors and
    plain Python values (lists, dicts, numbers), stored with ``torch.save`` and read back with
    ``weights_only=True``."""

    def __call__(
        self,
        epoch: int,
        tensors: Mapping[str, Any],
        metrics: Mapping[str, float],
        state: Mapping[str, Any] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class TrialContext:
    """What a task may know about the trial it runs in.

    ``checkpoint`` and ``resume`` are set by ``study promote-best`` only (tuning trials train
    without checkpoints): a plug-in calls ``ctx.checkpoint(epoch, tensors, metrics)`` after each
    epoch with a flat ``{name: tensor}`` mapping (e.g. ``model.state_dict()``), and, when
    ``ctx.resume`` is set, continues from ``ctx.resume.epoch + 1`` with ``ctx.resume.tensors``.
    """

    device: str
    seed: int
    subset: float
    trial_number: int
    scratch_dir: Path
    study_dir: Path
    checkpoint: CheckpointFn | None = None
    resume: Resume | None = None


@dataclass(frozen=True)
class Shipped:
    """What a task's ``ship`` did with promote-best's winner.

    Attributes:
        test: its scores on held-out data (numbers, plus texts such as a score signature);
            empty when the task has no test.
        inputs: sha256 of the inputs it was trained and tested on, by name (provenance.json).
    """

    test: dict[str, float | str]
    inputs: dict[str, str]


@dataclass
class TaskResult:
    """What a task returns: the metrics of its best epoch, and facts worth recording."""

    metrics: dict[str, float]
    epochs_run: int
    n_params: int = 0
    device: str = "cpu"
    attrs: dict[str, Any] = field(default_factory=dict)


class Task(Protocol[ConfigT]):
    """A trainer signtune can tune and promote; ``ConfigT`` is the config it trains."""

    name: str

    def config_keys(self) -> set[str] | None:
        """Dotted config keys a search space or ``fixed:`` block may set (None: any)."""
        ...

    def make_config(self, spec: StudySpec, values: dict[str, Any]) -> ConfigT:
        """The config one trial trains: the spec's fixed values, then the trial's ``values``."""
        ...

    def fixed_config(self, spec: StudySpec) -> dict[str, Any]:
        """The flat config every trial shares (for exports and MLflow)."""
        ...

    def prepare(self, spec: StudySpec) -> dict[str, Any]:
        """Make the data ready once per process (generate, check, load); return a data summary.

        Raises ``DataError`` for bad data, before any trial is created.
        """
        ...

    def fit(self, cfg: ConfigT, report: ReportFn, ctx: TrialContext) -> TaskResult:
        """Train ``cfg``; call ``report`` once per epoch (1-based) with the metrics.

        When ``ctx.checkpoint`` is set (promote-best), call it after each epoch, before
        ``report``; when ``ctx.resume`` is set, go on from the epoch after it.
        """
        ...

    def promote_config(self, spec: StudySpec, params: dict[str, Any], *, epochs: int | None, seed: int) -> ConfigT:
        """The config promote-best retrains: a trial's ``params`` on all the training data, with
        ``promote.overrides``, the ``seed`` and (unless None) ``epochs``."""
        ...

    def ship(self, spec: StudySpec, cfg: ConfigT, best: Resume, ctx: TrialContext, out_dir: Path) -> Shipped:
        """Test promote-best's winner (its ``best`` checkpoint, trained with ``cfg``) and write
        what loading it needs besides the weights (``config.json``...) into ``out_dir``."""
        ...


class Sign2TextTask:
    """The built-in task: sign-language features -> English text with the fast trainer."""

    name = "sign2text"

    def __init__(self) -> None:
        self._spec: StudySpec | None = None

    def config_keys(self) -> set[str] | None:
        return set(config_keys())

    def make_config(self, spec: StudySpec, values: dict[str, Any]) -> TrainConfig:
        return apply_overrides(spec.base, {**values, "data.subset": spec.budget.subset})

    def fixed_config(self, spec: StudySpec) -> dict[str, Any]:
        return {**flatten(spec.base), "data.subset": spec.budget.subset}

    def promote_config(self, spec: StudySpec, params: dict[str, Any], *, epochs: int | None, seed: int) -> TrainConfig:
        cfg = apply_overrides(spec.base, {**params, "data.subset": 1.0}, where="trial params")
        cfg = apply_overrides(cfg, spec.promote.overrides, where=f"{spec.path}: promote.overrides")
        values: dict[str, Any] = {"run.seed": seed}
        if epochs is not None:
            values["run.epochs"] = epochs
        return apply_overrides(cfg, values, where="promote-best flags")

    def prepare(self, spec: StudySpec) -> dict[str, Any]:
        from signtune.data.dataset import load_task_data
        from signtune.models import check_model_files

        self._spec = spec
        # A missing pretrained model or tokenizer stops the run here, before any trial.
        check_model_files(
            spec.base.model,
            tokenizer=spec.base.data.tokenizer,
            base_dir=spec.dir,
            max_frames=spec.base.data.max_frames,
        )
        ensure_spec_data(spec)
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
        on_epoch_end: Callable[[TrainState], None] | None = None
        resume: TrainState | None = None
        checkpoint = ctx.checkpoint
        if checkpoint is not None:  # promote-best: every epoch's weights and training state are kept
            from signtune.promote.checkpoint import train_state, training_state

            if ctx.resume is not None:
                resume = train_state(ctx.resume)

            def on_epoch_end(st: TrainState) -> None:
                metrics = {k: v for k, v in st.history[-1].items() if k != "epoch"}
                checkpoint(st.epoch, st.model, metrics, state=training_state(st))
                report(st.epoch, metrics)  # after the checkpoint, so a stop keeps this epoch's

        result = fit(
            cfg,
            data,
            report=report if checkpoint is None else None,
            device=torch.device(ctx.device),
            base_dir=ctx.study_dir,
            resume=resume,
            on_epoch_end=on_epoch_end,
        )
        return TaskResult(
            metrics=dict(result.best),
            epochs_run=result.epochs_run,
            n_params=result.n_params,
            device=result.device,
            attrs={"bleu_signature": result.bleu_signature},
        )

    def ship(self, spec: StudySpec, cfg: TrainConfig, best: Resume, ctx: TrialContext, out_dir: Path) -> Shipped:
        """Beam-search the test split with the winner and write the translatable model folder."""
        from signtune.inference import ship_sign2text

        return ship_sign2text(spec, cfg, best.tensors, ctx, out_dir)


def ensure_spec_data(spec: StudySpec) -> None:
    """Generate a sign2text study's synthetic data on first use (when its spec asks for it)."""
    if spec.synthetic is None:
        return
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


PluginFn = Callable[[dict[str, Any], ReportFn, TrialContext], Any]


class PluginTask:
    """A user trainer named ``package.module:function`` in study.yaml.

    The function receives ``(config, report, context)``: ``config`` is a plain dict of the
    spec's ``fixed`` values plus the trial's searched values (dotted keys, plus
    ``data.subset``); ``report(epoch, metrics)`` logs a dict of numbers and may raise
    ``StopTrial`` to prune; it returns its final metrics as a dict of numbers.
    """

    def __init__(self, ref: str, fn: PluginFn) -> None:
        self.name = ref
        self.fn = fn

    def config_keys(self) -> set[str] | None:
        return None

    def make_config(self, spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
        return {**spec.fixed, **values, "data.subset": spec.budget.subset}

    def fixed_config(self, spec: StudySpec) -> dict[str, Any]:
        return {**spec.fixed, "data.subset": spec.budget.subset}

    def promote_config(
        self, spec: StudySpec, params: dict[str, Any], *, epochs: int | None, seed: int
    ) -> dict[str, Any]:
        config = {**spec.fixed, **params, "data.subset": 1.0, **spec.promote.overrides, "run.seed": seed}
        if epochs is not None:
            config["run.epochs"] = epochs
        return config

    def prepare(self, spec: StudySpec) -> dict[str, Any]:
        prepare = getattr(self.fn, "prepare", None)
        return dict(prepare(spec)) if callable(prepare) else {}

    def fit(self, cfg: dict[str, Any], report: ReportFn, ctx: TrialContext) -> TaskResult:
        epochs = 0

        def counting_report(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal epochs
            epochs = max(epochs, int(epoch))
            report(epoch, metrics)

        out = self.fn(dict(cfg), counting_report, ctx)
        if isinstance(out, TaskResult):
            return out
        if not isinstance(out, dict) or not out:
            raise TypeError(f"task {self.name} returned {out!r}; it must return a dict of metric names to numbers")
        bad = {k: v for k, v in out.items() if isinstance(v, bool) or not isinstance(v, int | float)}
        if bad:
            raise TypeError(f"task {self.name} returned non-numeric metrics {bad!r}; return numbers only")
        return TaskResult(metrics={k: float(v) for k, v in out.items()}, epochs_run=epochs, device=ctx.device)

    def ship(self, spec: StudySpec, cfg: dict[str, Any], best: Resume, ctx: TrialContext, out_dir: Path) -> Shipped:
        """The plug-in's optional ``test(config, tensors, ctx)`` hook on the winner, and a
        ``config.json`` naming the task, the metric, the best epoch and the config."""
        import json
        import sys

        from signtune.promote.provenance import sha256
        from signtune.storage import mask_url

        test = self._test(cfg, best, ctx)
        doc = {
            "task": self.name,
            "metric": spec.objective.metric,
            "best_epoch": best.epoch,
            "config": {k: mask_url(v) if isinstance(v, str) else v for k, v in cfg.items()},
        }
        (out_dir / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
        source = Path(getattr(sys.modules.get(self.fn.__module__), "__file__", "") or "")
        return Shipped(test=dict(test), inputs={source.name: sha256(source)} if source.is_file() else {})

    def _test(self, cfg: dict[str, Any], best: Resume, ctx: TrialContext) -> dict[str, float]:
        test_fn = getattr(self.fn, "test", None)
        if not callable(test_fn):
            return {}
        where = f"task {self.name}: test"
        try:
            out = test_fn(dict(cfg), best.tensors, ctx)
        except SigntuneError:
            raise
        except Exception as exc:
            raise StudyError(Problem(where, f"raised {type(exc).__name__}: {exc}", "fix the test hook")) from None
        if not isinstance(out, dict) or any(
            isinstance(v, bool) or not isinstance(v, int | float) for v in out.values()
        ):
            raise StudyError(
                Problem(where, f"returned {out!r}", "return a dict of metric names to numbers, e.g. {'test_acc': 0.9}")
            )
        return {k: float(v) for k, v in out.items()}


BUILTIN: dict[str, Callable[[], Task]] = {"sign2text": Sign2TextTask}


def load_plugin(ref: str, *, where: str = "task", study_dir: Path | None = None) -> PluginTask:
    """Import ``package.module:function``; every failure names the reference and the fix.

    The study's own folder (``study_dir``, the one holding its study.yaml) comes first on the
    import path while the plug-in is imported, and only then: a ``mytask.py`` beside the
    study.yaml that names ``mytask:objective`` needs no ``PYTHONPATH``.
    """
    import importlib

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            Problem(
                where, f"unknown task {ref!r}", f"use one of {sorted(BUILTIN)} or a plug-in as package.module:function"
            )
        )
    try:
        with _first_on_path(study_dir):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        beside = f"put {module_name.replace('.', '/')}.py beside {study_dir / 'study.yaml'}, " if study_dir else ""
        raise ConfigError(
            Problem(
                where,
                f"cannot import module {module_name!r} of task {ref!r} ({exc})",
                f"{beside}install the package, or add its folder to PYTHONPATH",
            )
        ) from None
    except Exception as exc:  # the plug-in's own import-time error
        raise ConfigError(
            Problem(
                where, f"importing {module_name!r} of task {ref!r} raised {type(exc).__name__}: {exc}", "fix the module"
            )
        ) from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(
            Problem(
                where, f"module {module_name!r} has no callable {attr!r}", "check the function name after the colon"
            )
        )
    return PluginTask(ref, fn)


def get_task(name: str, *, where: str = "task", study_dir: Path | None = None) -> Task:
    """A built-in task by name, or a plug-in ``package.module:function`` (looked up in the
    study's folder first, see ``load_plugin``)."""
    factory = BUILTIN.get(name)
    if factory is not None:
        return factory()
    return load_plugin(name, where=where, study_dir=study_dir)


@contextlib.contextmanager
def _first_on_path(folder: Path | None) -> Iterator[None]:
    """``folder`` at the front of ``sys.path`` for the duration (unless it is there already)."""
    import sys

    entry = str(folder.resolve()) if folder is not None else None
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)
