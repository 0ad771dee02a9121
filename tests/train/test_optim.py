from __future__ import annotations

import pytest
import torch

from signtune.config import OptimConfig
from signtune.models.transformer import SignTransformer
from signtune.train.optim import build_optimizer, param_groups


def tiny() -> SignTransformer:
    return SignTransformer(
        feature_dim=8,
        vocab_size=20,
        d_model=32,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=1,
        ff_mult=2,
        dropout=0.0,
        max_positions=32,
    )


def test_group_lr_is_base_times_ratio() -> None:
    model = tiny()
    pgs = param_groups(model.named_groups(), lr=1e-3, ratios={"encoder": 0.1}, weight_decay=0.01)
    lrs = {g["name"]: g["lr"] for g in pgs}
    assert lrs == pytest.approx({"encoder": 1e-4, "encoder.no_decay": 1e-4, "decoder": 1e-3, "decoder.no_decay": 1e-3})


def test_every_trainable_parameter_in_exactly_one_group() -> None:
    model = tiny()
    model.input_norm.weight.requires_grad_(False)
    pgs = param_groups(model.named_groups(), lr=1.0, ratios={}, weight_decay=0.1)
    ids = [id(p) for g in pgs for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.input_norm.weight) not in ids


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = tiny()
    pgs = param_groups(model.named_groups(), lr=1.0, ratios={}, weight_decay=0.1)
    decay_of = {id(p): g["weight_decay"] for g in pgs for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim < 2 else 0.1
        assert decay_of[id(p)] == expected, name
    assert decay_of[id(model.encoder_norm.weight)] == 0.0
    assert decay_of[id(model.input_proj.bias)] == 0.0
    assert decay_of[id(model.input_proj.weight)] == 0.1


def test_bad_groups_are_rejected() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="both group"):
        param_groups({"a": [p], "b": [p]}, lr=1.0, ratios={}, weight_decay=0.0)
    with pytest.raises(ValueError, match="lr ratios name groups"):
        param_groups({"a": [p]}, lr=1.0, ratios={"encoder": 0.5}, weight_decay=0.0)


def test_build_optimizer_uses_config() -> None:
    model = tiny()
    cfg = OptimConfig(lr=2e-3, encoder_lr_ratio=0.5, weight_decay=0.05, beta1=0.8, beta2=0.9)
    opt = build_optimizer(model.named_groups(), cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["encoder"]["lr"] == pytest.approx(1e-3)
    assert by_name["decoder"]["lr"] == pytest.approx(2e-3)
    assert by_name["decoder"]["weight_decay"] == 0.05
    assert by_name["decoder"]["betas"] == (0.8, 0.9)
    assert by_name["decoder"]["foreach"] is True


def test_build_optimizer_for_groups_without_encoder() -> None:
    p = torch.nn.Parameter(torch.zeros(3, 3))
    opt = build_optimizer({"body": [p]}, OptimConfig(lr=0.1), "cpu")
    assert [g["lr"] for g in opt.param_groups] == [0.1]
