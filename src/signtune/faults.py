"""Test-only fault injection, switched on by the ``SIGNTUNE_FAULTS`` environment variable.

The production path pays one dict lookup per trial. Forms (comma-separated):

- ``KIND@N``: inject KIND into trial number N (first attempt only; its retry runs clean);
- ``random:P:SEED``: inject a random KIND into each trial with probability P (seeded by the
  trial number, so every worker agrees).

KINDs: ``nan`` (the loss diverges), ``oom`` (a CUDA out-of-memory error), ``crash`` (an
exception in the trainer), ``hang`` (the trial stops reporting), ``kill`` (the worker process
is SIGKILLed; only in worker processes).
"""

from __future__ import annotations

import os
import random
import signal
import time

KINDS = ("nan", "oom", "crash", "hang", "kill")
RANDOM_KINDS = ("nan", "oom", "crash", "hang")


class Faults:
    def __init__(self, spec: str) -> None:
        self.fixed: dict[int, str] = {}
        self.probability = 0.0
        self.seed = 0
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if part.startswith("random:"):
                _, p, seed = [*part.split(":"), "0"][:3]
                self.probability, self.seed = float(p), int(seed)
                continue
            kind, _, number = part.partition("@")
            if kind == "promote_kill":
                continue
            if kind not in KINDS or not number.isdigit():
                raise ValueError(f"SIGNTUNE_FAULTS: bad entry {part!r}; use KIND@N with KIND in {KINDS}")
            self.fixed[int(number)] = kind

    def for_trial(self, number: int, *, retry: bool) -> str | None:
        if retry:
            return None
        if number in self.fixed:
            return self.fixed[number]
        if self.probability > 0:
            rng = random.Random(self.seed * 1_000_003 + number)
            if rng.random() < self.probability:
                return rng.choice(RANDOM_KINDS)
        return None


def kill_after_epoch() -> int | None:
    """``SIGNTUNE_FAULTS=promote_kill@N``: promote-best SIGKILLs itself after epoch N's checkpoint."""
    for part in os.environ.get("SIGNTUNE_FAULTS", "").split(","):
        kind, _, number = part.strip().partition("@")
        if kind == "promote_kill" and number.isdigit():
            return int(number)
    return None


def from_env() -> Faults | None:
    spec = os.environ.get("SIGNTUNE_FAULTS", "")
    return Faults(spec) if spec else None


def inject(kind: str) -> None:
    """Raise (or do) the fault; called from inside the trial's first report."""
    from signtune.errors import Diverged

    if kind == "nan":
        raise Diverged("train loss nan (injected)")
    if kind == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    if kind == "crash":
        raise RuntimeError("injected trainer crash")
    if kind == "hang":
        while True:  # ended by the trial watchdog (budget.trial_timeout)
            time.sleep(0.05)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
