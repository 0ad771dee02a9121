"""A tiny T5 and its tokenizer, saved the way a user saves a real one (``save_pretrained``).

The tokenizer is word-level over the given texts with T5's special ids (``<pad>`` 0, ``</s>``
1, ``<unk>`` 2) and T5's Metaspace pre-tokenizer, so ``decode(encode(s)) == s``. The model is a
``T5Config`` with d_model 32, 2 layers, 2 heads and d_ff 64 sized to that vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def tiny_tokenizer(texts: list[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``texts``: pad 0, eos 1, unk 2, no bos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    hf = Tokenizer(models.WordLevel(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=T5_SPECIALS, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=hf, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def save_tiny_t5(folder: Path, texts: list[str], *, num_layers: int = 2, seed: int = 0) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` + ``config.json`` + ``model.safetensors``."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = tiny_tokenizer(texts)
    tok.save_pretrained(str(folder))
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=num_layers,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(str(folder))
    return folder


def save_sign_encoder(folder: Path, *, feature_dim: int, vocab_size: int = 12, seed: int = 0) -> Path:
    """A promoted transformer model folder (config.json + model.safetensors), as promote-best writes."""
    from safetensors.torch import save_file

    from signtune.config import ModelConfig
    from signtune.models import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=1, ff_mult=2, dropout=0.0)
    model = build_model(cfg, feature_dim=feature_dim, vocab_size=vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    meta = {
        "family": "transformer",
        "feature_dim": feature_dim,
        "vocab_size": vocab_size,
        "model": dataclasses.asdict(cfg),
    }
    (folder / "config.json").write_text(json.dumps(meta))
    return folder
