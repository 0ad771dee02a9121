"""The trainer's typed config tree and dotted-key overrides.

Parameter names everywhere (Optuna, MLflow, ``best_params.json``, CLI overrides) are the
dotted paths of this tree, e.g. ``optim.lr`` or ``model.num_encoder_layers``. Defaults live
here, in the dataclasses, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from signtune.coerce import coerce
from signtune.errors import ConfigError, Problem


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is batched.

    Manifests and ``features_dir`` are relative to ``root``; ``root`` and ``tokenizer`` are
    relative to the study directory (absolute paths are kept).
    """

    root: str = "data"
    format: Literal["how2sign", "tsv", "ssvp"] = "how2sign"
    train_manifest: str = "how2sign_realigned_train.csv"
    val_manifest: str = "how2sign_realigned_val.csv"
    test_manifest: str = "how2sign_realigned_test.csv"
    features_dir: str = "features"
    id_column: str = "SENTENCE_NAME"
    text_column: str = "SENTENCE"
    feature_dim: int = 64
    subset: float = 1.0
    subset_seed: int = 0
    batch_size: int = 32
    max_frames: int = 1024
    vocab_size: int = 2000
    lowercase: bool = False
    tokenizer: str = ""  # a local Hugging Face tokenizer folder (e.g. the T5's); empty: train a word-level one
    pack: Literal["auto", "off"] = "auto"  # pack the feature files into one memory-mapped store on first use


@dataclass(frozen=True)
class ModelConfig:
    """The model. ``family`` picks the builder in ``signtune.models``.

    ``transformer`` is built from scratch with the shape fields below. ``t5`` is a pretrained
    Hugging Face T5 (``pretrained``) fed by a linear projection of the features (D -> the T5's
    d_model), optionally behind a pretrained sign encoder (``sign_encoder``); its shape comes
    from the T5's own config.json, so the shape fields are ignored and ``dropout`` sets the
    T5's ``dropout_rate``. Relative paths are relative to the study directory.

    Freezing (both families): ``freeze_encoder`` freezes the whole encoder path (t5: the sign
    encoder and the T5 encoder, not the new projection; transformer: its encoder);
    ``freeze_first_n_layers`` freezes the first N encoder blocks in input order (t5: the sign
    encoder's blocks, then the T5 encoder's). Frozen blocks become trainable at the start of
    epoch ``unfreeze_at_epoch`` (1-based; 0 = never) and then train at their group's lr.
    """

    family: Literal["transformer", "t5"] = "transformer"
    d_model: int = 128
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.1
    max_positions: int = 1024
    pretrained: str = ""  # t5: a folder with config.json + model.safetensors, or a hub id already in the HF cache
    sign_encoder: str = ""  # t5: a promoted transformer model folder whose encoder sits before the projection
    freeze_encoder: bool = False
    freeze_first_n_layers: int = 0
    unfreeze_at_epoch: int = 0  # 0 = frozen blocks stay frozen


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a learning-rate ratio per parameter group (group lr = lr * its ratio).

    ``encoder_lr_ratio`` applies to the encoder (transformer) or the pretrained sign encoder
    (t5); the ``*_lr_ratio`` fields after it apply to the t5 family's other groups.
    """

    lr: float = 1.0e-3
    encoder_lr_ratio: float = 1.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step (the OOM retry halves the batch and doubles this)
    projection_lr_ratio: float = 1.0  # t5: the feature projection (D -> d_model)
    t5_encoder_lr_ratio: float = 1.0  # t5: the T5 encoder blocks and final norm
    t5_decoder_lr_ratio: float = 1.0  # t5: the T5 decoder, the shared embedding and the LM head


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup, then cosine (or linear) decay to ``min_lr_ratio * lr``."""

    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class EvalConfig:
    """Validation decoding and scoring (sacrebleu corpus BLEU-4 on the whole split).

    ``max_len`` is the most tokens decoded per sentence (EOS included). The per-epoch validation
    inside ``fit`` decodes at most the longest training target plus a quarter (at least 4
    tokens) plus EOS, when that is less: a model cannot have learned to write longer sentences
    than it was trained on, and an undertrained one that never emits EOS would otherwise
    decode to ``max_len`` every epoch. Test scoring and translation use ``max_len`` as it is.
    """

    max_len: int = 64
    beam_size: int = 1
    batch_size: int = 128
    bleu_tokenize: str = "13a"
    lowercase: bool = False


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 8
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


def config_keys(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """All dotted leaf keys of a config dataclass, mapped to their annotated types."""
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.update(config_keys(typing.cast(type, tp), key + "."))
        else:
            out[key] = tp
    return out


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], *, where: str = "overrides") -> TrainConfig:
    """Return a copy of ``cfg`` with dotted keys replaced; all bad keys are reported at once.

    Args:
        cfg: the base config.
        values: ``{"optim.lr": 3e-4, "model.dropout": 0.2, ...}``.
        where: the source named in error messages (a file path, ``--set``...).

    Raises:
        ConfigError: a key is unknown or a value has the wrong type.
    """
    keys = config_keys()
    problems: list[Problem] = []
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key not in keys:
            section = key.split(".")[0]
            near = sorted(k for k in keys if k.startswith(section + "."))
            problems.append(
                Problem(
                    f"{where}: {key}",
                    "is not a config key",
                    f"use one of {near}" if near else f"sections are {sorted({k.split('.')[0] for k in keys})}",
                )
            )
            continue
        try:
            coerced = coerce(value, keys[key], integral_floats=True)
        except ValueError as exc:
            problems.append(Problem(f"{where}: {key}", str(exc), "correct the value"))
            continue
        section, _, leaf = key.partition(".")
        grouped.setdefault(section, {})[leaf] = coerced
    if problems:
        raise ConfigError(problems)
    updates = {section: dataclasses.replace(getattr(cfg, section), **fields) for section, fields in grouped.items()}
    return dataclasses.replace(cfg, **updates)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``TrainConfig`` -> ``{"optim.lr": 0.001, ...}`` (the inverse of ``apply_overrides``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out
