"""Model builders: a ``ModelConfig`` becomes flat constructor arguments here, and only here."""

from __future__ import annotations

from collections.abc import Callable

from signtune.config import ModelConfig
from signtune.data.types import PAD_ID
from signtune.errors import ConfigError, Problem
from signtune.models.transformer import DecoderCache, SignTransformer

__all__ = ["BUILDERS", "DecoderCache", "SignTransformer", "build_model"]


def _check(cfg: ModelConfig) -> list[Problem]:
    problems: list[Problem] = []
    if cfg.num_heads < 1:
        problems.append(Problem("model.num_heads", f"must be >= 1, but got {cfg.num_heads}", "use 1 or more"))
    elif cfg.d_model % cfg.num_heads != 0:
        divisors = [h for h in range(1, min(cfg.d_model, 32) + 1) if cfg.d_model % h == 0]
        problems.append(
            Problem(
                "model.d_model / model.num_heads",
                f"model.d_model must be divisible by model.num_heads, but got "
                f"d_model={cfg.d_model} and num_heads={cfg.num_heads}",
                f"pick num_heads in {divisors} or a d_model that is a multiple of {cfg.num_heads}",
            )
        )
    for key, value, low in [
        ("model.d_model", cfg.d_model, 1),
        ("model.num_encoder_layers", cfg.num_encoder_layers, 1),
        ("model.num_decoder_layers", cfg.num_decoder_layers, 1),
        ("model.ff_mult", cfg.ff_mult, 1),
        ("model.max_positions", cfg.max_positions, 1),
    ]:
        if value < low:
            problems.append(Problem(key, f"must be >= {low}, but got {value}", f"use {low} or more"))
    if not 0.0 <= cfg.dropout < 1.0:
        problems.append(Problem("model.dropout", f"must be in [0, 1), but got {cfg.dropout}", "use e.g. 0.1"))
    return problems


def _build_transformer(cfg: ModelConfig, *, feature_dim: int, vocab_size: int) -> SignTransformer:
    return SignTransformer(
        feature_dim=feature_dim,
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        ff_mult=cfg.ff_mult,
        dropout=cfg.dropout,
        max_positions=cfg.max_positions,
        pad_id=PAD_ID,
    )


BUILDERS: dict[str, Callable[..., SignTransformer]] = {"transformer": _build_transformer}


def build_model(cfg: ModelConfig, *, feature_dim: int, vocab_size: int) -> SignTransformer:
    """Build the model that ``cfg.family`` names.

    Args:
        cfg: the ``model`` section of the config.
        feature_dim: size of one feature frame (``TaskData.feature_dim``).
        vocab_size: target vocabulary size (``tokenizer.vocab_size``).

    Raises:
        ConfigError: every invalid ``model.*`` value at once (e.g. ``model.d_model`` not
            divisible by ``model.num_heads``), or an unknown ``model.family``.
    """
    if cfg.family not in BUILDERS:
        raise ConfigError(
            Problem(
                "model.family",
                f"must be one of {sorted(BUILDERS)}, but got {cfg.family!r}",
                f"set model.family to one of {sorted(BUILDERS)}",
            )
        )
    problems = _check(cfg)
    if problems:
        raise ConfigError(problems)
    return BUILDERS[cfg.family](cfg, feature_dim=feature_dim, vocab_size=vocab_size)
