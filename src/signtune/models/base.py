"""What the trainer needs from a model, whatever its family.

A model maps feature frames to next-token logits for teacher forcing, splits its parameters
into named groups (one learning-rate ratio each), names the encoder parts that freezing
applies to, and decodes incrementally (``signtune.train.decode.IncrementalDecoder``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class SignModel(nn.Module):
    """Base of every model family: frames ``(B, T, D)`` -> logits ``(B, L, V)``.

    Subclasses implement every method below; ``signtune.train.loop.fit`` uses nothing else
    (besides ``nn.Module``'s own API).
    """

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, L, V)`` for ``tgt_in`` (``[bos] + tokens``).

        Args:
            src: frames ``(B, T, D)``.
            src_mask: ``(B, T)``, True on real frames.
            tgt_in: ``(B, L)`` token ids, padded after the real ones.
        """
        raise NotImplementedError

    def named_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group name (each parameter in one group), for per-group learning rates."""
        raise NotImplementedError

    def encoder_layers(self) -> list[nn.Module]:
        """The encoder blocks in input order: what ``model.freeze_first_n_layers`` counts."""
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        """Everything ``model.freeze_encoder`` freezes."""
        raise NotImplementedError

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """Encoder memory ``(B, T, d)`` of frames ``(B, T, D)``."""
        raise NotImplementedError

    def start_decoding(self, memory: Tensor, src_mask: Tensor, max_len: int) -> Any:
        """A decoder cache for up to ``max_len`` steps (with a ``reorder(index, memory=...)``)."""
        raise NotImplementedError

    def decode_step(self, tokens: Tensor, cache: Any) -> Tensor:
        """Feed one token per row ``(B,)``; return next-token logits ``(B, V)``; grows ``cache``."""
        raise NotImplementedError
