"""AdamW over named parameter groups, each with its own learning-rate ratio.

Any trainer can use this: a model hands over ``{"encoder": [...], "decoder": [...]}`` (or any
other names) and gets one optimizer group per name and decay kind.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from signtune.config import OptimConfig

# Group names whose lr ratio an ``OptimConfig`` field sets: the transformer's ``encoder`` and
# the t5 family's groups (``signtune.models``). Other names get 1.0 unless ``ratios`` says so.
RATIO_FIELDS: dict[str, str] = {
    "encoder": "encoder_lr_ratio",
    "sign_encoder": "encoder_lr_ratio",
    "projection": "projection_lr_ratio",
    "t5_encoder": "t5_encoder_lr_ratio",
    "t5_decoder": "t5_decoder_lr_ratio",
}


def config_ratios(groups: dict[str, list[nn.Parameter]], cfg: OptimConfig) -> dict[str, float]:
    """The lr ratio of each group in ``groups`` that ``RATIO_FIELDS`` maps to a config field."""
    return {name: float(getattr(cfg, field)) for name, field in RATIO_FIELDS.items() if name in groups}


def param_groups(
    groups: dict[str, list[nn.Parameter]],
    *,
    lr: float,
    ratios: dict[str, float],
    weight_decay: float,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer param groups: lr ``lr * ratios.get(name, 1)``, weight decay on matrices only.

    Each named group is split in two: parameters with ``ndim >= 2`` (weights, embeddings) get
    ``weight_decay``; the rest (biases, norm gains) get none, since decaying them only pulls
    norms towards zero. Frozen parameters (``requires_grad=False``) are left out, and empty
    groups are dropped. Each group keeps a ``name`` key (``encoder``, ``encoder.no_decay``...)
    for logging.

    Args:
        groups: parameters by group name; every parameter in at most one group.
        lr: the base learning rate.
        ratios: lr multiplier by group name; missing names get 1.0.
        weight_decay: AdamW's decoupled weight decay for the decayed half.
        include_frozen: keep frozen parameters in their groups, for a model whose blocks are
            unfrozen later (``signtune.train.freeze``): they train once unfrozen.

    Raises:
        ValueError: a parameter is in two groups, or ``ratios`` names a group that isn't there.
    """
    unknown = sorted(set(ratios) - set(groups))
    if unknown:
        raise ValueError(f"lr ratios name groups {unknown}, but the groups are {sorted(groups)}")
    seen: dict[int, str] = {}
    out: list[dict[str, Any]] = []
    for name, params in groups.items():
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter is in both group {seen[id(p)]!r} and {name!r}")
            seen[id(p)] = name
            if p.requires_grad or include_frozen:
                (decay if p.ndim >= 2 else no_decay).append(p)
        group_lr = lr * ratios.get(name, 1.0)
        if decay:
            out.append({"name": name, "params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            out.append({"name": f"{name}.no_decay", "params": no_decay, "lr": group_lr, "weight_decay": 0.0})
    return out


def build_optimizer(
    groups: dict[str, list[nn.Parameter]],
    cfg: OptimConfig,
    device: torch.device | str,
    *,
    ratios: dict[str, float] | None = None,
    include_frozen: bool = False,
) -> torch.optim.AdamW:
    """AdamW over ``groups`` with the ``optim`` config.

    Args:
        groups: parameters by group name, e.g. ``model.named_groups()``.
        cfg: lr, betas, weight decay, and the lr ratios of the groups ``RATIO_FIELDS`` names
            (e.g. ``cfg.encoder_lr_ratio`` for a group named ``encoder`` or ``sign_encoder``)
            unless ``ratios`` is given.
        device: where the parameters live; picks the fastest AdamW implementation.
        ratios: lr multipliers by group name (default ``config_ratios(groups, cfg)``).
        include_frozen: keep frozen parameters in the optimizer so they train once unfrozen.
    """
    if ratios is None:
        ratios = config_ratios(groups, cfg)
    pgs = param_groups(groups, lr=cfg.lr, ratios=ratios, weight_decay=cfg.weight_decay, include_frozen=include_frozen)
    betas = (cfg.beta1, cfg.beta2)
    if torch.device(device).type == "cuda":
        # One fused kernel for all parameters instead of several launches per tensor.
        return torch.optim.AdamW(pgs, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=True)
    # foreach: one vectorised op per group instead of a Python loop over parameters.
    return torch.optim.AdamW(pgs, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, foreach=True)
