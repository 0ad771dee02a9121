"""Learning-rate schedules: linear warmup, then cosine, linear or no decay.

Nothing here is specific to sign language; any trainer can use ``build_scheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch

ScheduleName = Literal["cosine", "linear", "constant"]


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1.0 - progress


def _constant(progress: float) -> float:
    return 1.0


# Decay shapes by name: progress in [0, 1] -> factor in [0, 1], before min_lr_ratio is applied.
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
}


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warmup steps: ``warmup_ratio`` of ``total_steps``, rounded.

    Raises:
        ValueError: ``warmup_ratio`` is outside ``[0, 1]`` or ``total_steps`` is negative.
    """
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1], but got {warmup_ratio}")
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, but got {total_steps}")
    return round(total_steps * warmup_ratio)


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    name: str,
    min_lr_ratio: float,
) -> float:
    """The learning-rate multiplier for optimizer step ``step`` (0-based).

    During warmup the factor rises linearly, ``(step + 1) / warmup_steps``: small at step 0
    and exactly 1 on the last warmup step. Afterwards it decays from 1 at step
    ``warmup_steps`` to ``min_lr_ratio`` at step ``total_steps`` (and stays there).
    ``constant`` keeps 1 after warmup.

    Args:
        step: the optimizer step about to be taken.
        total_steps: all steps of the run.
        warmup_steps: steps of linear warmup (0 for none).
        name: ``cosine``, ``linear`` or ``constant``.
        min_lr_ratio: the final factor of the decaying schedules.

    Raises:
        ValueError: ``name`` is not a known schedule.
    """
    if name not in DECAYS:
        raise ValueError(f"schedule name must be one of {sorted(DECAYS)}, but got {name!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr_ratio + (1.0 - min_lr_ratio) * DECAYS[name](progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_ratio: float,
    name: str,
    min_lr_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that scales every param group's lr by ``lr_factor``.

    Call ``scheduler.step()`` after each ``optimizer.step()``. Per-group ratios (e.g. a
    smaller encoder lr) are kept, since each group's initial lr is multiplied.
    """
    factor = partial(
        lr_factor,
        total_steps=total_steps,
        warmup_steps=warmup_steps(total_steps, warmup_ratio),
        name=name,
        min_lr_ratio=min_lr_ratio,
    )
    # LambdaLR evaluates factor(0) right away, so an unknown name fails here, not mid-run.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
