"""Model builders: a ``ModelConfig`` becomes flat constructor arguments here, and only here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from signtune.config import ModelConfig
from signtune.data.types import PAD_ID, SpecialIds
from signtune.errors import ConfigError, Problem
from signtune.models.base import SignModel
from signtune.models.t5 import SignT5
from signtune.models.transformer import DecoderCache, SignTransformer

__all__ = [
    "BUILDERS",
    "DecoderCache",
    "SignModel",
    "SignT5",
    "SignTransformer",
    "build_model",
    "check_model_files",
    "model_architecture",
]


def _check_shape(cfg: ModelConfig) -> list[Problem]:
    """The from-scratch transformer's shape (a t5 takes its shape from its config.json)."""
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
    return problems


def _check(cfg: ModelConfig, *, files: bool = True) -> list[Problem]:
    """Every invalid value; ``files=False`` skips ``model.pretrained`` (a rebuild from an architecture)."""
    problems = _check_shape(cfg) if cfg.family == "transformer" else []
    if not 0.0 <= cfg.dropout < 1.0:
        problems.append(Problem("model.dropout", f"must be in [0, 1), but got {cfg.dropout}", "use e.g. 0.1"))
    for key, value in (
        ("model.freeze_first_n_layers", cfg.freeze_first_n_layers),
        ("model.unfreeze_at_epoch", cfg.unfreeze_at_epoch),
    ):
        if value < 0:
            problems.append(Problem(key, f"must be >= 0, but got {value}", "use 0 (off) or more"))
    if files and cfg.family == "t5" and not cfg.pretrained:
        problems.append(
            Problem(
                "model.pretrained",
                "is empty, but model.family t5 loads a pretrained T5",
                "set it to a folder written by save_pretrained (config.json + model.safetensors)",
            )
        )
    return problems


def _build_transformer(
    cfg: ModelConfig, *, feature_dim: int, vocab_size: int, specials: SpecialIds | None, **_: Any
) -> SignTransformer:
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
        pad_id=specials.pad if specials is not None else PAD_ID,
    )


def _build_t5(
    cfg: ModelConfig,
    *,
    feature_dim: int,
    vocab_size: int,
    specials: SpecialIds | None,
    base_dir: Path | None,
    architecture: dict[str, Any] | None,
) -> SignT5:
    from signtune.models import t5

    if architecture is not None:
        return t5.from_architecture(architecture, feature_dim=feature_dim)
    return t5.load_t5(cfg, feature_dim=feature_dim, vocab_size=vocab_size, specials=specials, base_dir=base_dir)


BUILDERS: dict[str, Callable[..., SignModel]] = {"transformer": _build_transformer, "t5": _build_t5}


def build_model(
    cfg: ModelConfig,
    *,
    feature_dim: int,
    vocab_size: int,
    specials: SpecialIds | None = None,
    base_dir: Path | None = None,
    architecture: dict[str, Any] | None = None,
) -> SignModel:
    """Build the model that ``cfg.family`` names.

    Args:
        cfg: the ``model`` section of the config.
        feature_dim: size of one feature frame (``TaskData.feature_dim``).
        vocab_size: target vocabulary size (``tokenizer.vocab_size``).
        specials: the tokenizer's special ids (``special_ids(tokenizer)``); a t5 checks them
            against its own. None: the word-level ids, unchecked.
        base_dir: where relative model paths (``model.pretrained``, ``model.sign_encoder``)
            start: the study directory. None: the working directory.
        architecture: ``model_architecture``'s record (a promoted model's config.json): build
            from it with fresh weights instead of reading the pretrained files.

    Raises:
        ConfigError: every invalid ``model.*`` value at once (e.g. ``model.d_model`` not
            divisible by ``model.num_heads``), an unknown ``model.family``, or (t5) a
            pretrained file that is missing or does not fit the tokenizer.
    """
    if cfg.family not in BUILDERS:
        raise ConfigError(
            Problem(
                "model.family",
                f"must be one of {sorted(BUILDERS)}, but got {cfg.family!r}",
                f"set model.family to one of {sorted(BUILDERS)}",
            )
        )
    problems = _check(cfg, files=architecture is None)
    if problems:
        raise ConfigError(problems)
    return BUILDERS[cfg.family](
        cfg,
        feature_dim=feature_dim,
        vocab_size=vocab_size,
        specials=specials,
        base_dir=base_dir,
        architecture=architecture,
    )


def check_model_files(
    cfg: ModelConfig, *, tokenizer: str, base_dir: Path | None, max_frames: int | None = None
) -> None:
    """Check the config and the files the model reads, without loading weights (a study's start).

    Args:
        cfg: the ``model`` section.
        tokenizer: ``data.tokenizer`` (a t5 needs its own).
        base_dir: the study directory.
        max_frames: ``data.max_frames``; a pretrained sign encoder must have as many positions.

    Raises:
        ConfigError: every problem at once, each naming the key, the path looked at and the fix.
    """
    problems = _check(cfg)
    if cfg.family == "t5":
        from signtune.models import t5

        problems += t5.check_files(cfg, tokenizer=tokenizer, base_dir=base_dir, max_frames=max_frames)
    if problems:
        raise ConfigError(problems)


def model_architecture(cfg: ModelConfig, *, base_dir: Path | None) -> dict[str, Any] | None:
    """What ``build_model(..., architecture=...)`` needs to rebuild the model without its source
    files (a t5's config and its sign encoder's shape); None for the transformer family, whose
    ``ModelConfig`` says it all."""
    if cfg.family != "t5":
        return None
    from signtune.models import t5

    return t5.architecture(cfg, base_dir=base_dir)
