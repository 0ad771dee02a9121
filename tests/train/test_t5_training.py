"""The trainer with a tiny local T5: per-group learning rates, freezing and progressive unfreezing."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.models.tiny_t5 import save_sign_encoder, save_tiny_t5
from tests.train.conftest import toy_task

from signtune.config import (
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
from signtune.data.tokenizer import load_pretrained_tokenizer
from signtune.data.types import TaskData, special_ids
from signtune.errors import ConfigError
from signtune.models import SignT5, build_model
from signtune.train.freeze import UnfreezeSchedule
from signtune.train.loop import TrainState, evaluate, fit, frozen_at_start
from signtune.train.optim import build_optimizer
from signtune.train.schedule import build_scheduler

FEATURE_DIM = 16
RATIOS = {"sign_encoder": 0.2, "projection": 3.0, "t5_encoder": 0.5, "t5_decoder": 0.8}
OPTIM = OptimConfig(
    lr=1e-3,
    encoder_lr_ratio=RATIOS["sign_encoder"],
    projection_lr_ratio=RATIOS["projection"],
    t5_encoder_lr_ratio=RATIOS["t5_encoder"],
    t5_decoder_lr_ratio=RATIOS["t5_decoder"],
)


@pytest.fixture(scope="module")
def t5_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TaskData]:
    """The toy task re-tokenized with a tiny T5's own tokenizer, the T5 and a sign encoder."""
    root = tmp_path_factory.mktemp("t5train")
    toy = toy_task(n_train=48, n_val=8, feature_dim=FEATURE_DIM)
    t5_dir = save_tiny_t5(root / "t5", toy.train.texts + toy.val.texts)
    sign_dir = save_sign_encoder(root / "promoted", feature_dim=FEATURE_DIM)
    tok = load_pretrained_tokenizer("t5", base_dir=root)

    def retok(split: Any) -> Any:
        return dataclasses.replace(split, token_ids=tok.encode_batch(split.texts))

    data = TaskData(train=retok(toy.train), val=retok(toy.val), test=None, tokenizer=tok, feature_dim=FEATURE_DIM)
    return t5_dir, sign_dir, data


def t5_cfg(t5_dir: Path, epochs: int = 2, *, optim: OptimConfig = OPTIM, **model: Any) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(batch_size=16, max_frames=64),
        model=ModelConfig(family="t5", pretrained=str(t5_dir), dropout=0.0, **model),
        optim=optim,
        schedule=ScheduleConfig(warmup_ratio=0.25),
        loss=LossConfig(label_smoothing=0.0),
        eval=EvalConfig(max_len=10, batch_size=8),
        run=RunConfig(epochs=epochs, device="cpu", seed=0),
    )


def snapshots(cfg: TrainConfig, data: TaskData) -> tuple[SignT5, list[TrainState], dict[str, torch.Tensor]]:
    """Fit, keeping a copy of the weights after every epoch; also the weights before training."""
    states: list[TrainState] = []

    def keep(state: TrainState) -> None:
        states.append(dataclasses.replace(state, model={k: v.detach().clone() for k, v in state.model.items()}))

    torch.manual_seed(cfg.run.seed)  # fit seeds the same way, so this build starts from the same weights
    start = build_model(
        cfg.model,
        feature_dim=data.feature_dim,
        vocab_size=data.tokenizer.vocab_size,
        specials=special_ids(data.tokenizer),
    )
    initial = {k: v.detach().clone() for k, v in start.state_dict().items()}
    result = fit(cfg, data, on_epoch_end=keep)
    assert isinstance(result.model, SignT5)
    return result.model, states, initial


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


# --------------------------------------------------------------------- learning rates


def test_each_group_lr_is_base_times_its_ratio(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, sign_dir, data = t5_data
    cfg = t5_cfg(t5_dir, sign_encoder=str(sign_dir))
    model = build_model(cfg.model, feature_dim=FEATURE_DIM, vocab_size=data.tokenizer.vocab_size)
    optimizer = build_optimizer(model.named_groups(), cfg.optim, "cpu", include_frozen=True)
    expected = {name: 1e-3 * r for name, r in RATIOS.items()}
    expected |= {f"{name}.no_decay": lr for name, lr in expected.items()}
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(expected)

    # The schedule scales every group by the same factor, so the ratios hold at every step.
    scheduler = build_scheduler(optimizer, total_steps=8, warmup_ratio=0.5, name="cosine", min_lr_ratio=0.0)
    bases = []
    for _ in range(6):  # 4 warmup steps, then decay
        optimizer.step()
        scheduler.step()
        base = next(g["lr"] for g in optimizer.param_groups if g["name"] == "t5_decoder") / RATIOS["t5_decoder"]
        bases.append(base)
        assert {g["name"]: g["lr"] / base for g in optimizer.param_groups} == pytest.approx(
            {name: lr / 1e-3 for name, lr in expected.items()}
        )
    assert bases == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), 5e-4])


def test_fit_trains_every_group_at_its_configured_lr(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, sign_dir, data = t5_data
    states: list[TrainState] = []
    result = fit(t5_cfg(t5_dir, epochs=1, sign_encoder=str(sign_dir)), data, on_epoch_end=states.append)
    groups = {g["name"]: g["initial_lr"] for g in states[0].optimizer["param_groups"]}
    assert groups == pytest.approx(
        {**{n: 1e-3 * r for n, r in RATIOS.items()}, **{f"{n}.no_decay": 1e-3 * r for n, r in RATIOS.items()}}
    )
    assert set(result.history[0]) >= {"train_loss", "val_bleu", "val_chrf"}
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))


# --------------------------------------------------------------------- freezing


def test_frozen_blocks_get_no_gradient_no_update_no_decay(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, _, data = t5_data
    cfg = t5_cfg(t5_dir, freeze_first_n_layers=1, unfreeze_at_epoch=2)
    torch.manual_seed(0)
    model = build_model(cfg.model, feature_dim=FEATURE_DIM, vocab_size=data.tokenizer.vocab_size)
    frozen = frozen_at_start(model, cfg.model)
    assert frozen == [model.t5.encoder.block[0]]  # type: ignore[union-attr]
    schedule = UnfreezeSchedule(frozen, freeze_first_n=1, unfreeze_at_epoch=2)
    # Weight decay is large, so a decayed-but-frozen parameter would visibly shrink.
    optim = dataclasses.replace(OPTIM, weight_decay=0.5)
    optimizer = build_optimizer(model.named_groups(), optim, "cpu", include_frozen=True)
    block0 = list(frozen[0].parameters())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in block0)  # in the optimizer from the start
    before = [p.detach().clone() for p in block0]

    def step() -> None:
        src = torch.randn(4, 6, FEATURE_DIM)
        mask = torch.ones(4, 6, dtype=torch.bool)
        model(src, mask, torch.tensor([[0, 3, 4, 5]] * 4)).logsumexp(-1).mean().backward()
        optimizer.step()

    schedule.step(1)
    step()
    assert all(p.grad is None for p in block0)
    assert all(torch.equal(p, b) for p, b in zip(block0, before, strict=True))
    assert all(p not in optimizer.state for p in block0)  # AdamW keeps no moments for them
    assert model.projection.weight.grad is not None and model.projection.weight in optimizer.state
    optimizer.zero_grad(set_to_none=True)

    assert schedule.step(2)  # unfrozen: same optimizer, same groups
    step()
    assert all(p.grad is not None for p in block0)
    assert not all(torch.equal(p, b) for p, b in zip(block0, before, strict=True))
    assert all(int(optimizer.state[p]["step"]) == 1 for p in block0)  # fresh moments, bias-corrected from step 1


def test_frozen_layers_start_learning_at_unfreeze_at_epoch(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, _, data = t5_data
    _, states, initial = snapshots(t5_cfg(t5_dir, epochs=3, freeze_first_n_layers=1, unfreeze_at_epoch=3), data)
    after1, after2, after3 = (s.model for s in states)
    assert not changed(initial, after1, "t5.encoder.block.0.")
    assert not changed(initial, after2, "t5.encoder.block.0.")
    assert changed(after2, after3, "t5.encoder.block.0.")
    assert changed(initial, after1, "t5.encoder.block.1.")
    assert changed(initial, after1, "projection.")
    assert changed(initial, after1, "t5.decoder.")


def test_freeze_encoder_freezes_sign_and_t5_encoders_not_the_projection(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, sign_dir, data = t5_data
    cfg = t5_cfg(t5_dir, epochs=2, sign_encoder=str(sign_dir), freeze_encoder=True)  # unfreeze_at_epoch 0: never
    model, states, initial = snapshots(cfg, data)
    last = states[-1].model
    for prefix in ("sign_encoder.", "t5.encoder.block.", "t5.encoder.final_layer_norm."):
        assert not changed(initial, last, prefix), prefix
    assert changed(initial, last, "projection.")
    assert changed(initial, last, "t5.decoder.")
    assert changed(initial, last, "t5.shared.")  # the shared embedding is the decoder's
    assert not any(p.requires_grad for m in model.encoder_modules() for p in m.parameters())


def test_too_many_frozen_layers_is_a_config_error(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, _, data = t5_data
    with pytest.raises(ConfigError, match=r"model\.freeze_first_n_layers: must be at most 2 .* but got 3"):
        fit(t5_cfg(t5_dir, freeze_first_n_layers=3), data)


def test_transformer_family_freezes_and_unfreezes_its_encoder_blocks(toy_data: TaskData) -> None:
    cfg = TrainConfig(
        data=DataConfig(batch_size=32, max_frames=64),
        model=ModelConfig(
            d_model=32,
            num_heads=4,
            num_encoder_layers=2,
            num_decoder_layers=1,
            ff_mult=2,
            dropout=0.0,
            max_positions=64,
            freeze_first_n_layers=1,
            unfreeze_at_epoch=2,
        ),
        eval=EvalConfig(max_len=4, batch_size=64),
        run=RunConfig(epochs=2, device="cpu"),
    )
    states: list[TrainState] = []

    def keep(state: TrainState) -> None:
        states.append(dataclasses.replace(state, model={k: v.detach().clone() for k, v in state.model.items()}))

    torch.manual_seed(0)
    initial = build_model(
        cfg.model, feature_dim=toy_data.feature_dim, vocab_size=toy_data.tokenizer.vocab_size
    ).state_dict()
    fit(cfg, toy_data, on_epoch_end=keep)
    assert not changed(initial, states[0].model, "encoder_blocks.0.")
    assert changed(initial, states[0].model, "encoder_blocks.1.")
    assert changed(states[0].model, states[1].model, "encoder_blocks.0.")


# --------------------------------------------------------------------- decoding


def test_evaluate_decodes_with_the_t5s_own_ids(t5_data: tuple[Path, Path, TaskData]) -> None:
    t5_dir, _, data = t5_data
    result = fit(t5_cfg(t5_dir, epochs=1, optim=OptimConfig(lr=3e-3)), data)
    assert result.model is not None
    greedy, hyps = evaluate(
        result.model, data.val, data.tokenizer, EvalConfig(max_len=10, batch_size=3), torch.device("cpu")
    )
    assert greedy["bleu"] == pytest.approx(result.history[-1]["val_bleu"])
    _, beams = evaluate(
        result.model, data.val, data.tokenizer, EvalConfig(max_len=10, batch_size=3, beam_size=2), torch.device("cpu")
    )
    assert len(hyps) == len(beams) == len(data.val)
    assert all("</s>" not in h and "<pad>" not in h for h in hyps + beams)
