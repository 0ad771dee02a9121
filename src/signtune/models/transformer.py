"""A pre-norm encoder-decoder Transformer from sign features to text tokens.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on
CPU and GPU). The decoder has an incremental API with a KV cache for decoding:
``start_decoding`` computes the cross-attention keys and values once from the encoder memory,
and each ``decode_step`` appends one position to the self-attention cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from signtune.models.base import SignModel


def sinusoidal_positions(max_positions: int, d_model: int) -> Tensor:
    """The fixed sine/cosine position table of Vaswani et al., shape ``(max_positions, d_model)``."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, ff_mult: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, ff_mult * d_model)
        self.down = nn.Linear(ff_mult * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, hd)

    def _merge(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def forward(self, x: Tensor, *, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """Attend over the whole sequence.

        Args:
            x: ``(B, T, d_model)``.
            mask: bool ``(B, 1, 1, T)``, True on keys that may be attended to.
            causal: mask future positions (the decoder).
        """
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self._merge(y)

    def step(self, x: Tensor, cache_k: Tensor, cache_v: Tensor, pos: int) -> Tensor:
        """Attend from one new position ``pos`` to itself and all earlier cached positions.

        Writes this position's key and value into ``cache_k``/``cache_v`` (B, H, capacity, hd).
        """
        q, k, v = self._qkv(x)
        cache_k[:, :, pos : pos + 1] = k
        cache_v[:, :, pos : pos + 1] = v
        y = F.scaled_dot_product_attention(q, cache_k[:, :, : pos + 1], cache_v[:, :, : pos + 1])
        return self._merge(y)


class CrossAttention(nn.Module):
    """Multi-head attention from the decoder to the encoder memory."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the memory, each ``(B, H, T, hd)``; computed once per decode."""
        b, t, _ = memory.shape
        k, v = self.kv(memory).view(b, t, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class EncoderBlock(nn.Module):
    """Pre-norm: ``x + attn(norm(x))``, then ``x + ff(norm(x))``."""

    def __init__(self, d_model: int, num_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_mult)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), mask=mask))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the memory, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, num_heads)
        self.cross_norm = nn.LayerNorm(d_model)
        self.cross_attn = CrossAttention(d_model, num_heads)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_mult)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mem_k: Tensor, mem_v: Tensor, mem_mask: Tensor) -> Tensor:
        # Padded target positions come after the real ones, so the causal mask alone keeps
        # them out of every real position's view; no target padding mask is needed.
        x = x + self.dropout(self.self_attn(self.self_norm(x), causal=True))
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), mem_k, mem_v, mem_mask))
        return x + self.dropout(self.ff(self.ff_norm(x)))

    def step(self, x: Tensor, cache: DecoderCache, layer: int) -> Tensor:
        """One new position ``(B, 1, d)`` against layer ``layer`` of ``cache`` (eval only)."""
        pos = cache.length
        x = x + self.self_attn.step(self.self_norm(x), cache.self_k[layer], cache.self_v[layer], pos)
        x = x + self.cross_attn(self.cross_norm(x), cache.cross_k[layer], cache.cross_v[layer], cache.memory_mask)
        return x + self.ff(self.ff_norm(x))


@dataclass
class DecoderCache:
    """The decoder's state during incremental decoding; one row per hypothesis.

    Attributes:
        self_k: per layer, self-attention keys ``(B, H, capacity, hd)``; the first ``length``
            positions are filled. Pre-allocated, so a step writes in place instead of
            concatenating (a ``torch.cat`` per step and layer would copy the cache each time).
        self_v: per layer, self-attention values, like ``self_k``.
        cross_k: per layer, cross-attention keys of the memory ``(B, H, T, hd)``.
        cross_v: per layer, cross-attention values of the memory.
        memory_mask: bool ``(B, 1, 1, T)``, True on real frames.
        capacity: the most positions the cache holds (``max_len`` of ``start_decoding``).
        length: number of target positions decoded so far.
    """

    self_k: list[Tensor]
    self_v: list[Tensor]
    cross_k: list[Tensor]
    cross_v: list[Tensor]
    memory_mask: Tensor
    capacity: int
    length: int = 0

    def reorder(self, index: Tensor, *, memory: bool = True) -> None:
        """Keep rows ``index`` (a long tensor over the batch), e.g. the surviving beams.

        Args:
            index: row numbers to keep, in their new order; may repeat rows.
            memory: also reorder the cross-attention K/V and mask. Beam search passes False:
                the beams of one sentence share one memory, so only the self-attention
                cache moves (copying the cross K/V would cost O(T) per step and layer).
        """
        self.self_k = [t.index_select(0, index) for t in self.self_k]
        self.self_v = [t.index_select(0, index) for t in self.self_v]
        if memory:
            self.cross_k = [t.index_select(0, index) for t in self.cross_k]
            self.cross_v = [t.index_select(0, index) for t in self.cross_v]
            self.memory_mask = self.memory_mask.index_select(0, index)


class SignTransformer(SignModel):
    """Encoder-decoder Transformer: feature frames ``(B, T, D)`` -> token logits ``(B, L, V)``.

    The encoder is: input projection + LayerNorm, sinusoidal positions, pre-norm blocks, final
    norm. The decoder is: token embedding (scaled by sqrt(d_model)), sinusoidal positions,
    pre-norm blocks, final norm, and an output projection tied to the token embedding.

    Args:
        feature_dim: D, the size of one feature frame.
        vocab_size: V, the number of target tokens (specials included).
        d_model: width of the model; must be divisible by ``num_heads``.
        num_heads: attention heads.
        num_encoder_layers: encoder blocks.
        num_decoder_layers: decoder blocks.
        ff_mult: feed-forward width is ``ff_mult * d_model``.
        dropout: dropout on the embeddings and on each residual branch's output. Not on
            attention weights nor inside the feed-forward (fairseq's defaults,
            ``attention_dropout=0`` and ``activation_dropout=0``): on CPU, drawing the random
            masks costs more than the matmuls they cover (about 7 ns per element against
            well under 1), and attention-weight dropout also keeps SDPA off its fused kernels.
        max_positions: the longest source or target sequence the model accepts.
        pad_id: the padding token id.
    """

    positions: Tensor  # sinusoidal table, a buffer (no parameters)

    def __init__(
        self,
        feature_dim: int,
        vocab_size: int,
        d_model: int,
        num_heads: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        ff_mult: int,
        dropout: float,
        max_positions: int,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model must be divisible by num_heads, but got {d_model=} and {num_heads=}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.pad_id = pad_id

        self.input_proj = nn.Linear(feature_dim, d_model)
        self.input_norm = nn.LayerNorm(d_model)
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)
        self.encoder_blocks = nn.ModuleList(
            EncoderBlock(d_model, num_heads, ff_mult, dropout) for _ in range(num_encoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(d_model)

        self.tgt_embed = nn.Embedding(vocab_size, d_model)
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(d_model, num_heads, ff_mult, dropout) for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        # std d_model**-0.5: the scaled embedding has unit variance, and so do the tied logits.
        nn.init.normal_(self.tgt_embed.weight, std=d_model**-0.5)

    # ----------------------------------------------------------------- parameter groups

    def named_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for per-group learning rates; each parameter is in one group.

        ``encoder``: input projection and norm, encoder blocks, encoder norm. ``decoder``: the
        rest (token embedding, tied to the output projection; decoder blocks; decoder norm).
        """
        encoder = [p for m in self.encoder_modules() for p in m.parameters()]
        ids = {id(p) for p in encoder}
        decoder = [p for p in self.parameters() if id(p) not in ids]
        return {"encoder": encoder, "decoder": decoder}

    def encoder_parameters(self) -> list[nn.Parameter]:
        return self.named_groups()["encoder"]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return self.named_groups()["decoder"]

    def encoder_layers(self) -> list[nn.Module]:
        """The encoder blocks, first to last (``model.freeze_first_n_layers`` counts these)."""
        return list(self.encoder_blocks)

    def encoder_modules(self) -> list[nn.Module]:
        """The whole encoder (``model.freeze_encoder``): input projection and norm, blocks, final norm."""
        return [self.input_proj, self.input_norm, self.encoder_blocks, self.encoder_norm]

    # ----------------------------------------------------------------- full sequences

    def _decoder_blocks(self) -> Iterable[DecoderBlock]:
        return cast("Iterable[DecoderBlock]", self.decoder_blocks)  # ModuleList is untyped

    def _positions(self, start: int, length: int) -> Tensor:
        if start + length > self.max_positions:
            raise ValueError(
                f"sequence of {start + length} positions is longer than "
                f"model.max_positions={self.max_positions}; raise model.max_positions "
                "or lower data.max_frames / eval.max_len"
            )
        return self.positions[start : start + length]

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """Encode frames ``(B, T, D)`` with ``src_mask`` ``(B, T)`` (True = real) -> ``(B, T, d)``."""
        x = self.input_norm(self.input_proj(src)) + self._positions(0, src.shape[1])
        x = self.dropout(x)
        mask = src_mask[:, None, None, :]
        for block in self.encoder_blocks:
            x = block(x, mask)
        out: Tensor = self.encoder_norm(x)
        return out

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        x = self.tgt_embed(tokens) * math.sqrt(self.d_model)
        return self.dropout(x + self._positions(start, tokens.shape[1]))

    def _logits(self, x: Tensor) -> Tensor:
        return F.linear(self.decoder_norm(x), self.tgt_embed.weight)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Teacher-forced decoder: ``tgt_in`` ``(B, L)`` -> logits ``(B, L, V)``."""
        x = self._embed(tgt_in, 0)
        mask = src_mask[:, None, None, :]
        for block in self._decoder_blocks():
            k, v = block.cross_attn.memory_kv(memory)
            x = block(x, k, v, mask)
        return self._logits(x)

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits ``(B, L, V)`` for targets ``tgt_in`` (``[bos] + tokens``) given the frames."""
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)

    # ----------------------------------------------------------------- incremental decoding

    def start_decoding(self, memory: Tensor, src_mask: Tensor, max_len: int) -> DecoderCache:
        """A cache for up to ``max_len`` decode steps; cross-attention K/V are computed here once.

        Args:
            memory: ``encode(src, src_mask)``, ``(B, T, d)``.
            src_mask: ``(B, T)``, True on real frames.
            max_len: the most steps ``decode_step`` will be called for.
        """
        self._positions(0, max_len)  # fail now, not after max_positions steps
        b = memory.shape[0]
        cross = [block.cross_attn.memory_kv(memory) for block in self._decoder_blocks()]
        cross_k = [k for k, _ in cross]
        cross_v = [v for _, v in cross]
        head_dim = self.d_model // self.num_heads
        # Same dtype as the cross K/V, so the cache follows autocast (bf16 on GPU).
        dtype = cross_k[0].dtype if cross_k else memory.dtype
        shape = (b, self.num_heads, max_len, head_dim)
        n = len(self.decoder_blocks)
        return DecoderCache(
            self_k=[memory.new_zeros(shape, dtype=dtype) for _ in range(n)],
            self_v=[memory.new_zeros(shape, dtype=dtype) for _ in range(n)],
            cross_k=cross_k,
            cross_v=cross_v,
            memory_mask=src_mask[:, None, None, :],
            capacity=max_len,
        )

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed one token per row ``(B,)``; return next-token logits ``(B, V)``; grows ``cache``."""
        if cache.length >= cache.capacity:
            raise ValueError(f"decoder cache is full after {cache.capacity} steps")
        x = self._embed(tokens[:, None], cache.length)
        for layer, block in enumerate(self._decoder_blocks()):
            x = block.step(x, cache, layer)
        cache.length += 1
        return self._logits(x)[:, 0]
