"""Length-aware batching: clips of similar length share a batch, so little of it is padding."""

from __future__ import annotations

import numpy as np
import torch

from signtune.data.types import WORD_LEVEL, Batch, SpecialIds, Split
from signtune.errors import DataError, Problem

JITTER = 0.1  # shuffled sort keys vary by up to +-10% of the length, so buckets change per epoch


def collate(split: Split, indices: list[int], max_frames: int, specials: SpecialIds = WORD_LEVEL) -> Batch:
    """Pad the clips ``indices`` of ``split`` into one batch.

    Clips longer than ``max_frames`` are truncated. ``src`` is zero-padded and ``src_mask`` is
    True on real frames; ``tgt_in`` is ``[bos] + tokens`` and ``tgt_out`` is
    ``tokens + [eos]``, both padded with ``pad`` (the ids of ``specials``, the tokenizer's).
    Tensors are on the CPU.
    """
    feats = [split.features[i][:max_frames] for i in indices]
    tokens = [split.token_ids[i] for i in indices]
    lengths = np.fromiter((len(f) for f in feats), dtype=np.int64, count=len(feats))
    n, t_max = len(indices), int(lengths.max(initial=1))
    dim = feats[0].shape[1] if feats else 0
    src = np.zeros((n, t_max, dim), dtype=np.float32)
    for row, f in enumerate(feats):  # one copy per clip, not per frame
        src[row, : len(f)] = f
    src_mask = np.arange(t_max)[None, :] < lengths[:, None]

    l_max = max((len(t) for t in tokens), default=0) + 1
    tgt_in = np.full((n, l_max), specials.pad, dtype=np.int64)
    tgt_out = np.full((n, l_max), specials.pad, dtype=np.int64)
    tgt_in[:, 0] = specials.bos
    for row, t in enumerate(tokens):
        tgt_in[row, 1 : len(t) + 1] = t
        tgt_out[row, : len(t)] = t
        tgt_out[row, len(t)] = specials.eos
    return Batch(
        src=torch.from_numpy(src),
        src_mask=torch.from_numpy(src_mask),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        index=list(indices),
    )


def make_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    max_frames: int,
    specials: SpecialIds = WORD_LEVEL,
) -> list[Batch]:
    """Cut ``split`` into padded batches of clips of similar length.

    Without ``shuffle`` the clips are sorted by length (ties by position) and batched in that
    order. With it, each clip's sort key gets a seeded random jitter and the batch order is
    shuffled, so passing ``seed + epoch`` gives different batches every epoch and the same
    ones for the same seed.

    Args:
        split: the loaded split (token ids already encoded).
        batch_size: clips per batch (the last batch may be smaller).
        shuffle: jitter the buckets and shuffle the batch order.
        seed: seeds ``numpy.random.default_rng``.
        max_frames: clips are truncated to this many frames.
        specials: the tokenizer's pad, bos and eos ids (``special_ids(tokenizer)``).

    Raises:
        DataError: ``batch_size`` or ``max_frames`` is below 1.
    """
    problems = [
        Problem(f"data.{key}", f"must be >= 1, but got {value}", f"set data.{key} to 1 or more")
        for key, value in (("batch_size", batch_size), ("max_frames", max_frames))
        if value < 1
    ]
    if problems:
        raise DataError(problems)
    n = len(split)
    if n == 0:
        return []
    lengths = np.minimum([len(f) for f in split.features], max_frames).astype(np.float64)
    if shuffle:
        rng = np.random.default_rng(seed)
        keys = lengths * (1.0 + rng.uniform(-JITTER, JITTER, n))
        order = np.lexsort((rng.random(n), keys))
    else:
        order = np.argsort(lengths, kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if shuffle:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    return [collate(split, [int(i) for i in chunk], max_frames, specials) for chunk in chunks]
