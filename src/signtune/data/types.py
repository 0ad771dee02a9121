"""Data contracts shared by the data loaders and the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # loading data needs no torch; only batches do, and they arrive as tensors
    import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


@dataclass(frozen=True)
class SpecialIds:
    """The token ids batching, the loss and decoding need.

    Attributes:
        pad: pads targets; the loss ignores it.
        bos: the decoder's start token, first in every ``tgt_in`` (T5 has no BOS and starts
            from its pad id).
        eos: ends every ``tgt_out`` and every decoded sentence.
    """

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID


WORD_LEVEL = SpecialIds()  # the word-level tokenizer's ids 0-2


class TextTokenizer(Protocol):
    """What the trainer needs from a tokenizer.

    A tokenizer may also have a ``special_ids`` attribute (``SpecialIds``); one without it
    uses the word-level ids 0-3: pad, bos, eos, unk. ``special_ids(tokenizer)`` reads it.
    """

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens are skipped."""
        ...


def special_ids(tokenizer: object) -> SpecialIds:
    """The tokenizer's ``special_ids``, or the word-level ids when it declares none."""
    found = getattr(tokenizer, "special_ids", None)
    return found if isinstance(found, SpecialIds) else WORD_LEVEL


@dataclass
class Split:
    """One split, loaded into memory. Lists are aligned by index."""

    name: str
    ids: list[str]
    texts: list[str]
    features: list[np.ndarray]  # each float32 (T, D)
    token_ids: list[list[int]]  # encode(text), without bos/eos

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TaskData:
    """Everything a sign-to-text trainer reads."""

    train: Split
    val: Split
    test: Split | None
    tokenizer: TextTokenizer
    feature_dim: int


@dataclass
class Batch:
    """A padded batch.

    ``tgt_in`` is ``[bos] + tokens`` and ``tgt_out`` is ``tokens + [eos]``, both padded with
    ``PAD_ID``; ``src_mask`` is True on real frames.
    """

    src: torch.Tensor  # (B, T, D) float32
    src_mask: torch.Tensor  # (B, T) bool
    tgt_in: torch.Tensor  # (B, L) long
    tgt_out: torch.Tensor  # (B, L) long
    index: list[int]  # positions of the rows in the split

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device``. To CUDA, through pinned host memory: a copy from pageable
        memory waits for the device's queue to drain, a pinned one overlaps with it."""
        if device.type != "cuda":
            return Batch(
                self.src.to(device),
                self.src_mask.to(device),
                self.tgt_in.to(device),
                self.tgt_out.to(device),
                self.index,
            )

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True)

        return Batch(move(self.src), move(self.src_mask), move(self.tgt_in), move(self.tgt_out), self.index)
