"""A pretrained Hugging Face T5 reading sign features, optionally behind a pretrained sign encoder.

frames ``(B, T, D)`` -> [sign encoder] -> linear projection to the T5's ``d_model`` -> T5
encoder (``inputs_embeds``) -> T5 decoder -> logits. This is the SSVP-SLT / YouTube-ASL recipe
with SignHiera features (D = 768).

Everything is read offline (``local_files_only=True``): the T5 from a folder written by
``save_pretrained`` (or a hub id already in the Hugging Face cache), weights from safetensors
only, and the sign encoder from a promoted model folder (``config.json`` + safetensors).
``transformers`` is imported when a T5 is built, not when this module is.

Size: past 400 lines because the T5 wrapper, the feature projection, the optional sign encoder
and their parameter groups are one model whose pieces are built and frozen together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from signtune.config import ModelConfig
from signtune.data.tokenizer import hf_cache_dir, local_hf_source
from signtune.data.types import SpecialIds
from signtune.errors import ConfigError, Problem, SigntuneError
from signtune.models.base import SignModel
from signtune.models.transformer import SignTransformer

WEIGHTS = "model.safetensors"
T5_TYPES = ("t5",)  # config.json model_type values T5ForConditionalGeneration loads (t5, t5-v1_1, flan-t5)
SAVE_T5 = (
    "on a machine with internet run `T5ForConditionalGeneration.from_pretrained('t5-base').save_pretrained(DIR)` "
    "and `AutoTokenizer.from_pretrained('t5-base').save_pretrained(DIR)`, copy DIR here and set "
    "model.pretrained and data.tokenizer to it (relative paths are relative to the study folder)"
)
PROMOTED = "point it at a folder written by `study promote-best` for a transformer-family study (its promoted/)"


class SignEncoder(nn.Module):
    """The encoder half of a trained ``SignTransformer``; its decoder is left behind.

    Holds the source's own modules (same weights), so its state-dict keys are the source's
    encoder keys.
    """

    positions: Tensor

    def __init__(self, source: SignTransformer) -> None:
        super().__init__()
        self.d_model = source.d_model
        self.input_proj = source.input_proj
        self.input_norm = source.input_norm
        self.encoder_blocks = source.encoder_blocks
        self.encoder_norm = source.encoder_norm
        self.dropout = source.dropout
        self.register_buffer("positions", source.positions, persistent=False)

    def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """``SignTransformer.encode``: frames ``(B, T, D)`` -> ``(B, T, d_model)``."""
        if src.shape[1] > len(self.positions):
            raise ValueError(
                f"{src.shape[1]} frames are more than the sign encoder's max_positions={len(self.positions)}; "
                "lower data.max_frames"
            )
        x = self.dropout(self.input_norm(self.input_proj(src)) + self.positions[: src.shape[1]])
        mask = src_mask[:, None, None, :]
        for block in self.encoder_blocks:
            x = block(x, mask)
        out: Tensor = self.encoder_norm(x)
        return out


@dataclass
class T5DecoderCache:
    """Incremental-decoding state over the T5's own KV cache (``EncoderDecoderCache``).

    Attributes:
        past: the T5's cache; its cross-attention half is filled on the first step.
        memory: the encoder output ``(B, T, d)``, one row per hypothesis.
        memory_mask: ``(B, T)`` long, 1 on real frames.
        capacity: the most steps (``max_len``).
        length: steps decoded so far.
    """

    past: Any
    memory: Tensor
    memory_mask: Tensor
    capacity: int
    length: int = 0

    def reorder(self, index: Tensor, *, memory: bool = True) -> None:
        """Keep rows ``index``; ``memory=False`` moves only the self-attention cache (beams of one
        sentence share their memory, so its cross-attention K/V need not move)."""
        self.past.self_attention_cache.reorder_cache(index)
        if memory:
            self.past.cross_attention_cache.reorder_cache(index)
            self.memory = self.memory.index_select(0, index)
            self.memory_mask = self.memory_mask.index_select(0, index)


class SignT5(SignModel):
    """Frames -> [sign encoder] -> projection -> T5 encoder-decoder -> logits ``(B, L, V)``.

    Parameter groups: ``sign_encoder`` (when there is one), ``projection``, ``t5_encoder``
    (its blocks and final norm) and ``t5_decoder`` (the rest: decoder, shared embedding, LM
    head; the T5 encoder's token embedding is the shared one and unused, since the encoder
    reads ``inputs_embeds``).

    Args:
        t5: a ``transformers.T5ForConditionalGeneration``.
        feature_dim: D, the size of one feature frame.
        sign_encoder: a pretrained sign encoder in front of the projection, or None.
        sign_meta: the sign encoder's shape (``architecture()`` records it), or None.
    """

    def __init__(
        self,
        t5: Any,
        *,
        feature_dim: int,
        sign_encoder: SignEncoder | None = None,
        sign_meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sign_encoder = sign_encoder
        self.projection = nn.Linear(
            sign_encoder.d_model if sign_encoder is not None else feature_dim, t5.config.d_model
        )
        self.t5 = t5
        self.feature_dim = feature_dim
        self.sign_meta = sign_meta

    # ----------------------------------------------------------------- groups and freezing

    def _t5_encoder_parts(self) -> list[nn.Module]:
        return [*self.t5.encoder.block, self.t5.encoder.final_layer_norm]

    def named_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {}
        if self.sign_encoder is not None:
            groups["sign_encoder"] = list(self.sign_encoder.parameters())
        groups["projection"] = list(self.projection.parameters())
        encoder = [p for m in self._t5_encoder_parts() for p in m.parameters()]
        ids = {id(p) for p in encoder}
        groups["t5_encoder"] = encoder
        groups["t5_decoder"] = [p for p in self.t5.parameters() if id(p) not in ids]
        return groups

    def encoder_layers(self) -> list[nn.Module]:
        """The sign encoder's blocks (if any), then the T5 encoder's blocks."""
        sign = list(self.sign_encoder.encoder_blocks) if self.sign_encoder is not None else []
        return [*sign, *self.t5.encoder.block]

    def encoder_modules(self) -> list[nn.Module]:
        """The sign encoder and the T5 encoder; not the projection, not the shared embedding."""
        sign = [self.sign_encoder] if self.sign_encoder is not None else []
        return [*sign, *self._t5_encoder_parts()]

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this model without its source files (weights aside)."""
        return {"t5": json.loads(self.t5.config.to_json_string()), "sign_encoder": self.sign_meta}

    # ----------------------------------------------------------------- full sequences

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        x = self.sign_encoder(src, src_mask) if self.sign_encoder is not None else src
        # fp32 in, as token embeddings would be: under autocast the projection gives bf16, which
        # would carry the encoder's whole residual stream in bf16.
        out = self.t5.encoder(inputs_embeds=self.projection(x).float(), attention_mask=src_mask.long())
        memory: Tensor = out.last_hidden_state
        return memory

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        out = self.t5(
            encoder_outputs=(self.encode(src, src_mask),),
            attention_mask=src_mask.long(),
            decoder_input_ids=tgt_in,
            use_cache=False,
        )
        logits: Tensor = out.logits
        return logits

    # ----------------------------------------------------------------- incremental decoding

    def start_decoding(self, memory: Tensor, src_mask: Tensor, max_len: int) -> T5DecoderCache:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        past = EncoderDecoderCache(DynamicCache(), DynamicCache())
        return T5DecoderCache(past=past, memory=memory, memory_mask=src_mask.long(), capacity=max_len)

    def decode_step(self, tokens: Tensor, cache: T5DecoderCache) -> Tensor:
        if cache.length >= cache.capacity:
            raise ValueError(f"decoder cache is full after {cache.capacity} steps")
        out = self.t5(
            encoder_outputs=(cache.memory,),
            attention_mask=cache.memory_mask,
            decoder_input_ids=tokens[:, None],
            past_key_values=cache.past,
            use_cache=True,
        )
        cache.past = out.past_key_values
        cache.length += 1
        logits: Tensor = out.logits[:, -1]
        return logits


# --------------------------------------------------------------------- building


def _folder(name: str, base_dir: Path | None) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else ((base_dir if base_dir is not None else Path.cwd()) / path).absolute()


def check_files(
    cfg: ModelConfig, *, tokenizer: str, base_dir: Path | None, max_frames: int | None = None
) -> list[Problem]:
    """Cheap checks of the files a t5 model needs (no weights are read), for ``study run``'s start.

    ``max_frames`` (``data.max_frames``) must fit the sign encoder's positions, when there is one.
    """
    problems: list[Problem] = []
    if cfg.pretrained:  # empty: ``build_model``'s own check says so
        source, folder = local_hf_source(cfg.pretrained, base_dir, "config.json")
        if source is None:
            problems.append(_not_found(cfg.pretrained, folder))
        elif Path(source).is_dir() and not _has_safetensors(Path(source)):
            problems.append(_no_safetensors(Path(source)))
    if not tokenizer:
        problems.append(
            Problem(
                "data.tokenizer",
                "is empty, but model.family t5 needs the T5's own vocabulary",
                "set data.tokenizer to the T5's folder (the one model.pretrained names; it holds tokenizer.json)",
            )
        )
    if cfg.sign_encoder:
        folder = _folder(cfg.sign_encoder, base_dir)
        missing = [f for f in ("config.json", WEIGHTS) if not (folder / f).is_file()]
        if missing:
            problems.append(Problem("model.sign_encoder", f"{folder} has no {' or '.join(missing)}", PROMOTED))
        elif max_frames is not None:
            try:
                positions = int(json.loads((folder / "config.json").read_text())["model"]["max_positions"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(Problem("model.sign_encoder", f"{folder}/config.json is unreadable ({exc})", PROMOTED))
            else:
                if max_frames > positions:
                    problems.append(
                        Problem(
                            "data.max_frames / model.sign_encoder",
                            f"clips of up to {max_frames} frames (data.max_frames) do not fit the sign encoder "
                            f"in {folder}, which has {positions} positions",
                            f"set data.max_frames to {positions} or less, or use a sign encoder with more positions",
                        )
                    )
    return problems


def _not_found(name: str, folder: Path) -> Problem:
    return Problem(
        "model.pretrained",
        f"{name!r} is neither a folder with config.json (looked in {folder}) nor a model in the Hugging Face "
        f"cache ({hf_cache_dir()}); nothing is downloaded",
        SAVE_T5,
    )


def _has_safetensors(folder: Path) -> bool:
    return any((folder / f).is_file() for f in (WEIGHTS, WEIGHTS + ".index.json"))  # one file, or shards


def _no_safetensors(folder: Path) -> Problem:
    return Problem(
        "model.pretrained",
        f"{folder} has config.json but no {WEIGHTS} (pickled pytorch_model.bin files are not read)",
        "load it once and save it again with `model.save_pretrained(DIR)`, which writes safetensors",
    )


def load_t5(
    cfg: ModelConfig,
    *,
    feature_dim: int,
    vocab_size: int,
    specials: SpecialIds | None,
    base_dir: Path | None,
) -> SignT5:
    """Load the pretrained T5 (and sign encoder) that ``cfg`` names, offline.

    Args:
        cfg: the ``model`` section; ``cfg.dropout`` becomes the T5's ``dropout_rate``.
        feature_dim: D.
        vocab_size: the tokenizer's size; must fit the T5's embedding.
        specials: the tokenizer's special ids, checked against the T5's pad, decoder start and
            eos (None skips the check).
        base_dir: the study directory (relative paths start there).

    Raises:
        ConfigError: a file is missing or unreadable, or the tokenizer does not fit the T5.
    """
    source, folder = local_hf_source(cfg.pretrained, base_dir, "config.json")
    if source is None:
        raise ConfigError(_not_found(cfg.pretrained, folder))
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
        if config.model_type not in T5_TYPES:
            raise ConfigError(
                Problem(
                    "model.pretrained",
                    f"{source} is a {config.model_type!r} model, not a T5 (model_type one of {list(T5_TYPES)})",
                    "point it at a T5 checkpoint (t5-base, google/t5-v1_1-base, flan-t5...)",
                )
            )
        t5 = transformers.T5ForConditionalGeneration.from_pretrained(
            source, local_files_only=True, use_safetensors=True, dtype=torch.float32, dropout_rate=cfg.dropout
        )
    except SigntuneError:
        raise
    except Exception as exc:  # OSError, ValueError, safetensors' errors, size mismatches
        if Path(source).is_dir() and not _has_safetensors(Path(source)):
            raise ConfigError(_no_safetensors(Path(source))) from None
        raise ConfigError(Problem("model.pretrained", f"cannot load a T5 from {source} ({exc})", SAVE_T5)) from None
    _check_vocab(t5.config, vocab_size, specials, source)
    sign, meta = (None, None)
    if cfg.sign_encoder:
        sign, meta = load_sign_encoder(cfg.sign_encoder, base_dir=base_dir, feature_dim=feature_dim)
    return SignT5(t5, feature_dim=feature_dim, sign_encoder=sign, sign_meta=meta)


def _check_vocab(config: Any, vocab_size: int, specials: SpecialIds | None, source: str) -> None:
    fix = "set data.tokenizer to the T5's own tokenizer folder (usually the same folder as model.pretrained)"
    if vocab_size > config.vocab_size:
        raise ConfigError(
            Problem(
                "data.tokenizer",
                f"has {vocab_size} tokens, but the T5 at {source} embeds only {config.vocab_size}",
                fix,
            )
        )
    if specials is None:
        return
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    if specials.pad != config.pad_token_id or specials.bos != config.decoder_start_token_id or specials.eos not in eos:
        raise ConfigError(
            Problem(
                "data.tokenizer",
                f"has pad/start/eos ids {specials.pad}/{specials.bos}/{specials.eos}, but the T5 at {source} uses "
                f"{config.pad_token_id}/{config.decoder_start_token_id}/{config.eos_token_id}",
                fix,
            )
        )


def _sign_transformer(meta: dict[str, Any]) -> SignTransformer:
    m = meta["model"]
    return SignTransformer(
        feature_dim=int(meta["feature_dim"]),
        vocab_size=int(meta["vocab_size"]),
        d_model=int(m["d_model"]),
        num_heads=int(m["num_heads"]),
        num_encoder_layers=int(m["num_encoder_layers"]),
        num_decoder_layers=int(m["num_decoder_layers"]),
        ff_mult=int(m["ff_mult"]),
        dropout=float(m["dropout"]),
        max_positions=int(m["max_positions"]),
    )


def load_sign_encoder(name: str, *, base_dir: Path | None, feature_dim: int) -> tuple[SignEncoder, dict[str, Any]]:
    """The encoder of a promoted transformer model (``config.json`` + safetensors; nothing unpickled).

    Returns:
        The encoder and its shape record ``{"model", "feature_dim", "vocab_size"}``.

    Raises:
        ConfigError: the folder is missing, not a transformer, or trained on other features.
    """
    from safetensors.torch import load_file

    folder = _folder(name, base_dir)
    missing = [f for f in ("config.json", WEIGHTS) if not (folder / f).is_file()]
    if missing:
        raise ConfigError(Problem("model.sign_encoder", f"{folder} has no {' or '.join(missing)}", PROMOTED))
    try:
        meta = json.loads((folder / "config.json").read_text())
        family = meta.get("family", meta.get("model", {}).get("family"))
        if family != "transformer":
            raise ConfigError(
                Problem("model.sign_encoder", f"{folder} holds a {family!r} model, not a transformer", PROMOTED)
            )
        if int(meta["feature_dim"]) != feature_dim:
            raise ConfigError(
                Problem(
                    "model.sign_encoder",
                    f"{folder} was trained on {meta['feature_dim']}-d features, but data.feature_dim is {feature_dim}",
                    "use a sign encoder trained on the same features",
                )
            )
        shape = {"model": meta["model"], "feature_dim": int(meta["feature_dim"]), "vocab_size": int(meta["vocab_size"])}
        net = _sign_transformer(shape)
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    except SigntuneError:
        raise
    except Exception as exc:  # a damaged or mismatched file (safetensors' errors included)
        raise ConfigError(
            Problem(
                "model.sign_encoder",
                f"{folder} is not a readable promoted model ({type(exc).__name__}: {exc})",
                PROMOTED,
            )
        ) from None
    return SignEncoder(net), shape


def from_architecture(arch: dict[str, Any], *, feature_dim: int) -> SignT5:
    """Rebuild a ``SignT5`` from ``architecture()`` with fresh weights (load a state dict next)."""
    import transformers

    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config.from_dict(arch["t5"]))
    meta = arch.get("sign_encoder")
    sign = SignEncoder(_sign_transformer(meta)) if meta else None
    return SignT5(t5, feature_dim=feature_dim, sign_encoder=sign, sign_meta=meta)


def architecture(cfg: ModelConfig, *, base_dir: Path | None) -> dict[str, Any]:
    """``SignT5.architecture()`` read from the files ``cfg`` names (no weights are loaded)."""
    source, folder = local_hf_source(cfg.pretrained, base_dir, "config.json")
    if source is None:
        raise ConfigError(_not_found(cfg.pretrained, folder))
    import transformers

    config = transformers.T5Config.from_pretrained(source, local_files_only=True, dropout_rate=cfg.dropout)
    meta = None
    if cfg.sign_encoder:
        raw = json.loads((_folder(cfg.sign_encoder, base_dir) / "config.json").read_text())
        meta = {"model": raw["model"], "feature_dim": int(raw["feature_dim"]), "vocab_size": int(raw["vocab_size"])}
    return {"t5": json.loads(config.to_json_string()), "sign_encoder": meta}
