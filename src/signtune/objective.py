"""The one bridge between Optuna and a task: trial -> config -> fit -> reports/pruning -> value."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from signtune import interrupts
from signtune.device import resolve_device
from signtune.errors import DataError, SigntuneError, StopTrial
from signtune.faults import from_env, inject
from signtune.hosts import host_id
from signtune.recorder import TRACKING_OFF_AFTER, Heartbeat, TrackingHealth, TrialRecorder
from signtune.space import SearchSpace, suggest
from signtune.spec import StudySpec
from signtune.study import pruning_metric, pruning_value
from signtune.tasks import Task, TrialContext
from signtune.tracking import MetricLogger

EpochCallback = Callable[[int, int, dict[str, float]], None]

__all__ = ["TRACKING_OFF_AFTER", "EpochCallback", "Heartbeat", "Objective", "Watchdog", "halve_batch"]


class Objective:
    """Callable handed to ``study.optimize``. One instance serves many trials of a process."""

    def __init__(
        self,
        spec: StudySpec,
        space: SearchSpace,
        task: Task,
        tracker: MetricLogger,
        *,
        worker_id: str = "0",
        on_epoch: EpochCallback | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        self.spec = spec
        self.space = space
        self.task = task
        self.tracker = tracker
        self.worker_id = worker_id
        self.on_epoch = on_epoch
        self.supervisor_pid = supervisor_pid  # the `study run` that started this worker process
        self.device = resolve_device(spec.device)
        self.faults = from_env()
        self.health = TrackingHealth()  # how tracking fares in this process

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.spec
        metric = spec.objective.metric
        prune_metric = pruning_metric(spec)[0]
        rec = TrialRecorder(trial, self.tracker, self.health)
        owner: dict[str, Any] = {"host": host_id(), "worker": self.worker_id, "pid": os.getpid()}
        if self.supervisor_pid:
            owner["supervisor"] = self.supervisor_pid
        rec.set_attrs(owner)  # first: a supervisor reaping dead workers finds trials by pid
        rec.params = suggest(trial, self.space)
        try:
            cfg = self.task.make_config(spec, rec.params)
        except Exception as exc:  # a plug-in's config hook: recorded like any task error
            rec.finish(
                "failed",
                "error",
                error=f"{type(exc).__name__}: {exc}"[:2000],
                traceback=traceback.format_exc(limit=8)[-4000:],
            )
            raise
        if trial.user_attrs.get("oom_retry"):
            cfg = halve_batch(cfg)  # same params, half the batch, twice the accumulation
        settings: dict[str, Any] = {
            "subset": spec.budget.subset,
            "epochs": spec.epochs,
            "seed": spec.seed,
            "device": self.device,
            "gpu": os.environ.get("SIGNTUNE_GPU", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
            if self.device.startswith("cuda")
            else "",
        }
        if trial.user_attrs.get("oom_retry"):
            settings["oom_retry_config"] = _batch_settings(cfg)
        rec.set_attrs(settings)
        fault = self.faults.for_trial(trial.number, retry="retry_of" in trial.user_attrs) if self.faults else None
        if fault:
            trial.set_user_attr("injected_fault", fault)
        watchdog = Watchdog(spec.budget.trial_timeout)
        # The objective's best so far: a pruned trial's intermediate values may hold another
        # metric (pruner.metric), so its last objective value is kept as the `value_so_far` attr.
        so_far: list[float] = []

        def better(a: float, b: float) -> bool:
            return a > b if spec.objective.direction == "maximize" else a < b

        def report(epoch: int, metrics: dict[str, float]) -> None:
            watchdog.beat()
            if fault and epoch == 1:
                inject(fault)
            for name, role in ((metric, "the objective"), (prune_metric, "pruner.metric")):
                if name not in metrics:
                    raise ValueError(f"report({epoch}, ...) got metrics {sorted(metrics)} but {role} is {name!r}")
            value = float(metrics[metric])
            if math.isfinite(value) and (not so_far or better(value, so_far[0])):
                so_far[:] = [value]
            # Storage and tracking writes are never cut by Ctrl-C; a stop requested meanwhile is
            # raised when they end, back in the training.
            # The watchdog holds its alarm meanwhile: a storage write waiting on a lock, MLflow's
            # first import and store set-up are not the task hanging, and are never cut.
            with interrupts.protected(), watchdog.paused():
                # What the pruner compares: the pruning metric, signed for the study's direction.
                trial.report(pruning_value(spec, metrics), epoch)
                rec.log_epoch(epoch, metrics)
                if self.on_epoch is not None:
                    self.on_epoch(trial.number, epoch, metrics)
            if not math.isfinite(value):
                raise StopTrial("diverged", f"{metric} is {value} at epoch {epoch}")
            if trial.should_prune():
                shown = float(metrics[prune_metric])
                raise StopTrial(
                    "pruned", f"{prune_metric}={shown:.4g} at epoch {epoch} is worse than the pruner's threshold"
                )

        ctx = TrialContext(
            device=self.device,
            seed=spec.seed,
            subset=spec.budget.subset,
            trial_number=trial.number,
            scratch_dir=Path(tempfile.gettempdir()) / f"signtune-{spec.name}-{trial.number}",
            study_dir=spec.dir,
        )
        try:
            # Training writes nothing but the task's scratch files: a stop lands here at once.
            with Heartbeat(trial), watchdog, interrupts.interruptible():
                result = self.task.fit(cfg, report, ctx)
        except StopTrial as stop:
            rec.finish(
                "pruned", stop.reason, reason_detail=stop.detail, **({"value_so_far": so_far[0]} if so_far else {})
            )
            raise optuna.TrialPruned(str(stop)) from None
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM (reason `interrupted`) or a supervisor that died (`supervisor_gone`).
            rec.finish("interrupted", interrupts.reason())
            raise
        except SigntuneError as exc:
            # A data problem found mid-study (a feature file changed or broke): reason `data`,
            # the error names the file; the worker goes on with its next trial.
            rec.finish("failed", "data" if isinstance(exc, DataError) else "error", error=str(exc)[:2000])
            raise
        except Exception as exc:
            # The memory the trial held is released by the worker loop once this frame and
            # Optuna's are gone: here the traceback still holds the model and its tensors.
            rec.finish(
                "failed",
                _failure_reason(exc),
                error=f"{type(exc).__name__}: {exc}"[:2000],
                traceback=traceback.format_exc(limit=8)[-4000:],
            )
            raise
        value = result.metrics.get(metric)
        if value is None or not math.isfinite(float(value)):
            rec.finish("failed", "no_metric", error=f"task returned no finite {metric!r}: {result.metrics}")
            raise RuntimeError(f"task returned no finite {metric!r} in {sorted(result.metrics)}")
        extra: dict[str, Any] = {k: v for k, v in result.attrs.items() if isinstance(v, str | int | float)}
        rec.finish(
            "complete",
            epochs_run=result.epochs_run,
            n_params=result.n_params,
            best_epoch=int(result.metrics.get("epoch", result.epochs_run)),
            **extra,
        )
        rec.log_summary(result.metrics)
        return float(value)


class Watchdog:
    """Ends a trial that stops reporting for ``timeout_s`` seconds (reason ``timeout``).

    SIGALRM interrupts the trial's main thread between Python bytecodes; it is re-armed on
    every report. Off when ``timeout_s`` is None or outside the main thread.
    """

    def __init__(self, timeout_s: float | None) -> None:
        import threading

        self.timeout_s = timeout_s if threading.current_thread() is threading.main_thread() else None
        self._previous: Any = None

    def _fire(self, signum: int, frame: Any) -> None:
        raise StopTrial("timeout", f"no report for {self.timeout_s:.0f}s (budget.trial_timeout)")

    def beat(self) -> None:
        if self.timeout_s:
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the alarm while signtune's own I/O runs (tracking), then re-arm it in full.

        An alarm inside an import would leave that module half-initialised for the process.
        """
        if not self.timeout_s:
            yield
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            yield
        finally:
            self.beat()

    def __enter__(self) -> Watchdog:
        if self.timeout_s:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
            self.beat()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)


def halve_batch(cfg: Any) -> Any:
    """The OOM retry's config: half the batch size, twice the gradient accumulation (the same
    effective batch), and half the validation batch (validation can be the memory peak)."""
    import dataclasses

    if isinstance(cfg, dict):
        out = dict(cfg)
        if "data.batch_size" in out:
            out["data.batch_size"] = max(1, int(out["data.batch_size"]) // 2)
            out["optim.grad_accum"] = int(out.get("optim.grad_accum", 1)) * 2
        if "eval.batch_size" in out:
            out["eval.batch_size"] = max(1, int(out["eval.batch_size"]) // 2)
        return out
    data = dataclasses.replace(cfg.data, batch_size=max(1, cfg.data.batch_size // 2))
    optim = dataclasses.replace(cfg.optim, grad_accum=cfg.optim.grad_accum * 2)
    evaluation = dataclasses.replace(cfg.eval, batch_size=max(1, cfg.eval.batch_size // 2))
    return dataclasses.replace(cfg, data=data, optim=optim, eval=evaluation)


BATCH_KEYS = ("data.batch_size", "optim.grad_accum", "eval.batch_size")


def _batch_settings(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return {k: cfg[k] for k in BATCH_KEYS if k in cfg}
    return {
        "data.batch_size": cfg.data.batch_size,
        "optim.grad_accum": cfg.optim.grad_accum,
        "eval.batch_size": cfg.eval.batch_size,
    }


def free_accelerator_memory(*, collect: bool = True) -> None:
    """Release what the last trial held so the next one starts with the device's memory free.

    Call it after the trial's frames are gone (a traceback keeps the failed trial's model,
    optimizer state and activations alive). ``collect`` runs the garbage collector first, for
    the reference cycles an exception leaves; then CUDA's cached blocks go back to the device,
    so workers sharing a GPU do not keep each other's peaks.
    """
    import gc
    import sys

    if collect:
        gc.collect()
    torch = sys.modules.get("torch")  # a plug-in that never imported torch has nothing to free
    try:
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:
        return


# Errors after which CUDA cannot be used again in the process (the context is corrupted).
CUDA_FATAL = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_", "cuDNN error")


def _failure_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return "oom"
    if any(marker in text for marker in CUDA_FATAL):
        return "cuda_error"
    return "error"
