from __future__ import annotations

import pytest

from signtune.config import TrainConfig, apply_overrides, config_keys, flatten
from signtune.errors import ConfigError


def test_apply_overrides_sets_dotted_keys_and_keeps_the_rest() -> None:
    base = TrainConfig()
    cfg = apply_overrides(base, {"optim.lr": 3e-4, "model.num_encoder_layers": 3, "schedule.name": "linear"})
    assert cfg.optim.lr == 3e-4
    assert cfg.model.num_encoder_layers == 3
    assert cfg.schedule.name == "linear"
    assert cfg.optim.weight_decay == base.optim.weight_decay
    assert base.optim.lr == 1e-3  # frozen: the base is not changed


def test_flatten_round_trips() -> None:
    cfg = apply_overrides(TrainConfig(), {"model.dropout": 0.25})
    assert apply_overrides(TrainConfig(), flatten(cfg)) == cfg
    assert set(flatten(cfg)) == set(config_keys())


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"optim.lrr": 1.0}, "is not a config key"),
        ({"optim.lr": "1e-5"}, "write 1.0e-5"),
        ({"model.num_heads": 2.5}, "must be an integer"),
        ({"schedule.name": "step"}, "must be one of ['cosine', 'linear', 'constant']"),
        ({"run.amp": "yes"}, "must be true or false"),
    ],
)
def test_apply_overrides_rejects(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainConfig(), values, where="--set")
    assert fragment in str(info.value)
    assert "--set" in str(info.value)
