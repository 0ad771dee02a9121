from __future__ import annotations

import dataclasses

import pytest
import torch

from signtune.config import ModelConfig
from signtune.errors import ConfigError
from signtune.models import build_model
from signtune.models.transformer import SignTransformer

B, T, L, D, V = 3, 10, 6, 8, 17


def tiny(**overrides: object) -> SignTransformer:
    args: dict[str, object] = dict(
        feature_dim=D,
        vocab_size=V,
        d_model=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        ff_mult=2,
        dropout=0.0,
        max_positions=64,
    )
    args.update(overrides)
    torch.manual_seed(0)
    return SignTransformer(**args).eval()  # type: ignore[arg-type]


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    tgt = torch.randint(4, V, (B, L), generator=g)
    tgt[:, 0] = 1
    return src, mask, tgt


def test_forward_shape() -> None:
    src, mask, tgt = inputs()
    assert tiny()(src, mask, tgt).shape == (B, L, V)


def test_groups_partition_every_parameter_once() -> None:
    model = tiny()
    groups = model.named_groups()
    assert set(groups) == {"encoder", "decoder"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    enc = {id(p) for p in groups["encoder"]}
    assert id(model.input_proj.weight) in enc
    assert {id(p) for p in model.encoder_norm.parameters()} <= enc
    assert id(model.tgt_embed.weight) in {id(p) for p in groups["decoder"]}
    assert model.encoder_parameters() == groups["encoder"]
    assert model.decoder_parameters() == groups["decoder"]


def test_output_projection_is_tied_to_embedding() -> None:
    model = tiny()
    src, mask, tgt = inputs()
    model(src, mask, tgt).sum().backward()
    # The output projection is the embedding matrix, so every row gets a gradient.
    assert model.tgt_embed.weight.grad is not None
    assert bool((model.tgt_embed.weight.grad.abs().sum(-1) > 0).all())


def test_padding_frames_do_not_change_the_output() -> None:
    model = tiny()
    src, mask, tgt = inputs()
    out = model(src, mask, tgt)
    noisy = src.clone()
    noisy[~mask] = 1e3  # garbage in the padded frames
    assert torch.allclose(model(noisy, mask, tgt), out, atol=1e-5)


def test_decoder_is_causal() -> None:
    model = tiny()
    src, mask, tgt = inputs()
    out = model(src, mask, tgt)
    changed = tgt.clone()
    changed[:, 4:] = 5
    assert torch.allclose(model(src, mask, changed)[:, :4], out[:, :4], atol=1e-5)


def test_incremental_steps_match_full_forward() -> None:
    model = tiny()
    src, mask, tgt = inputs()
    full = model(src, mask, tgt)
    cache = model.start_decoding(model.encode(src, mask), mask, max_len=L)
    steps = torch.stack([model.decode_step(tgt[:, i], cache) for i in range(L)], dim=1)
    assert torch.allclose(steps, full, atol=1e-5)
    with pytest.raises(ValueError, match="cache is full"):
        model.decode_step(tgt[:, 0], cache)


def test_cache_reorder_selects_rows() -> None:
    model = tiny()
    src, mask, tgt = inputs()
    cache = model.start_decoding(model.encode(src, mask), mask, max_len=L)
    model.decode_step(tgt[:, 0], cache)
    index = torch.tensor([2, 0])
    cache.reorder(index)
    nxt = model.decode_step(tgt[index, 1], cache)
    assert torch.allclose(nxt, model(src[index], mask[index], tgt[index, :2])[:, 1], atol=1e-5)


def test_too_long_input_names_the_setting() -> None:
    model = tiny(max_positions=8)
    src, mask, tgt = inputs()
    with pytest.raises(ValueError, match="max_positions"):
        model(src, mask, tgt)


def test_build_model_maps_config() -> None:
    cfg = ModelConfig(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=3)
    model = build_model(cfg, feature_dim=D, vocab_size=V)
    assert len(model.encoder_blocks) == 1
    assert len(model.decoder_blocks) == 3
    assert model.input_proj.in_features == D
    assert model.tgt_embed.num_embeddings == V


def test_build_model_rejects_heads_not_dividing_width() -> None:
    cfg = dataclasses.replace(ModelConfig(), d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match=r"model\.d_model.*model\.num_heads") as info:
        build_model(cfg, feature_dim=D, vocab_size=V)
    assert "d_model=30" in str(info.value)
    assert "num_heads=4" in str(info.value)


def test_build_model_reports_all_problems() -> None:
    cfg = dataclasses.replace(ModelConfig(), num_encoder_layers=0, dropout=1.5)
    with pytest.raises(ConfigError) as info:
        build_model(cfg, feature_dim=D, vocab_size=V)
    wheres = [p.where for p in info.value.problems]
    assert wheres == ["model.num_encoder_layers", "model.dropout"]
