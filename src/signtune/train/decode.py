"""Batched greedy and beam-search decoding over a model's KV-cached incremental decoder.

Any model with ``encode``, ``start_decoding`` and ``decode_step`` (see ``IncrementalDecoder``)
can be decoded here; ``SignTransformer`` is one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

# Early stopping needs to know whether every row has emitted EOS, which is a host sync (on GPU
# it waits for all queued kernels and stalls the launch pipeline). Checking every 8 steps costs
# at most 7 wasted steps once all rows are done, instead of a stall on every step.
SYNC_EVERY = 8


class DecoderCacheLike(Protocol):
    def reorder(self, index: Tensor, *, memory: bool = True) -> None: ...


CacheT = TypeVar("CacheT", bound=DecoderCacheLike)


class IncrementalDecoder(Protocol[CacheT]):
    """What decoding needs from a model."""

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor: ...

    def start_decoding(self, memory: Tensor, src_mask: Tensor, max_len: int) -> CacheT: ...

    def decode_step(self, tokens: Tensor, cache: CacheT) -> Tensor: ...


@contextmanager
def _eval_mode(model: object) -> Iterator[None]:
    """Switch dropout off while decoding, and restore the caller's mode afterwards."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        if was_training and isinstance(model, nn.Module):
            model.train()


def _strip(ids: list[int], bos_id: int, eos_id: int) -> list[int]:
    """Cut at the first EOS and drop BOS tokens."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return [i for i in ids if i != bos_id]


def greedy_decode(
    model: IncrementalDecoder[Any],
    src: Tensor,
    src_mask: Tensor,
    *,
    max_len: int,
    bos_id: int,
    eos_id: int,
) -> list[list[int]]:
    """Greedy decoding of a batch, one cached decoder step per position.

    Args:
        model: the model; put in eval mode for the call.
        src: frames ``(B, T, D)`` on the model's device.
        src_mask: ``(B, T)``, True on real frames.
        max_len: the most tokens generated per row (EOS included).
        bos_id: the start token fed at step 0.
        eos_id: the end token.

    Returns:
        Token ids per row, without BOS, EOS and anything after EOS.
    """
    with torch.inference_mode(), _eval_mode(model):
        memory = model.encode(src, src_mask)
        cache = model.start_decoding(memory, src_mask, max_len)
        b = src.shape[0]
        tokens = torch.full((b,), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        steps: list[Tensor] = []
        for step in range(max_len):
            logits = model.decode_step(tokens, cache)
            # Finished rows keep emitting EOS; they still ride along in the batch, since
            # dropping them would need a host sync per step to know which ones to drop.
            tokens = logits.argmax(-1).masked_fill(done, eos_id)
            steps.append(tokens)
            done |= tokens == eos_id
            if (step + 1) % SYNC_EVERY == 0 and bool(done.all()):
                break
        rows: list[list[int]] = torch.stack(steps, dim=1).tolist() if steps else [[]] * b
    return [_strip(row, bos_id, eos_id) for row in rows]


def beam_search(
    model: IncrementalDecoder[Any],
    src: Tensor,
    src_mask: Tensor,
    *,
    beam_size: int,
    max_len: int,
    bos_id: int,
    eos_id: int,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search, batched over sentences (``B * beam_size`` rows in the decoder).

    Finished hypotheses stay in the beam and may only continue with EOS at no cost, so all
    beams have the same number of steps. At the end each sentence's hypotheses are ranked by
    ``log p / length ** length_penalty`` (length counts EOS); 0 ranks by raw log-probability.

    Args:
        model: the model; put in eval mode for the call.
        src: frames ``(B, T, D)``.
        src_mask: ``(B, T)``, True on real frames.
        beam_size: hypotheses kept per sentence.
        max_len: the most tokens generated per hypothesis (EOS included).
        bos_id: the start token.
        eos_id: the end token.
        length_penalty: exponent of the length normalisation.

    Returns:
        The best hypothesis per sentence, without BOS, EOS and anything after EOS.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, but got {beam_size}")
    with torch.inference_mode(), _eval_mode(model):
        b, k, device = src.shape[0], beam_size, src.device
        memory = model.encode(src, src_mask).repeat_interleave(k, dim=0)
        cache = model.start_decoding(memory, src_mask.repeat_interleave(k, dim=0), max_len)
        # Only beam 0 is alive at first; the others start at -inf so step 0 does not fill the
        # beam with k copies of the same hypothesis.
        scores = torch.full((b, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        tokens = torch.full((b * k,), bos_id, dtype=torch.long, device=device)
        history = torch.empty((b * k, 0), dtype=torch.long, device=device)
        done = torch.zeros(b * k, dtype=torch.bool, device=device)
        lengths = torch.zeros(b * k, device=device)
        first_row = (torch.arange(b, device=device) * k)[:, None]  # (B, 1)
        eos_only: Tensor | None = None
        for step in range(max_len):
            logp = model.decode_step(tokens, cache).float().log_softmax(-1)  # (B*k, V)
            vocab = logp.shape[-1]
            if eos_only is None:
                eos_only = torch.full((vocab,), float("-inf"), device=device)
                eos_only[eos_id] = 0.0
            logp = torch.where(done[:, None], eos_only, logp)
            top_scores, top = (scores.view(-1, 1) + logp).view(b, k * vocab).topk(k, dim=1)
            rows = (first_row + top // vocab).view(-1)  # parent row of each new hypothesis
            new_tokens = (top % vocab).view(-1)
            cache.reorder(rows, memory=False)
            history = torch.cat([history.index_select(0, rows), new_tokens[:, None]], dim=1)
            parent_done = done.index_select(0, rows)
            lengths = lengths.index_select(0, rows) + (~parent_done).float()
            done = parent_done | (new_tokens == eos_id)
            scores, tokens = top_scores, new_tokens
            # One host sync every SYNC_EVERY steps, as in greedy_decode.
            if (step + 1) % SYNC_EVERY == 0 and bool(done.all()):
                break
        normalized = scores / lengths.view(b, k).clamp(min=1.0) ** length_penalty
        best = first_row[:, 0] + normalized.argmax(dim=1)
        rows_out: list[list[int]] = history.index_select(0, best).tolist()
    return [_strip(row, bos_id, eos_id) for row in rows_out]
