"""A plug-in task for signtune: fine-tune a pretrained backbone on scikit-learn's digits.

Run it (from the repository root):

    study run --study examples/digits/study.yaml --workers 2

The "backbone" is an MLP of 3 blocks, pre-trained by this module on a related task (telling
digits 0-4 apart), cached per process. Each trial fine-tunes it on all ten digits with the
ideas the sign-language trainer uses: a discriminative learning rate (backbone at
``optim.backbone_lr_ratio`` x the head's), the first ``model.freeze_first_n`` blocks frozen
until ``model.unfreeze_at_epoch``, gradient accumulation, and warmup + cosine decay. All of
those helpers come from ``signtune.train``.

``study promote-best`` retrains the best configs through the same function: it sets
``ctx.checkpoint`` (and ``ctx.resume`` on ``--resume``), and scores the winner with ``test``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from signtune.config import OptimConfig
from signtune.train.freeze import UnfreezeSchedule
from signtune.train.optim import build_optimizer
from signtune.train.schedule import build_scheduler

_BACKBONES: dict[int, dict[str, torch.Tensor]] = {}


def _data(seed: int, *, test: bool = False) -> tuple[torch.Tensor, ...]:
    """(train x, train y, val x, val y), or (test x, test y); a fixed split of 1,797 images."""
    from sklearn.datasets import load_digits  # ships its data inside the package

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # the split never moves
    x, y = x[order], y[order]
    n_test, n_val = 300, 300
    if test:
        return x[:n_test], y[:n_test]
    return x[n_test + n_val :], y[n_test + n_val :], x[n_test : n_test + n_val], y[n_test : n_test + n_val]


class Net(nn.Module):
    def __init__(self, width: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(64 if i == 0 else width, width), nn.GELU(), nn.Dropout(dropout)) for i in range(3)]
        )
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _pretrained_backbone(width: int, seed: int) -> dict[str, torch.Tensor]:
    """Blocks pre-trained on digits 0-4 (a related task); computed once per process."""
    if width not in _BACKBONES:
        torch.manual_seed(seed)
        x, y, _, _ = _data(seed)
        keep = y < 5
        net = Net(width, 5, 0.0)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
        for _ in range(30):
            for i in range(0, int(keep.sum()), 64):
                xb, yb = x[keep][i : i + 64], y[keep][i : i + 64]
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(net(xb), yb).backward()
                opt.step()
        _BACKBONES[width] = {k: v.clone() for k, v in net.blocks.state_dict().items()}
    return _BACKBONES[width]


def objective(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
    """signtune plug-in: train one config, report val accuracy per epoch, return the best."""
    seed = int(ctx.seed)
    width = int(config.get("model.width", 64))
    epochs = int(config.get("run.epochs", 10))
    accum = int(config.get("optim.grad_accum", 1))
    batch = int(config.get("data.batch_size", 32))
    x, y, xv, yv = _data(seed)
    n = max(batch, int(len(x) * float(config.get("data.subset", 1.0))))
    x, y = x[:n], y[:n]

    torch.manual_seed(seed)
    net = Net(width, 10, float(config.get("model.dropout", 0.1)))
    net.blocks.load_state_dict(_pretrained_backbone(width, seed))
    unfreeze = UnfreezeSchedule(
        net.blocks,
        freeze_first_n=int(config.get("model.freeze_first_n", 0)),
        unfreeze_at_epoch=config.get("model.unfreeze_at_epoch"),
    )
    optim_cfg = OptimConfig(lr=float(config["optim.lr"]), weight_decay=float(config.get("optim.weight_decay", 0.01)))
    groups = {"backbone": list(net.blocks.parameters()), "head": list(net.head.parameters())}
    optimizer = build_optimizer(
        groups,
        optim_cfg,
        "cpu",
        ratios={"backbone": float(config.get("optim.backbone_lr_ratio", 0.1))},
        include_frozen=True,
    )
    steps_per_epoch = -(-len(x) // (batch * accum))
    scheduler = build_scheduler(
        optimizer,
        total_steps=epochs * steps_per_epoch,
        warmup_ratio=float(config.get("schedule.warmup_ratio", 0.1)),
        name="cosine",
        min_lr_ratio=0.0,
    )
    best, start = 0.0, 1
    if ctx.resume is not None:  # promote-best --resume: continue after the last checkpoint
        net.load_state_dict(ctx.resume.tensors)
        best, start = ctx.resume.metrics.get("val_acc", 0.0), ctx.resume.epoch + 1
        for _ in range((start - 1) * steps_per_epoch):
            scheduler.step()
    for epoch in range(start, epochs + 1):
        unfreeze.step(epoch)
        net.train()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for i, start in enumerate(range(0, len(x), batch), start=1):
            idx = perm[start : start + batch]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx]) / accum
            loss.backward()
            if i % accum == 0 or start + batch >= len(x):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        net.eval()
        with torch.inference_mode():
            acc = float((net(xv).argmax(-1) == yv).float().mean()) * 100
        best = max(best, acc)
        metrics = {"val_acc": acc, "train_loss": float(loss.detach()) * accum}
        if ctx.checkpoint is not None:  # set by promote-best only: trials train without checkpoints
            ctx.checkpoint(epoch, net.state_dict(), metrics)
        report(epoch, metrics)  # may prune the trial
    return {"val_acc": best}


def test(config: dict[str, Any], tensors: dict[str, torch.Tensor], ctx: Any) -> dict[str, float]:
    """promote-best's test hook: the winner's best checkpoint on the held-out test images."""
    net = Net(int(config.get("model.width", 64)), 10, 0.0)
    net.load_state_dict(tensors)
    x, y = _data(int(ctx.seed), test=True)
    with torch.inference_mode():
        return {"test_acc": float((net(x).argmax(-1) == y).float().mean()) * 100}


objective.test = test  # type: ignore[attr-defined]


def _check() -> None:  # pragma: no cover - a manual smoke run
    ctx = type("C", (), {"seed": 0, "checkpoint": None, "resume": None})()
    print(objective({"optim.lr": 3e-3, "run.epochs": 3}, lambda e, m: print(e, m), ctx))


if __name__ == "__main__":  # pragma: no cover
    np.set_printoptions(precision=3)
    _check()
