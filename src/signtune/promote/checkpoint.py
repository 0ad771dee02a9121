"""promote-best's checkpoints: one format and one checkpointer for every task.

A checkpoint is a folder holding ``model.safetensors`` (the tensors a task hands to
``ctx.checkpoint``, with the epoch and its metrics as metadata) and, when the task hands
over more training state (the built-in task's optimizer, scheduler, RNG and history),
``state.pt``, read back with ``weights_only=True``: nothing is unpickled. Folders are written
aside and swapped in whole (``folders.commit_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signtune.errors import Problem, StudyError
from signtune.faults import kill_after_epoch
from signtune.folders import commit_dir
from signtune.promote.select import improves
from signtune.spec import ObjectiveSpec
from signtune.tasks import Resume

if TYPE_CHECKING:
    from signtune.train.loop import TrainState

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def save_checkpoint(
    path: Path,
    tensors: Mapping[str, Any],
    *,
    epoch: int,
    metrics: Mapping[str, float],
    state: Mapping[str, Any] | None = None,
) -> None:
    """Write the checkpoint folder ``path`` (see the module docstring); atomic.

    Raises:
        TypeError: a value of ``tensors`` is not a tensor.
    """
    import torch
    from safetensors.torch import save_file

    bad = sorted(k for k, v in tensors.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise TypeError(f"ctx.checkpoint got non-tensor values for {bad[:5]}; pass a flat {{name: tensor}} mapping")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"epoch": str(int(epoch)), "metrics": json.dumps({k: float(v) for k, v in metrics.items()})}
    # clone(): tied weights share memory, which safetensors refuses to store twice.
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS), meta)
    if state is not None:
        torch.save(dict(state), tmp / STATE)
    commit_dir(tmp, path)


def load_checkpoint(path: Path) -> Resume:
    """Read a checkpoint folder back without unpickling anything.

    Folders written before the metadata existed (built-in task) keep their epoch and metrics
    in ``state.pt``; they are read from there.

    Raises:
        StudyError: the folder is missing, damaged or not a checkpoint.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = dict(load_file(str(path / WEIGHTS)))
        state = torch.load(path / STATE, map_location="cpu", weights_only=True) if (path / STATE).is_file() else {}
        epoch = int(meta["epoch"] if "epoch" in meta else state.get("epoch", 0))
        if "metrics" in meta:
            metrics = {k: float(v) for k, v in json.loads(meta["metrics"]).items()}
        else:
            last = (state.get("history") or [{}])[-1]
            metrics = {k: float(v) for k, v in last.items() if k != "epoch"}
    except Exception as exc:
        raise StudyError(
            Problem(
                str(path),
                f"cannot be read as a checkpoint ({type(exc).__name__}: {exc})",
                "delete the candidate's folder to train it from the start",
            )
        ) from None
    return Resume(epoch=epoch, tensors=tensors, metrics=metrics, state=dict(state))


class Checkpointer:
    """``ctx.checkpoint`` during promote-best: ``last/`` every call, ``best/`` whenever the
    objective's metric improves in its direction.

    ``best/`` is written before ``last/``: whenever ``last/`` says epoch k, ``best/`` holds the
    best of epochs 1..k.
    """

    def __init__(self, cand_dir: Path, objective: ObjectiveSpec, best: Resume | None, last_epoch: int = 0) -> None:
        self.dir = cand_dir
        self.objective = objective
        self.best_metrics: dict[str, float] = dict(best.metrics) if best is not None else {}
        self.last_epoch = last_epoch
        self.crash_after = kill_after_epoch()

    @property
    def best(self) -> float | None:
        """The best value of the metric so far (None: no finite one yet)."""
        value = self.best_metrics.get(self.objective.metric)
        return None if value is None else float(value)

    def __call__(
        self,
        epoch: int,
        tensors: Mapping[str, Any],
        metrics: Mapping[str, float],
        state: Mapping[str, Any] | None = None,
    ) -> None:
        metric = self.objective.metric
        if metric not in metrics:
            raise ValueError(
                f"ctx.checkpoint({epoch}, ...) got metrics {sorted(metrics)} but the objective is {metric!r}"
            )
        if improves(float(metrics[metric]), self.best, self.objective.direction):
            save_checkpoint(self.dir / "best", tensors, epoch=epoch, metrics=metrics, state=state)
            self.best_metrics = {k: float(v) for k, v in metrics.items()}
        save_checkpoint(self.dir / "last", tensors, epoch=epoch, metrics=metrics, state=state)
        self.last_epoch = epoch
        if self.crash_after == epoch:  # test-only: a crash right after a checkpoint
            os.kill(os.getpid(), 9)


def training_state(st: TrainState) -> dict[str, Any]:
    """The built-in task's ``state.pt``: a ``TrainState`` beyond its epoch and weights."""
    return {
        "step": st.step,
        "optimizer": st.optimizer,
        "scheduler": st.scheduler,
        "rng": st.rng,
        "cuda_rng": st.cuda_rng,
        "history": st.history,
        "best": st.best,
    }


def train_state(resume: Resume) -> TrainState:
    """The ``TrainState`` a built-in checkpoint holds (``training_state`` read back).

    Raises:
        StudyError: the checkpoint has weights but no training state.
    """
    from signtune.train.loop import TrainState

    s = resume.state
    if not s:
        raise StudyError(
            Problem(
                "promote-best --resume",
                f"the checkpoint of epoch {resume.epoch} holds weights but no training state ({STATE})",
                "delete the candidate's folder under promoted/candidates to train it from the start",
            )
        )
    return TrainState(
        epoch=resume.epoch,
        step=int(s["step"]),
        model=resume.tensors,
        optimizer=s["optimizer"],
        scheduler=s["scheduler"],
        rng=s["rng"],
        history=list(s["history"]),
        best=dict(s["best"]),
        cuda_rng=list(s.get("cuda_rng", [])),  # absent in CPU-era checkpoints
    )
