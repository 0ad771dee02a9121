from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

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
from signtune.data.types import Split, TaskData
from signtune.device import resolve_device
from signtune.errors import ConfigError, Diverged, StopTrial
from signtune.models import SignTransformer, build_model
from signtune.train.loop import FitResult, evaluate, fit, validation_max_len

KEYS = {"train_loss", "val_bleu", "val_chrf", "val_loss", "lr", "epoch_time_s", "eval_time_s"}


def toy_cfg(epochs: int = 2, *, batch_size: int = 16, dropout: float = 0.1, **optim: float) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(batch_size=batch_size, max_frames=64),
        model=ModelConfig(
            d_model=32,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=1,
            ff_mult=2,
            dropout=dropout,
            max_positions=64,
        ),
        optim=OptimConfig(**{"lr": 5e-3, **optim}),
        schedule=ScheduleConfig(warmup_ratio=0.05),
        loss=LossConfig(label_smoothing=0.0),
        eval=EvalConfig(max_len=12, batch_size=16),
        run=RunConfig(epochs=epochs, device="cpu", seed=0),
    )


def without_times(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in history]


@pytest.mark.usefixtures("toy_batching")
def test_fit_learns_the_toy_task(toy_data: TaskData) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    cfg = toy_cfg(epochs=8, batch_size=8, dropout=0.0)
    result = fit(cfg, toy_data, report=lambda e, m: calls.append((e, m)))

    assert [e for e, _ in calls] == list(range(1, 9))
    assert all(set(m) == KEYS for _, m in calls)
    losses = [m["train_loss"] for _, m in calls]
    assert losses[-1] < 0.5 * losses[0]
    val_losses = [m["val_loss"] for _, m in calls]  # teacher-forced, no smoothing: falls as BLEU rises
    assert val_losses[-1] < 0.5 * val_losses[0] and all(v > 0 for v in val_losses)
    assert result.best["val_bleu"] > calls[0][1]["val_bleu"] + 15
    assert result.best["val_bleu"] == max(m["val_bleu"] for _, m in calls)
    assert result.best == result.history[int(result.best["epoch"]) - 1]
    assert result.epochs_run == 8
    assert [h["epoch"] for h in result.history] == list(range(1, 9))
    assert result.history[0]["lr"] > result.history[-1]["lr"]
    assert isinstance(result.model, SignTransformer)
    assert result.n_params == sum(p.numel() for p in result.model.parameters())
    assert result.device == "cpu"
    assert "tok:13a" in result.bleu_signature
    assert result.wall_time_s > 0


@pytest.mark.usefixtures("toy_batching")
def test_same_seed_same_history(toy_data: TaskData) -> None:
    a = fit(toy_cfg(epochs=2), toy_data)
    b = fit(toy_cfg(epochs=2), toy_data)
    assert without_times(a.history) == without_times(b.history)
    c = fit(dataclasses.replace(toy_cfg(epochs=2), run=RunConfig(epochs=2, seed=1)), toy_data)
    assert without_times(c.history) != without_times(a.history)


@pytest.mark.usefixtures("toy_batching")
def test_report_raising_stop_trial_ends_training(toy_data: TaskData) -> None:
    seen: list[int] = []

    def report(epoch: int, metrics: dict[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise StopTrial("pruned", f"at epoch {epoch}")

    with pytest.raises(StopTrial, match="pruned"):
        fit(toy_cfg(epochs=5), toy_data, report=report)
    assert seen == [1, 2]


@pytest.mark.usefixtures("toy_batching")
def test_should_stop_ends_training_with_a_result(toy_data: TaskData) -> None:
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) == 2

    result = fit(toy_cfg(epochs=5), toy_data, should_stop=should_stop)
    assert isinstance(result, FitResult)
    assert result.epochs_run == 2
    assert len(result.history) == 2


@pytest.mark.usefixtures("toy_batching")
def test_huge_lr_diverges(toy_data: TaskData) -> None:
    with pytest.raises(Diverged, match="train loss nan at epoch 1") as info:
        fit(toy_cfg(epochs=2, lr=1e4, grad_clip=0.0), toy_data)
    assert info.value.reason == "diverged"


@pytest.mark.usefixtures("toy_batching")
def test_nan_features_diverge_before_evaluation(toy_data: TaskData) -> None:
    bad = [f.copy() for f in toy_data.train.features]
    bad[0][0, 0] = np.nan
    data = dataclasses.replace(toy_data, train=dataclasses.replace(toy_data.train, features=bad))
    reports: list[int] = []
    with pytest.raises(Diverged, match="at epoch 1"):
        fit(toy_cfg(epochs=2), data, report=lambda e, m: reports.append(e))
    assert reports == []


@pytest.mark.usefixtures("toy_batching")
def test_evaluate_returns_hypotheses_in_split_order(toy_data: TaskData) -> None:
    result = fit(toy_cfg(epochs=3), toy_data)
    model = result.model
    assert isinstance(model, SignTransformer)
    device = torch.device("cpu")
    one_by_one, hyps_a = evaluate(model, toy_data.val, toy_data.tokenizer, EvalConfig(max_len=12, batch_size=1), device)
    batched, hyps_b = evaluate(model, toy_data.val, toy_data.tokenizer, EvalConfig(max_len=12, batch_size=7), device)
    assert hyps_a == hyps_b
    assert one_by_one["bleu"] == pytest.approx(batched["bleu"])
    assert batched["bleu"] == pytest.approx(result.history[-1]["val_bleu"])
    beam, hyps_c = evaluate(
        model,
        toy_data.val,
        toy_data.tokenizer,
        EvalConfig(max_len=12, batch_size=7, beam_size=3),
        device,
    )
    assert len(hyps_c) == len(toy_data.val)
    assert isinstance(beam["bleu"], float) and math.isfinite(beam["bleu"])


def test_evaluate_crops_to_max_frames(toy_data: TaskData) -> None:
    data = toy_data
    vocab = data.tokenizer.vocab_size
    model = build_model(toy_cfg().model, feature_dim=data.feature_dim, vocab_size=vocab)
    long_split = Split(
        "val",
        data.val.ids,
        data.val.texts,
        [np.concatenate([f] * 20) for f in data.val.features],
        data.val.token_ids,
    )
    cfg = EvalConfig(max_len=4, batch_size=4)
    with pytest.raises(ValueError, match="max_positions"):
        evaluate(model, long_split, data.tokenizer, cfg, torch.device("cpu"))
    _, hyps = evaluate(model, long_split, data.tokenizer, cfg, torch.device("cpu"), max_frames=64)
    assert len(hyps) == len(data.val)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match=r"run\.device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_fit_with_the_real_batcher(toy_data: TaskData) -> None:
    """Runs against ``signtune.data.batching`` once the data package has it."""
    batching = pytest.importorskip("signtune.data.batching")
    assert callable(batching.make_batches)
    result = fit(toy_cfg(epochs=1), toy_data)
    assert set(result.history[0]) == KEYS | {"epoch"}
    assert math.isfinite(result.history[0]["train_loss"])


def _split_with_targets(lengths: list[int]) -> Split:
    return Split(
        "train",
        [f"s{i}" for i in range(len(lengths))],
        ["x"] * len(lengths),
        [np.zeros((4, 2), dtype=np.float32)] * len(lengths),
        [[5] * n for n in lengths],
    )


@pytest.mark.parametrize(
    ("lengths", "max_len", "expected"),
    [
        ([3, 13], 32, 18),  # 13 tokens + 4 spare + EOS
        ([3, 13], 10, 10),  # eval.max_len stays the hard cap
        ([40], 128, 51),  # 40 + a quarter (10) + EOS
        ([], 32, 32),  # no targets: nothing to go by
    ],
)
def test_validation_max_len_follows_the_training_targets(lengths: list[int], max_len: int, expected: int) -> None:
    assert validation_max_len(EvalConfig(max_len=max_len), _split_with_targets(lengths)) == expected


@pytest.mark.usefixtures("toy_batching")
def test_fit_validates_at_the_capped_length_and_tests_keep_max_len(
    toy_data: TaskData, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signtune.train.loop as loop

    seen: list[int] = []
    real = loop.evaluate

    def spy(model, split, tokenizer, cfg, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(cfg.max_len)
        return real(model, split, tokenizer, cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", spy)
    cfg = dataclasses.replace(toy_cfg(epochs=2), eval=EvalConfig(max_len=60, batch_size=16))
    longest = max(len(t) for t in toy_data.train.token_ids)
    fit(cfg, toy_data)
    assert seen == [longest + max(4, longest // 4) + 1] * 2 and seen[0] < 60
