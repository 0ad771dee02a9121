"""``signtune.objective``: the bridge between an Optuna trial and a task, driven in-process.

A tiny fake task (a plain object with the ``Task`` hooks ``Objective`` calls) and an in-memory
Optuna study stand in for the trainer and the storage, so every outcome of a trial (complete,
pruned, diverged, timeout, failed, out of memory, interrupted) and every tracking failure is
checked on its own, in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from signtune import interrupts
from signtune.config import TrainConfig
from signtune.errors import ConfigError, DataError, StopTrial
from signtune.objective import TRACKING_OFF_AFTER, Heartbeat, Objective, Watchdog, halve_batch
from signtune.space import SearchSpace, parse
from signtune.spec import StudySpec, load_spec
from signtune.tasks import TaskResult, TrialContext

FitFn = Callable[[dict[str, Any], Callable[[int, dict[str, float]], None], TrialContext], TaskResult]


def make_spec(root: Path, *, trial_timeout: float | None = None) -> StudySpec:
    """A plug-in study (untyped config) with one searched float ``x`` and fixed batch sizes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "space.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    budget = (
        f"{{trials: 5, subset: 0.5, trial_timeout: {trial_timeout}}}" if trial_timeout else "{trials: 5, subset: 0.5}"
    )
    (root / "study.yaml").write_text(
        "name: unit\n"
        "task: fake:fit\n"
        "search_space: space.yaml\n"
        "fixed: {run.device: cpu, run.seed: 7, run.epochs: 3, data.batch_size: 32, eval.batch_size: 64}\n"
        "objective: {metric: score, direction: maximize}\n"
        "pruner: {name: none}\n"
        f"budget: {budget}\n"
        "tracking: {enabled: false}\n"
    )
    return load_spec(root / "study.yaml")


class FakeTask:
    """Implements what ``Objective`` calls of a ``Task``; ``fit`` runs the test's function."""

    name = "fake"

    def __init__(self, fit: FitFn) -> None:
        self._fit = fit
        self.configs: list[dict[str, Any]] = []
        self.contexts: list[TrialContext] = []

    def config_keys(self) -> set[str] | None:
        return None

    def make_config(self, spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
        return {**spec.fixed, **values}

    def fixed_config(self, spec: StudySpec) -> dict[str, Any]:
        return dict(spec.fixed)

    def prepare(self, spec: StudySpec) -> dict[str, Any]:
        return {}

    def fit(
        self, cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext
    ) -> TaskResult:
        self.configs.append(cfg)
        self.contexts.append(ctx)
        return self._fit(cfg, report, ctx)


def epochs_of(scores: list[float], *, final: dict[str, float] | None = None) -> FitFn:
    """A fit that reports ``score`` = each of ``scores`` in turn, then returns the last (or ``final``)."""

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        for epoch, score in enumerate(scores, start=1):
            report(epoch, {"score": score, "loss": 1.0 / epoch})
        return TaskResult(metrics=final if final is not None else {"score": scores[-1]}, epochs_run=len(scores))

    return fit


def raising(exc: BaseException) -> FitFn:
    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        report(1, {"score": 0.5})
        raise exc

    return fit


class RecordingTracker:
    """A tracker that works and records every call (name, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def start_trial(self, number: int, *, params: dict[str, Any], tags: dict[str, str]) -> str:
        self._record("start_trial", number, params=params, tags=tags)
        return f"run-{number}"

    def run_url(self, run_id: str) -> str:
        self._record("run_url", run_id)
        return f"http://mlflow/{run_id}"

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        self._record("log_epoch", run_id, metrics, epoch)

    def log_summary(self, run_id: str, metrics: dict[str, float]) -> None:
        self._record("log_summary", run_id, metrics)

    def end_trial(self, run_id: str, *, state: str, reason: str = "", wall_time_s: float = 0.0) -> None:
        self._record("end_trial", run_id, state=state, reason=reason)


class BrokenTracker(RecordingTracker):
    """Every call is recorded, then raises (an MLflow server that is down); ``broken`` toggles it."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        super()._record(name, *args, **kwargs)
        if self.broken:
            raise ConnectionError(f"MLflow is down ({name})")


@pytest.fixture(autouse=True)
def _no_pending_stop() -> Iterator[None]:
    interrupts.reset()
    yield
    interrupts.reset()


@pytest.fixture(autouse=True)
def dashboard_notes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """optuna-dashboard's ``save_note``, recorded (the real package takes seconds to import)."""
    notes: list[tuple[int, str]] = []
    fake = types.ModuleType("optuna_dashboard")
    fake.save_note = lambda trial, body: notes.append((trial.number, body))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "optuna_dashboard", fake)
    return notes


@pytest.fixture
def spec(tmp_path: Path) -> StudySpec:
    return make_spec(tmp_path / "study")


@pytest.fixture
def space(spec: StudySpec) -> SearchSpace:
    return parse(spec.search_space)


def new_study(pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    return optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=pruner or optuna.pruners.NopPruner(),
    )


def run_one(study: optuna.Study, objective: Objective) -> FrozenTrial:
    """One trial through ``study.optimize``, as the worker loop runs it (failures caught)."""
    study.optimize(objective, n_trials=1, catch=(Exception,))
    return study.get_trials(deepcopy=False)[-1]


# ----------------------------------------------------------------------------------------------
# A complete trial


def test_complete_trial_returns_the_metric_and_records_its_facts(spec: StudySpec, space: SearchSpace) -> None:
    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        report(1, {"score": 0.25})
        report(2, {"score": 0.75})
        return TaskResult(
            metrics={"score": 0.75, "epoch": 2},
            epochs_run=2,
            n_params=1234,
            attrs={"bleu_signature": "nrefs:1", "kept": 3, "dropped": [1, 2]},
        )

    task = FakeTask(fit)
    seen: list[tuple[int, int, dict[str, float]]] = []
    objective = Objective(spec, space, task, RecordingTracker(), worker_id="w3", on_epoch=lambda *a: seen.append(a))
    study = new_study()
    trial = run_one(study, objective)

    assert trial.state == TrialState.COMPLETE and trial.value == 0.75
    assert trial.intermediate_values == {1: 0.25, 2: 0.75}
    assert [(n, e) for n, e, _ in seen] == [(0, 1), (0, 2)], "on_epoch gets every report"
    attrs = trial.user_attrs
    assert attrs["epochs_run"] == 2 and attrs["n_params"] == 1234 and attrs["best_epoch"] == 2
    assert attrs["bleu_signature"] == "nrefs:1" and attrs["kept"] == 3
    assert "dropped" not in attrs, "only plain str/int/float task attrs are recorded"
    assert "reason" not in attrs
    assert attrs["subset"] == 0.5 and attrs["epochs"] == 3 and attrs["seed"] == 7
    assert attrs["device"] == "cpu" and attrs["gpu"] == ""
    assert attrs["wall_time_s"] >= 0
    # The config the task trained: the spec's fixed values and the trial's suggested ones.
    (cfg,) = task.configs
    assert cfg == {**spec.fixed, "x": trial.params["x"]}
    (ctx,) = task.contexts
    assert (ctx.device, ctx.seed, ctx.subset, ctx.trial_number) == ("cpu", 7, 0.5, trial.number)
    assert ctx.study_dir == spec.dir and f"signtune-unit-{trial.number}" in ctx.scratch_dir.name
    assert ctx.checkpoint is None and ctx.resume is None, "tuning trials train without checkpoints"


def test_owner_attrs_are_set_before_anything_else(
    spec: StudySpec, space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor reaping dead workers finds their trials by host and pid: those are written
    first, so even a trial that dies before training (here: in ``make_config``) carries them."""
    monkeypatch.setenv("SIGNTUNE_HOST", "node-17")

    class BadConfig(FakeTask):
        def make_config(self, spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("cannot build the config")

    objective = Objective(
        spec, space, BadConfig(epochs_of([1.0])), RecordingTracker(), worker_id="w7", supervisor_pid=4242
    )
    trial = run_one(new_study(), objective)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["host"] == "node-17"
    assert trial.user_attrs["worker"] == "w7"
    assert trial.user_attrs["pid"] == os.getpid()
    assert trial.user_attrs["supervisor"] == 4242


def test_owner_attrs_are_in_storage_while_the_task_trains(spec: StudySpec, space: SearchSpace) -> None:
    study = new_study()
    seen: dict[str, Any] = {}

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        seen.update(study.get_trials(deepcopy=False)[-1].user_attrs)
        report(1, {"score": 1.0})
        return TaskResult(metrics={"score": 1.0}, epochs_run=1)

    run_one(study, Objective(spec, space, FakeTask(fit), RecordingTracker()))
    assert seen["pid"] == os.getpid() and seen["worker"] == "0" and seen["host"]
    assert "supervisor" not in seen, "no supervisor attr for a process no `study run` started"


# ----------------------------------------------------------------------------------------------
# Reports, pruning and divergence


def test_report_reaches_optuna_and_a_pruned_trial_records_why(spec: StudySpec, space: SearchSpace) -> None:
    reached: list[int] = []

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        for epoch, score in enumerate([0.9, 0.1, 0.95], start=1):
            report(epoch, {"score": score})
            reached.append(epoch)
        return TaskResult(metrics={"score": 0.95}, epochs_run=3)

    study = new_study(optuna.pruners.ThresholdPruner(lower=0.5))
    tracker = RecordingTracker()
    trial = run_one(study, Objective(spec, space, FakeTask(fit), tracker))

    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.9, 2: 0.1}
    assert reached == [1], "the pruning stop is raised inside report, into the task"
    assert trial.user_attrs["reason"] == "pruned"
    assert "epoch 2" in trial.user_attrs["reason_detail"]
    assert trial.user_attrs["epochs_run"] == 2
    end = [c for c in tracker.calls if c[0] == "end_trial"]
    assert len(end) == 1 and end[0][2] == {"state": "pruned", "reason": "pruned"}


def test_the_pruner_compares_pruner_metric_while_the_value_stays_the_objective(
    spec: StudySpec, space: SearchSpace
) -> None:
    """``pruner.metric: loss`` (minimised) in a maximised study: the intermediate values are the
    negated losses, the pruned trial keeps its best score as ``value_so_far``."""
    import dataclasses

    from signtune.spec import PrunerSpec

    by_loss = dataclasses.replace(spec, pruner=PrunerSpec(name="median", metric="loss"))

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        for epoch, (score, loss) in enumerate([(0.2, 3.0), (0.6, 2.5), (0.4, 2.0)], start=1):
            report(epoch, {"score": score, "loss": loss})
        return TaskResult(metrics={"score": 0.6}, epochs_run=3)

    study = new_study(optuna.pruners.ThresholdPruner(lower=-2.2))  # prunes once -loss < -2.2
    trial = run_one(study, Objective(by_loss, space, FakeTask(fit), RecordingTracker()))
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: -3.0}
    assert trial.user_attrs["value_so_far"] == 0.2
    assert "loss=3 at epoch 1" in trial.user_attrs["reason_detail"]

    study = new_study(optuna.pruners.ThresholdPruner(lower=-3.5))  # never prunes
    trial = run_one(study, Objective(by_loss, space, FakeTask(fit), RecordingTracker()))
    assert trial.state == TrialState.COMPLETE
    assert trial.value == 0.6 and trial.intermediate_values == {1: -3.0, 2: -2.5, 3: -2.0}


def test_a_report_without_the_pruner_metric_fails_the_trial(spec: StudySpec, space: SearchSpace) -> None:
    import dataclasses

    from signtune.spec import PrunerSpec

    by_loss = dataclasses.replace(spec, pruner=PrunerSpec(name="median", metric="val_loss"))
    trial = run_one(new_study(), Objective(by_loss, space, FakeTask(epochs_of([0.5])), RecordingTracker()))
    assert trial.state == TrialState.FAIL
    assert "pruner.metric is 'val_loss'" in trial.user_attrs["error"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_metric_stops_the_trial_as_diverged(spec: StudySpec, space: SearchSpace, bad: float) -> None:
    trial = run_one(new_study(), Objective(spec, space, FakeTask(epochs_of([0.5, bad, 0.7])), RecordingTracker()))
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["reason"] == "diverged"
    assert "epoch 2" in trial.user_attrs["reason_detail"]
    assert trial.user_attrs["epochs_run"] == 2


def test_a_report_without_the_objective_metric_fails_the_trial(spec: StudySpec, space: SearchSpace) -> None:
    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        report(1, {"accuracy": 0.5})
        return TaskResult(metrics={"score": 0.5}, epochs_run=1)

    trial = run_one(new_study(), Objective(spec, space, FakeTask(fit), RecordingTracker()))
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "error"
    assert "'score'" in trial.user_attrs["error"] and "accuracy" in trial.user_attrs["error"]
    assert trial.intermediate_values == {}


def test_a_task_that_raises_fails_with_its_error_and_traceback(spec: StudySpec, space: SearchSpace) -> None:
    tracker = RecordingTracker()
    study = new_study()
    with pytest.raises(ValueError, match="shape mismatch"):  # the worker loop sees the failure
        study.optimize(Objective(spec, space, FakeTask(raising(ValueError("shape mismatch"))), tracker), n_trials=1)
    trial = study.get_trials(deepcopy=False)[-1]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "error"
    assert trial.user_attrs["error"] == "ValueError: shape mismatch"
    assert "raise exc" in trial.user_attrs["traceback"] and "shape mismatch" in trial.user_attrs["traceback"]
    assert trial.user_attrs["epochs_run"] == 1
    end = [c for c in tracker.calls if c[0] == "end_trial"]
    assert end[0][2] == {"state": "failed", "reason": "error"}


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``."""


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (OutOfMemoryError("allocation failed"), "oom"),
        (MemoryError("Out of memory"), "oom"),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), "cuda_error"),
        (RuntimeError("memory layout is wrong"), "error"),
    ],
)
def test_failure_reasons_tell_memory_from_other_errors(
    spec: StudySpec, space: SearchSpace, exc: Exception, reason: str
) -> None:
    trial = run_one(new_study(), Objective(spec, space, FakeTask(raising(exc)), RecordingTracker()))
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == reason
    assert trial.user_attrs["error"].startswith(type(exc).__name__)


def test_a_data_error_fails_with_reason_data_and_names_the_file(spec: StudySpec, space: SearchSpace) -> None:
    err = DataError("data/train/clip_0007.npy: cannot be read (truncated)")
    trial = run_one(new_study(), Objective(spec, space, FakeTask(raising(err)), RecordingTracker()))
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "data"
    assert "clip_0007.npy" in trial.user_attrs["error"]


def test_another_signtune_error_fails_with_reason_error(spec: StudySpec, space: SearchSpace) -> None:
    trial = run_one(
        new_study(), Objective(spec, space, FakeTask(raising(ConfigError("bad value"))), RecordingTracker())
    )
    assert trial.user_attrs["reason"] == "error" and "bad value" in trial.user_attrs["error"]


@pytest.mark.parametrize("metrics", [{"loss": 0.1}, {"score": math.nan}])
def test_a_result_without_a_finite_metric_fails_as_no_metric(
    spec: StudySpec, space: SearchSpace, metrics: dict[str, float]
) -> None:
    study = new_study()
    with pytest.raises(RuntimeError, match="no finite 'score'"):
        study.optimize(
            Objective(spec, space, FakeTask(epochs_of([0.5], final=metrics)), RecordingTracker()), n_trials=1
        )
    trial = study.get_trials(deepcopy=False)[-1]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "no_metric"
    assert "score" in trial.user_attrs["error"]


def test_a_make_config_error_is_recorded_like_any_task_error(spec: StudySpec, space: SearchSpace) -> None:
    class BadConfig(FakeTask):
        def make_config(self, spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
            raise ValueError("x must be < 0.5")

    trial = run_one(new_study(), Objective(spec, space, BadConfig(epochs_of([1.0])), RecordingTracker()))
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs.get("reason") == "error"
    assert "x must be < 0.5" in trial.user_attrs.get("error", "")
    assert "traceback" in trial.user_attrs


# ----------------------------------------------------------------------------------------------
# Out-of-memory retries


def test_halve_batch_on_a_flat_dict_config() -> None:
    cfg = {"data.batch_size": 33, "optim.grad_accum": 2, "eval.batch_size": 64, "optim.lr": 0.1}
    half = halve_batch(cfg)
    assert half == {"data.batch_size": 16, "optim.grad_accum": 4, "eval.batch_size": 32, "optim.lr": 0.1}
    assert cfg["data.batch_size"] == 33, "the original config is left as it was"
    # No accumulation given: it starts from 1. Sizes never drop below 1.
    assert halve_batch({"data.batch_size": 1}) == {"data.batch_size": 1, "optim.grad_accum": 2}
    # A config without batch keys (a plug-in's) comes back equal.
    assert halve_batch({"x": 0.3}) == {"x": 0.3}


def test_halve_batch_on_the_typed_config() -> None:
    cfg = TrainConfig()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, batch_size=33),
        optim=dataclasses.replace(cfg.optim, grad_accum=3),
        eval=dataclasses.replace(cfg.eval, batch_size=1),
    )
    half = halve_batch(cfg)
    assert (half.data.batch_size, half.optim.grad_accum, half.eval.batch_size) == (16, 6, 1)
    assert cfg.data.batch_size == 33
    # Nothing else changes: the effective batch and every other setting stay the trial's.
    assert half.model == cfg.model and half.run == cfg.run and half.optim.lr == cfg.optim.lr
    assert half.data.batch_size * half.optim.grad_accum <= cfg.data.batch_size * cfg.optim.grad_accum


def test_an_oom_retry_trains_the_same_params_at_half_the_batch(spec: StudySpec, space: SearchSpace) -> None:
    study = new_study()
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 0, "oom_retry": True})
    task = FakeTask(epochs_of([0.5]))
    trial = run_one(study, Objective(spec, space, task, RecordingTracker()))
    assert trial.state == TrialState.COMPLETE and trial.params == {"x": 0.25}
    (cfg,) = task.configs
    assert cfg["data.batch_size"] == 16 and cfg["optim.grad_accum"] == 2 and cfg["eval.batch_size"] == 32
    assert cfg["x"] == 0.25
    assert trial.user_attrs["oom_retry_config"] == {"data.batch_size": 16, "optim.grad_accum": 2, "eval.batch_size": 32}


def test_a_plain_retry_keeps_the_batch(spec: StudySpec, space: SearchSpace) -> None:
    study = new_study()
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 0})
    task = FakeTask(epochs_of([0.5]))
    trial = run_one(study, Objective(spec, space, task, RecordingTracker()))
    assert task.configs[0]["data.batch_size"] == 32
    assert "oom_retry_config" not in trial.user_attrs


# ----------------------------------------------------------------------------------------------
# The watchdog (budget.trial_timeout)


def sleeps_until_stopped(limit_s: float = 10.0) -> FitFn:
    """A hung task: reports once, then sleeps in short steps until something stops it (bounded)."""

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        report(1, {"score": 0.5})
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            time.sleep(0.01)
        return TaskResult(metrics={"score": 0.5}, epochs_run=1)  # never stopped: the test fails

    return fit


def test_a_silent_trial_is_stopped_by_the_watchdog(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "study", trial_timeout=0.2)
    previous = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    trial = run_one(
        new_study(), Objective(spec, parse(spec.search_space), FakeTask(sleeps_until_stopped()), RecordingTracker())
    )
    assert time.monotonic() - started < 8
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["reason"] == "timeout"
    assert "trial_timeout" in trial.user_attrs["reason_detail"]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the alarm is disarmed after the trial"
    assert signal.getsignal(signal.SIGALRM) == previous, "the previous SIGALRM handler is put back"


def test_the_watchdog_is_re_armed_by_every_report(tmp_path: Path) -> None:
    """A trial that keeps reporting runs longer than the timeout without being stopped."""
    spec = make_spec(tmp_path / "study", trial_timeout=0.3)

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        end = time.monotonic() + 0.6  # twice the timeout, in reports 0.02 s apart
        epoch = 0
        while time.monotonic() < end:
            epoch += 1
            report(epoch, {"score": 0.5})
            time.sleep(0.02)
        return TaskResult(metrics={"score": 0.5}, epochs_run=epoch)

    trial = run_one(new_study(), Objective(spec, parse(spec.search_space), FakeTask(fit), RecordingTracker()))
    assert trial.state == TrialState.COMPLETE, trial.user_attrs


def test_slow_tracking_is_not_counted_as_a_silent_trial(tmp_path: Path) -> None:
    """MLflow's first import and store set-up run inside a report with the alarm held."""
    spec = make_spec(tmp_path / "study", trial_timeout=0.2)

    class SlowTracker(RecordingTracker):
        def start_trial(self, number: int, *, params: dict[str, Any], tags: dict[str, str]) -> str:
            time.sleep(0.4)  # slow I/O, twice the timeout
            return super().start_trial(number, params=params, tags=tags)

    tracker = SlowTracker()
    trial = run_one(new_study(), Objective(spec, parse(spec.search_space), FakeTask(epochs_of([0.1, 0.2])), tracker))
    assert trial.state == TrialState.COMPLETE, trial.user_attrs
    # Not even the tracking call was cut: an alarm inside it would be recorded as a tracking gap.
    assert "tracking_gap" not in trial.user_attrs
    assert tracker.names().count("log_epoch") == 2


def test_the_watchdog_is_off_outside_the_main_thread() -> None:
    made: list[Watchdog] = []
    thread = threading.Thread(target=lambda: made.append(Watchdog(0.1)))
    thread.start()
    thread.join()
    assert made[0].timeout_s is None
    assert Watchdog(0.1).timeout_s == 0.1 and Watchdog(None).timeout_s is None


# ----------------------------------------------------------------------------------------------
# Tracking never fails training


def test_a_working_tracker_gets_the_trial_run(
    spec: StudySpec, space: SearchSpace, monkeypatch: pytest.MonkeyPatch, dashboard_notes: list[tuple[int, str]]
) -> None:
    monkeypatch.setenv("SIGNTUNE_HOST", "node-3")
    tracker = RecordingTracker()
    trial = run_one(new_study(), Objective(spec, space, FakeTask(epochs_of([0.1, 0.3])), tracker, worker_id="2"))
    assert tracker.names() == ["start_trial", "run_url", "log_epoch", "log_epoch", "end_trial", "log_summary"]
    _, (number,), kwargs = tracker.calls[0]
    assert number == trial.number and kwargs["params"] == trial.params
    assert kwargs["tags"]["host"] == "node-3" and kwargs["tags"]["worker"] == "2"
    assert kwargs["tags"]["pid"] == str(os.getpid()) and kwargs["tags"]["subset"] == "0.5"
    assert [c[1][2] for c in tracker.calls if c[0] == "log_epoch"] == [1, 2]
    assert tracker.calls[2][1][1] == {"score": 0.1, "loss": 1.0}, "every metric of the epoch is logged"
    assert tracker.calls[4][2] == {"state": "complete", "reason": ""}
    assert tracker.calls[5][1] == (f"run-{trial.number}", {"score": 0.3})
    assert trial.user_attrs["mlflow_run_id"] == f"run-{trial.number}"
    assert "tracking_gap" not in trial.user_attrs
    # The trial's page in optuna-dashboard links its MLflow run.
    assert dashboard_notes == [
        (
            trial.number,
            f"MLflow run [`run-{trial.number}`](http://mlflow/run-{trial.number}) (open with `study mlflow-ui`)",
        )
    ]


def test_a_failing_tracker_never_fails_a_trial_and_is_switched_off(spec: StudySpec, space: SearchSpace) -> None:
    tracker = BrokenTracker()
    objective = Objective(spec, space, FakeTask(epochs_of([0.2, 0.4])), tracker)
    study = new_study()
    calls_per_trial = []
    for _ in range(TRACKING_OFF_AFTER + 2):
        before = len(tracker.calls)
        trial = run_one(study, objective)
        calls_per_trial.append(len(tracker.calls) - before)
        assert trial.state == TrialState.COMPLETE and trial.value == 0.4
        assert trial.intermediate_values == {1: 0.2, 2: 0.4}
        assert "mlflow_run_id" not in trial.user_attrs
    # One failed call per trial (the run's creation; the trial then goes on untracked), then none.
    assert calls_per_trial == [1] * TRACKING_OFF_AFTER + [0, 0]
    trials = study.get_trials(deepcopy=False)
    for t in trials[:TRACKING_OFF_AFTER]:
        assert t.user_attrs["tracking_gap"].startswith("create the run: ConnectionError: MLflow is down")
    for t in trials[TRACKING_OFF_AFTER:]:
        assert "tracking off" in t.user_attrs["tracking_gap"]


def test_a_tracking_failure_mid_trial_keeps_the_first_gap(spec: StudySpec, space: SearchSpace) -> None:
    class FailsOnEpochTwo(RecordingTracker):
        def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
            super().log_epoch(run_id, metrics, epoch)
            if epoch >= 2:
                raise TimeoutError("read timed out")

    tracker = FailsOnEpochTwo()
    trial = run_one(new_study(), Objective(spec, space, FakeTask(epochs_of([0.1, 0.2, 0.3])), tracker))
    assert trial.state == TrialState.COMPLETE and trial.value == 0.3
    assert trial.user_attrs["tracking_gap"] == "log epoch 2: TimeoutError: read timed out"
    # After the first failure the trial makes no further MLflow calls (no end, no summary).
    assert tracker.names() == ["start_trial", "run_url", "log_epoch", "log_epoch"]


def test_only_failures_in_a_row_switch_tracking_off(spec: StudySpec, space: SearchSpace) -> None:
    tracker = BrokenTracker()
    objective = Objective(spec, space, FakeTask(epochs_of([0.5])), tracker)
    study = new_study()
    for _ in range(TRACKING_OFF_AFTER - 1):
        run_one(study, objective)
    tracker.broken = False
    assert "tracking_gap" not in run_one(study, objective).user_attrs  # a tracked trial resets the count
    tracker.broken = True
    for _ in range(TRACKING_OFF_AFTER - 1):
        run_one(study, objective)
    before = len(tracker.calls)
    trial = run_one(study, objective)
    assert len(tracker.calls) == before + 1, "still tracking: fewer than TRACKING_OFF_AFTER failures in a row"
    assert "tracking off" not in trial.user_attrs["tracking_gap"]


# ----------------------------------------------------------------------------------------------
# Heartbeat


def test_a_running_trial_records_its_heartbeat(
    spec: StudySpec, space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("signtune.storage.HEARTBEAT_INTERVAL_S", 0.02)
    study = new_study()
    beats: list[float] = []

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        first = study.get_trials(deepcopy=False)[-1].user_attrs.get("heartbeat")
        assert first is not None, "the heartbeat is written when the trial starts"
        beats.append(first)
        end = time.monotonic() + 5
        while time.monotonic() < end and beats[-1] == first:  # wait for a later beat
            time.sleep(0.01)
            beats.append(study.get_trials(deepcopy=False)[-1].user_attrs["heartbeat"])
        report(1, {"score": 1.0})
        return TaskResult(metrics={"score": 1.0}, epochs_run=1)

    started = time.time()
    trial = run_one(study, Objective(spec, space, FakeTask(fit), RecordingTracker()))
    assert trial.state == TrialState.COMPLETE, trial.user_attrs
    assert beats[-1] > beats[0], "the heartbeat is refreshed while the task trains"
    assert started - 0.1 <= beats[0] <= time.time() + 0.1, "epoch seconds"
    assert not [t for t in threading.enumerate() if t.name == "signtune-heartbeat"], "the thread ends with the trial"


def test_a_failed_heartbeat_write_is_retried_at_the_next_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("signtune.storage.HEARTBEAT_INTERVAL_S", 0.01)

    class FlakyTrial:
        def __init__(self) -> None:
            self.failures = 3
            self.attrs: dict[str, Any] = {}
            self.written = threading.Event()

        def set_user_attr(self, key: str, value: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("database is locked")
            self.attrs[key] = value
            self.written.set()

    trial = FlakyTrial()
    with Heartbeat(trial):  # type: ignore[arg-type]
        assert trial.written.wait(5)
    assert isinstance(trial.attrs["heartbeat"], float)


# ----------------------------------------------------------------------------------------------
# Interrupts


def test_ctrl_c_inside_fit_fails_the_trial_as_interrupted(spec: StudySpec, space: SearchSpace) -> None:
    tracker = RecordingTracker()
    study = new_study()
    with pytest.raises(KeyboardInterrupt):  # the worker stops: the interrupt is not swallowed
        study.optimize(Objective(spec, space, FakeTask(raising(KeyboardInterrupt())), tracker), n_trials=1)
    trial = study.get_trials(deepcopy=False)[-1]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "interrupted"
    assert "traceback" not in trial.user_attrs
    end = [c for c in tracker.calls if c[0] == "end_trial"]
    assert end[0][2] == {"state": "interrupted", "reason": "interrupted"}


@pytest.fixture
def handlers() -> Iterator[None]:
    """SIGINT and SIGTERM handled as stop requests, as in a worker process; put back afterwards."""
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def trains_until_stopped(stop: Callable[[], None]) -> FitFn:
    """A task that reports once, calls ``stop``, then trains (bounded) until a stop reaches it."""

    def fit(cfg: dict[str, Any], report: Callable[[int, dict[str, float]], None], ctx: TrialContext) -> TaskResult:
        report(1, {"score": 0.5})
        stop()
        end = time.monotonic() + 5
        while time.monotonic() < end:
            time.sleep(0.01)
        return TaskResult(metrics={"score": 0.5}, epochs_run=1)  # never stopped: the test fails

    return fit


def interrupted_trial(objective: Objective) -> FrozenTrial:
    study = new_study()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):  # the worker stops: the interrupt is not swallowed
        study.optimize(objective, n_trials=1)
    assert time.monotonic() - started < 4, "the stop reached the task at once"
    trial = study.get_trials(deepcopy=False)[-1]
    assert trial.state == TrialState.FAIL
    return trial


def test_a_ctrl_c_stops_a_training_task_at_once(spec: StudySpec, space: SearchSpace, handlers: None) -> None:
    tracker = RecordingTracker()
    task = FakeTask(trains_until_stopped(lambda: os.kill(os.getpid(), signal.SIGINT)))
    trial = interrupted_trial(Objective(spec, space, task, tracker))
    assert trial.user_attrs["reason"] == "interrupted"
    assert [c[2] for c in tracker.calls if c[0] == "end_trial"] == [{"state": "interrupted", "reason": "interrupted"}]
    assert interrupts.exit_code() == 130


def test_a_stop_because_the_supervisor_died_says_so(spec: StudySpec, space: SearchSpace, handlers: None) -> None:
    def watcher_sees_the_supervisor_gone() -> None:  # what the worker's watcher thread does
        thread = threading.Thread(target=interrupts.request, args=("supervisor_gone",))
        thread.start()
        thread.join()

    tracker = RecordingTracker()
    trial = interrupted_trial(
        Objective(spec, space, FakeTask(trains_until_stopped(watcher_sees_the_supervisor_gone)), tracker)
    )
    assert trial.user_attrs["reason"] == "supervisor_gone"
    assert [c[2] for c in tracker.calls if c[0] == "end_trial"] == [
        {"state": "interrupted", "reason": "supervisor_gone"}
    ]


def test_a_stop_during_a_report_lands_after_its_writes(spec: StudySpec, space: SearchSpace, handlers: None) -> None:
    """A Ctrl-C while an epoch is being recorded is raised once the storage and tracking writes
    are done: the epoch's intermediate value and MLflow metrics are both kept."""
    tracker = RecordingTracker()

    def ctrl_c_now(number: int, epoch: int, metrics: dict[str, float]) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    trial = interrupted_trial(Objective(spec, space, FakeTask(epochs_of([0.1, 0.2])), tracker, on_epoch=ctrl_c_now))
    assert trial.user_attrs["reason"] == "interrupted"
    assert trial.intermediate_values == {1: 0.1}
    assert tracker.names().count("log_epoch") == 1
    assert trial.user_attrs["epochs_run"] == 1


def test_stop_trial_from_the_task_is_a_pruned_trial_with_its_reason(spec: StudySpec, space: SearchSpace) -> None:
    """A task may end its own trial early (``StopTrial``): pruned, not a crash."""
    trial = run_one(
        new_study(), Objective(spec, space, FakeTask(raising(StopTrial("plateau", "no gain"))), RecordingTracker())
    )
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["reason"] == "plateau" and trial.user_attrs["reason_detail"] == "no gain"


def test_a_pruned_trial_is_shown_and_exported_with_its_objective_value(tmp_path: Path) -> None:
    """Optuna keeps a pruned trial's last intermediate value (here -val_loss) as its value; the
    batch line and trials.csv show the objective's best so far instead."""
    import csv
    import io

    from rich.console import Console

    from signtune.cli.progress import Reporter
    from signtune.export import write_trials_csv

    study = new_study()
    trial = study.ask()
    trial.report(-5.16, 1)
    trial.set_user_attr("value_so_far", 0.25)
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.get_trials(deepcopy=False)[0]
    assert frozen.value == -5.16  # what Optuna stores

    buf = io.StringIO()
    reporter = Reporter(
        "lines", out=Console(file=buf, width=200), err=Console(file=io.StringIO()), metric="val_bleu", epochs=3
    )
    reporter.on_trial(frozen, None, None)
    assert "trial 0 pruned  val_bleu 0.25" in buf.getvalue(), buf.getvalue()

    path = tmp_path / "trials.csv"
    write_trials_csv(study.get_trials(), path)
    row = next(csv.DictReader(path.open()))
    assert float(row["value"]) == 0.25
