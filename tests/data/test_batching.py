"""Length-aware batching: shapes, masks, targets, buckets and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from signtune.data.batching import collate, make_batches
from signtune.data.types import BOS_ID, EOS_ID, PAD_ID, Split
from signtune.errors import DataError


def _split(n: int = 200, dim: int = 6, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 120, n)
    feats = [rng.standard_normal((int(t), dim)).astype(np.float32) + 1.0 for t in lengths]
    tokens = [[int(x) for x in rng.integers(4, 50, int(rng.integers(1, 15)))] for _ in range(n)]
    return Split("train", [f"c{i}" for i in range(n)], ["t"] * n, feats, tokens)


def test_collate_shapes_masks_and_targets() -> None:
    split = _split(10)
    index = [3, 7, 1]
    batch = collate(split, index, max_frames=60)
    lengths = [min(len(split.features[i]), 60) for i in index]
    b, t, d = batch.src.shape
    assert (b, d) == (3, 6) and t == max(lengths)
    assert batch.src.dtype == torch.float32 and batch.src_mask.dtype == torch.bool
    assert batch.tgt_in.dtype == torch.long and batch.tgt_in.shape == batch.tgt_out.shape
    assert batch.index == index
    for row, i in enumerate(index):
        n = lengths[row]
        assert batch.src_mask[row].sum().item() == n
        assert batch.src_mask[row, :n].all()
        np.testing.assert_array_equal(batch.src[row, :n].numpy(), split.features[i][:n])
        assert (batch.src[row, n:] == 0).all()
        toks = split.token_ids[i]
        k = len(toks)
        assert batch.tgt_in[row, 0].item() == BOS_ID
        assert batch.tgt_in[row, 1 : k + 1].tolist() == toks
        assert batch.tgt_out[row, :k].tolist() == toks
        assert batch.tgt_out[row, k].item() == EOS_ID
        assert (batch.tgt_in[row, k + 1 :] == PAD_ID).all()
        assert (batch.tgt_out[row, k + 1 :] == PAD_ID).all()
    assert batch.tgt_in.shape[1] == max(len(split.token_ids[i]) for i in index) + 1


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_clip_once_and_lengths_close(shuffle: bool) -> None:
    split = _split(200)
    batches = make_batches(split, 16, shuffle=shuffle, seed=5, max_frames=1000)
    seen = sorted(i for b in batches for i in b.index)
    assert seen == list(range(200))
    assert [len(b.index) for b in batches].count(16) == 12
    lengths = np.array([len(f) for f in split.features])
    spread = np.mean([np.ptp(lengths[b.index]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[c]) for c in np.array_split(np.arange(200), 13)])
    assert spread < 0.3 * random_spread  # bucketed batches hold clips of similar length
    padding = sum((~b.src_mask).sum().item() for b in batches) / sum(b.src_mask.numel() for b in batches)
    assert padding < 0.15


def test_seeds() -> None:
    split = _split(200)

    def order(seed: int, shuffle: bool = True) -> list[list[int]]:
        return [b.index for b in make_batches(split, 16, shuffle=shuffle, seed=seed, max_frames=1000)]

    assert order(1) == order(1)
    assert order(1) != order(2)  # seed + epoch gives new batches each epoch
    assert order(1, shuffle=False) == order(2, shuffle=False)
    unshuffled = order(0, shuffle=False)
    lengths = [len(split.features[b[0]]) for b in unshuffled]
    assert lengths == sorted(lengths)


def test_truncation_and_edge_cases() -> None:
    split = _split(20)
    batches = make_batches(split, 8, shuffle=False, seed=0, max_frames=30)
    assert max(b.src.shape[1] for b in batches) == 30
    assert make_batches(Split("e", [], [], [], []), 4, shuffle=True, seed=0, max_frames=10) == []
    with pytest.raises(DataError) as err:
        make_batches(split, 0, shuffle=False, seed=0, max_frames=0)
    assert [p.where for p in err.value.problems] == ["data.batch_size", "data.max_frames"]
