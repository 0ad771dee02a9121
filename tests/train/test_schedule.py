from __future__ import annotations

import itertools
import math

import pytest
import torch

from signtune.train.schedule import build_scheduler, lr_factor, warmup_steps

TOTAL, WARMUP, MIN = 110, 10, 0.1
MID = WARMUP + (TOTAL - WARMUP) // 2  # halfway through the decay

# name, step, expected factor
CASES = [
    ("cosine", 0, 1 / WARMUP),
    ("cosine", WARMUP - 1, 1.0),
    ("cosine", WARMUP, 1.0),
    ("cosine", MID, MIN + (1 - MIN) * 0.5),
    ("cosine", TOTAL, MIN),
    ("cosine", TOTAL + 50, MIN),
    ("linear", 0, 1 / WARMUP),
    ("linear", WARMUP - 1, 1.0),
    ("linear", MID, MIN + (1 - MIN) * 0.5),
    ("linear", TOTAL, MIN),
    ("constant", 0, 1 / WARMUP),
    ("constant", WARMUP - 1, 1.0),
    ("constant", MID, 1.0),
    ("constant", TOTAL, 1.0),
]


@pytest.mark.parametrize(("name", "step", "expected"), CASES)
def test_lr_factor(name: str, step: int, expected: float) -> None:
    got = lr_factor(step, total_steps=TOTAL, warmup_steps=WARMUP, name=name, min_lr_ratio=MIN)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_decay_is_monotone_after_warmup(name: str) -> None:
    values = [
        lr_factor(s, total_steps=TOTAL, warmup_steps=WARMUP, name=name, min_lr_ratio=0.0)
        for s in range(WARMUP, TOTAL + 1)
    ]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[-1] == 0.0


def test_no_warmup_starts_at_full_lr() -> None:
    assert lr_factor(0, total_steps=10, warmup_steps=0, name="cosine", min_lr_ratio=0) == 1.0


def test_cosine_quarter_point() -> None:
    got = lr_factor(35, total_steps=110, warmup_steps=10, name="cosine", min_lr_ratio=0)
    assert got == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_warmup_steps() -> None:
    assert warmup_steps(1000, 0.1) == 100
    assert warmup_steps(7, 0.0) == 0
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps(10, 1.5)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"\['constant', 'cosine', 'linear'\]"):
        lr_factor(0, total_steps=10, warmup_steps=0, name="exp", min_lr_ratio=0)


def test_scheduler_keeps_group_ratios() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}], lr=1.0)
    sched = build_scheduler(opt, total_steps=20, warmup_ratio=0.1, name="cosine", min_lr_ratio=0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.25])  # step 0 of 2
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 0.5])
