"""Freezing the first blocks of a pretrained backbone, and unfreezing them on a schedule.

Build the optimizer with ``param_groups(..., include_frozen=True)`` so frozen parameters sit
in their groups from the start: while frozen they get no gradient and AdamW skips them; once
unfrozen they train at their group's scheduled learning rate, with no optimizer rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def set_trainable(modules: Sequence[nn.Module], trainable: bool) -> int:
    """Switch ``requires_grad`` on every parameter of ``modules``; returns how many changed."""
    changed = 0
    for module in modules:
        for p in module.parameters():
            if p.requires_grad != trainable:
                p.requires_grad_(trainable)
                changed += 1
    return changed


def freeze_first(blocks: Sequence[nn.Module], n: int) -> int:
    """Freeze ``blocks[:n]`` (e.g. the first n transformer blocks of a backbone)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, but got {n}")
    return set_trainable(list(blocks)[:n], False)


class UnfreezeSchedule:
    """Frozen blocks become trainable at ``unfreeze_at_epoch`` (None: never).

    Call ``step(epoch)`` at the start of every epoch (1-based).
    """

    def __init__(self, blocks: Sequence[nn.Module], *, freeze_first_n: int, unfreeze_at_epoch: int | None) -> None:
        self.blocks = list(blocks)
        self.frozen = self.blocks[:freeze_first_n]
        self.unfreeze_at_epoch = unfreeze_at_epoch
        freeze_first(self.blocks, freeze_first_n)

    def step(self, epoch: int) -> bool:
        """Unfreeze when ``epoch`` reaches the schedule; True if something was unfrozen."""
        if self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch and self.frozen:
            set_trainable(self.frozen, True)
            self.frozen = []
            return True
        return False
