"""A learnable toy translation task and a stand-in batcher for the trainer's tests.

Each word has a fixed random feature vector; a sentence's clip is its words' vectors, each
repeated for a few frames, plus noise. A small model learns to read the words back.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from signtune.data.types import UNK_ID, WORD_LEVEL, Batch, SpecialIds, Split, TaskData

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


class ToyTokenizer:
    """Whitespace words; ids 0-3 are the specials."""

    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.ids = {w: i + 4 for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return 4 + len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, UNK_ID) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i - 4] for i in ids if i >= 4)


def toy_split(
    name: str,
    n: int,
    tokenizer: ToyTokenizer,
    codebook: np.ndarray,
    rng: np.random.Generator,
    *,
    frames_per_word: int = 2,
    noise: float = 0.1,
) -> Split:
    texts, feats, token_ids = [], [], []
    for _ in range(n):
        words = list(rng.choice(tokenizer.words, size=int(rng.integers(3, 7))))
        text = " ".join(words)
        ids = tokenizer.encode(text)
        frames = np.repeat(codebook[np.array(ids) - 4], frames_per_word, axis=0)
        frames = frames + noise * rng.standard_normal(frames.shape)
        texts.append(text)
        feats.append(frames.astype(np.float32))
        token_ids.append(ids)
    return Split(name, [f"{name}-{i}" for i in range(n)], texts, feats, token_ids)


def toy_task(n_train: int = 192, n_val: int = 32, feature_dim: int = 16, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    tokenizer = ToyTokenizer(WORDS)
    codebook = rng.standard_normal((len(WORDS), feature_dim))
    return TaskData(
        train=toy_split("train", n_train, tokenizer, codebook, rng),
        val=toy_split("val", n_val, tokenizer, codebook, rng),
        test=None,
        tokenizer=tokenizer,
        feature_dim=feature_dim,
    )


def collate(split: Split, index: list[int], max_frames: int, specials: SpecialIds = WORD_LEVEL) -> Batch:
    """Pad rows ``index`` of ``split`` into a ``Batch``."""
    feats = [split.features[i][:max_frames] for i in index]
    toks = [split.token_ids[i] for i in index]
    t, n_tok = max(len(f) for f in feats), max(len(x) for x in toks) + 1
    src = torch.zeros(len(index), t, feats[0].shape[1])
    src_mask = torch.zeros(len(index), t, dtype=torch.bool)
    tgt_in = torch.full((len(index), n_tok), specials.pad, dtype=torch.long)
    tgt_out = torch.full((len(index), n_tok), specials.pad, dtype=torch.long)
    for row, (f, x) in enumerate(zip(feats, toks, strict=True)):
        src[row, : len(f)] = torch.from_numpy(f)
        src_mask[row, : len(f)] = True
        tgt_in[row, : len(x) + 1] = torch.tensor([specials.bos, *x])
        tgt_out[row, : len(x) + 1] = torch.tensor([*x, specials.eos])
    return Batch(src, src_mask, tgt_in, tgt_out, list(index))


def toy_make_batches(
    split: Split, batch_size: int, *, shuffle: bool, seed: int, max_frames: int, specials: SpecialIds = WORD_LEVEL
) -> list[Batch]:
    """Stand-in for ``signtune.data.batching.make_batches`` with the same signature."""
    order = list(range(len(split)))
    if shuffle:
        order = list(np.random.default_rng(seed).permutation(len(split)))
    return [
        collate(split, [int(i) for i in order[s : s + batch_size]], max_frames, specials)
        for s in range(0, len(order), batch_size)
    ]


@pytest.fixture
def toy_batching(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``fit`` use ``toy_make_batches``, whatever state the data package is in."""
    module = types.ModuleType("signtune.data.batching")
    module.make_batches = toy_make_batches  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "signtune.data.batching", module)
    yield


@pytest.fixture(scope="session")
def toy_data() -> TaskData:
    return toy_task()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and don't stall when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
