"""The naive reference: sign-to-text training and decoding written the way tutorials write them.

- a per-sample ``torch.utils.data.Dataset`` that opens the clip's feature file with ``np.load``
  and tokenizes its sentence on every ``__getitem__``;
- a ``DataLoader`` (``shuffle=True``, no workers) with a ``pad_sequence`` collate, so batches
  mix short and long clips and carry more padding than length-aware buckets;
- fp32, ``optimizer.zero_grad()``, torch's default AdamW (per-tensor on the CPU, foreach on
  CUDA), default gradient clipping, ``loss.item()`` after every step (on a GPU, a host sync that
  drains the launch queue every step);
- greedy decoding one sentence at a time (batch size 1) without a KV cache: the whole decoder
  re-runs over the prefix for every new token.

It trains the SAME model class and size as ``fit`` (``signtune.models.build_model`` with the
same ``ModelConfig``), with the same hyperparameters (learning rate and encoder ratio, weight
decay, warm-up and decay schedule, label smoothing, clipping), so the two differ only in how the
work is organised, not in what is computed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from signtune.data.types import BOS_ID, EOS_ID, PAD_ID


def read_rows(manifest: Path) -> list[tuple[str, str]]:
    """``(SENTENCE_NAME, SENTENCE)`` rows of a How2Sign manifest (tab-separated, unquoted)."""
    with Path(manifest).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row["SENTENCE_NAME"], row["SENTENCE"]) for row in reader]


class FeatureFileDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One clip per item, read from its ``.npy`` file every time it is asked for."""

    def __init__(self, rows: list[tuple[str, str]], features_dir: Path, tokenizer: Any) -> None:
        self.rows = rows
        self.features_dir = Path(features_dir)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip_id, text = self.rows[i]
        frames = np.load(self.features_dir / f"{clip_id}.npy")
        tokens = [BOS_ID, *self.tokenizer.encode(text), EOS_ID]
        return torch.tensor(frames, dtype=torch.float32), torch.tensor(tokens, dtype=torch.long)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """Pad frames and tokens to the longest in the batch; mask True on real frames."""
    frames = pad_sequence([f for f, _ in batch], batch_first=True)
    mask = pad_sequence([torch.ones(len(f), dtype=torch.bool) for f, _ in batch], batch_first=True)
    tokens = pad_sequence([t for _, t in batch], batch_first=True, padding_value=PAD_ID)
    return frames, mask, tokens[:, :-1], tokens[:, 1:]


def make_loader(dataset: FeatureFileDataset, batch_size: int, seed: int) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=pad_collate,
        generator=torch.Generator().manual_seed(seed),
    )


def train(
    cfg: Any,
    dataset: FeatureFileDataset,
    *,
    feature_dim: int,
    vocab_size: int,
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Train ``cfg.run.epochs`` epochs; ``on_epoch(epoch, model, mean_loss)`` after each one.

    ``on_epoch`` may raise to stop (e.g. ``optuna.TrialPruned`` when a wall budget is spent).
    ``device``: where the model trains (``cuda`` for the GPU check); each batch is copied there
    as the tutorial does, with no pinned memory and no autocast (fp32).
    """
    from signtune.models import build_model
    from signtune.train.schedule import build_scheduler

    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, feature_dim=feature_dim, vocab_size=vocab_size).to(device)
    groups = model.named_groups()
    optimizer = torch.optim.AdamW(
        [
            {"params": groups["encoder"], "lr": cfg.optim.lr * cfg.optim.encoder_lr_ratio},
            {"params": groups["decoder"], "lr": cfg.optim.lr},
        ],
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
    )
    loader = make_loader(dataset, cfg.data.batch_size, cfg.run.seed + 1)
    scheduler = build_scheduler(
        optimizer,
        total_steps=cfg.run.epochs * len(loader),
        warmup_ratio=cfg.schedule.warmup_ratio,
        name=cfg.schedule.name,
        min_lr_ratio=cfg.schedule.min_lr_ratio,
    )
    criterion = nn.CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=cfg.loss.label_smoothing)
    for epoch in range(1, cfg.run.epochs + 1):
        model.train()
        total, steps = 0.0, 0
        for batch in loader:
            src, src_mask, tgt_in, tgt_out = (t.to(device) for t in batch)
            optimizer.zero_grad()
            logits = model(src, src_mask, tgt_in)
            loss = criterion(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
            loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            total += loss.item()
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, model, total / max(1, steps) if math.isfinite(total) else math.nan)
    return model


def greedy(model: Any, features: list[np.ndarray], *, max_len: int) -> list[list[int]]:
    """Decode each clip alone, re-running the full decoder over the prefix for every token."""
    out: list[list[int]] = []
    model.eval()
    with torch.no_grad():
        for f in features:
            src = torch.tensor(f, dtype=torch.float32)[None]
            mask = torch.ones(1, len(f), dtype=torch.bool)
            memory = model.encode(src, mask)
            ys = torch.full((1, 1), BOS_ID, dtype=torch.long)
            for _ in range(max_len):
                logits = model.decode(ys, memory, mask)[:, -1]
                token = logits.argmax(-1, keepdim=True)
                ys = torch.cat([ys, token], dim=1)
                if token.item() == EOS_ID:
                    break
            ids = ys[0, 1:].tolist()
            out.append(ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids)
    return out
