"""The training loop. ``fit`` holds all of it and reads top to bottom; helpers are small.

Speed notes, since this loop is benchmarked: batches arrive as padded tensors (no per-sample
Python work in the step), attention is SDPA, the loss is summed on the device and read once
per epoch (no host sync per step), gradients are freed with ``set_to_none=True``, AdamW is
foreach (CPU) or fused (CUDA), and bf16 autocast is used on CUDA only.

Size: a little past 400 lines by design: ``fit`` holds the whole loop so it reads top to
bottom (the nanoGPT habit), and its helpers stay beside it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from signtune.config import EvalConfig, ModelConfig, TrainConfig
from signtune.data.types import Split, TaskData, TextTokenizer, special_ids
from signtune.device import resolve_device
from signtune.errors import ConfigError, DataError, Diverged, Problem
from signtune.models import SignModel, build_model
from signtune.train.decode import IncrementalDecoder, beam_search, greedy_decode
from signtune.train.freeze import UnfreezeSchedule
from signtune.train.metrics import corpus_scores
from signtune.train.optim import build_optimizer
from signtune.train.schedule import build_scheduler

# A diverged run is caught mid-epoch by peeking at the summed loss every this many steps:
# one host sync per 100 steps, against finishing a long epoch of NaN updates.
DIVERGENCE_CHECK_EVERY = 100


@dataclass
class FitResult:
    """What one training run produced.

    Attributes:
        best: the metrics of the epoch with the highest ``val_bleu``, including ``epoch``.
        history: the metrics of every epoch run, in order, each including ``epoch``.
        epochs_run: epochs completed (fewer than ``run.epochs`` if ``should_stop`` said so).
        n_params: trainable and frozen parameters of the model.
        device: where it trained, e.g. ``cpu`` or ``cuda:0``.
        wall_time_s: seconds from the start of ``fit`` to its return.
        bleu_signature: sacrebleu's BLEU signature of the validation scores.
        model: the trained model (last epoch's weights); not compared.
    """

    best: dict[str, float]
    history: list[dict[str, float]]
    epochs_run: int
    n_params: int
    device: str
    wall_time_s: float
    bleu_signature: str
    model: nn.Module | None = field(default=None, compare=False, repr=False)


@dataclass
class TrainState:
    """Everything needed to continue training after ``epoch`` (a checkpoint's content)."""

    epoch: int
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    history: list[dict[str, float]]
    best: dict[str, float]
    # One state per visible GPU: dropout on CUDA draws from these, not from ``rng``.
    cuda_rng: list[torch.Tensor] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA when ``amp``; nothing on CPU (bf16 there is slower, not faster)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def validation_max_len(cfg: EvalConfig, train: Split) -> int:
    """Decoding length for per-epoch validation: ``cfg.max_len``, or less for short targets.

    The longest training target plus a quarter of it (at least 4 tokens) plus EOS, capped by
    ``cfg.max_len``: past that length a model writes what it was never trained to write, so
    the tokens would only cost time (an undertrained model that never emits EOS decodes to
    the cap every epoch).
    """
    longest = max((len(ids) for ids in train.token_ids), default=0)
    if longest == 0:
        return cfg.max_len
    return min(cfg.max_len, longest + max(4, longest // 4) + 1)


def frozen_at_start(model: SignModel, cfg: ModelConfig) -> list[nn.Module]:
    """The modules ``model.freeze_encoder`` / ``model.freeze_first_n_layers`` freeze.

    Raises:
        ConfigError: ``freeze_first_n_layers`` is more than the model's encoder blocks.
    """
    if cfg.freeze_encoder:
        return model.encoder_modules()
    layers = model.encoder_layers()
    if cfg.freeze_first_n_layers > len(layers):
        raise ConfigError(
            Problem(
                "model.freeze_first_n_layers",
                f"must be at most {len(layers)} (this model's encoder blocks), but got {cfg.freeze_first_n_layers}",
                f"use 0 to {len(layers)}, or model.freeze_encoder: true",
            )
        )
    return layers[: cfg.freeze_first_n_layers]


def fit(
    cfg: TrainConfig,
    data: TaskData,
    *,
    report: Callable[[int, dict[str, float]], None] | None = None,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: TrainState | None = None,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    base_dir: Path | None = None,
) -> FitResult:
    """Train the model ``cfg.model.family`` names on ``data.train``, scoring ``data.val`` after each epoch.

    Encoder blocks frozen by ``cfg.model`` sit in the optimizer from the start (no gradient,
    so AdamW skips them: no update, no weight decay, no state) and train at their group's
    scheduled lr from the start of epoch ``cfg.model.unfreeze_at_epoch``.

    Args:
        cfg: the whole config.
        data: the splits and the tokenizer.
        report: called after each epoch as ``report(epoch, metrics)`` (epochs count from 1)
            with ``train_loss``, ``val_bleu``, ``val_chrf``, ``val_loss`` (teacher-forced
            token NLL on the val split, no label smoothing: a signal that moves from the first
            epoch, when greedy BLEU is still 0), ``lr``, ``epoch_time_s`` (training only) and
            ``eval_time_s`` (decoding and the loss). It may raise ``StopTrial`` (e.g. pruned) to end the run;
            the exception propagates.
        device: overrides ``cfg.run.device``.
        should_stop: asked after each epoch; True ends training early (the result is kept).
        resume: a state saved by ``on_epoch_end``: training goes on from the epoch after it,
            with the model, optimizer, scheduler and RNG states restored.
        on_epoch_end: called after each epoch (after ``report``) with the full training
            state, e.g. to write a checkpoint.
        base_dir: where relative model paths start (the study directory); None: the working
            directory.

    Returns:
        The best epoch's metrics, the history, and the trained model.

    Raises:
        Diverged: the training loss became NaN or infinite.
        StopTrial: raised by ``report``.
        ConfigError: an invalid model shape, device, freezing or pretrained model.
        DataError: the training split gives no batches.
    """
    # Imported here: the data package owns batching and must not be needed to import this.
    from signtune.data.batching import make_batches

    started = time.perf_counter()
    seed_everything(cfg.run.seed)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    device = device if device is not None else torch.device(resolve_device(cfg.run.device))
    amp = cfg.run.amp and device.type == "cuda"

    specials = special_ids(data.tokenizer)
    model = build_model(
        cfg.model,
        feature_dim=data.feature_dim,
        vocab_size=data.tokenizer.vocab_size,
        specials=specials,
        base_dir=base_dir,
    ).to(device)
    frozen = frozen_at_start(model, cfg.model)
    unfreeze = UnfreezeSchedule(
        frozen, freeze_first_n=len(frozen), unfreeze_at_epoch=cfg.model.unfreeze_at_epoch or None
    )
    optimizer = build_optimizer(model.named_groups(), cfg.optim, device, include_frozen=True)

    batches = make_batches(
        data.train,
        cfg.data.batch_size,
        shuffle=True,
        seed=cfg.run.seed + 1,
        max_frames=cfg.data.max_frames,
        specials=specials,
    )
    if not batches:
        raise DataError(Problem("data.train", "gives no batches (the split is empty)", "check data.subset"))
    # Length-aware batching may give a few more or fewer batches in later epochs; the
    # schedule then ends at min_lr a little early or stays there, which is harmless.
    accum = max(1, cfg.optim.grad_accum)
    total_steps = cfg.run.epochs * math.ceil(len(batches) / accum)
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_ratio=cfg.schedule.warmup_ratio,
        name=cfg.schedule.name,
        min_lr_ratio=cfg.schedule.min_lr_ratio,
    )

    val_cfg = dataclasses.replace(cfg.eval, max_len=validation_max_len(cfg.eval, data.train))
    # Fixed batches for the per-epoch validation loss (sorted by length, no shuffle).
    val_batches = make_batches(
        data.val, cfg.eval.batch_size, shuffle=False, seed=0, max_frames=cfg.data.max_frames, specials=specials
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    bleu_signature = ""
    step = 0
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        torch.set_rng_state(resume.rng)
        if resume.cuda_rng and torch.cuda.is_available() and len(resume.cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(resume.cuda_rng)
        history, best, step = list(resume.history), dict(resume.best), resume.step
        first_epoch = resume.epoch + 1
    for epoch in range(first_epoch, cfg.run.epochs + 1):
        epoch_started = time.perf_counter()
        if epoch > 1:
            batches = make_batches(
                data.train,
                cfg.data.batch_size,
                shuffle=True,
                seed=cfg.run.seed + epoch,
                max_frames=cfg.data.max_frames,
                specials=specials,
            )
        unfreeze.step(epoch)  # also on resume: a run resumed past the epoch starts unfrozen

        model.train()
        # Summed on the device: .item() is a host sync (on GPU it drains the launch queue),
        # so the loss is read once per epoch, not per step.
        loss_sum = torch.zeros((), device=device)
        for i, cpu_batch in enumerate(batches, start=1):
            batch = cpu_batch.to(device)
            with _autocast(device, amp):
                logits = model(batch.src, batch.src_mask, batch.tgt_in)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1),
                batch.tgt_out.flatten(),
                ignore_index=specials.pad,
                label_smoothing=cfg.loss.label_smoothing,
            )
            # With accumulation, gradients of `accum` micro-batches add up before one step.
            (loss / accum if accum > 1 else loss).backward()
            loss_sum += loss.detach()
            if i % DIVERGENCE_CHECK_EVERY == 0 and not bool(torch.isfinite(loss_sum)):
                raise Diverged(f"train loss {loss_sum.item()} at epoch {epoch}, step {step}")
            if i % accum and i != len(batches):
                continue
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, foreach=True)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        train_loss = (loss_sum / len(batches)).item()  # the epoch's one host sync
        if not math.isfinite(train_loss):
            raise Diverged(f"train loss {train_loss} at epoch {epoch}")
        epoch_time = time.perf_counter() - epoch_started

        # Validation uses greedy decoding whatever eval.beam_size says: it runs every epoch
        # of every trial, where beam search would cost several times more. Its length is
        # capped by the training targets' (validation_max_len).
        eval_started = time.perf_counter()
        scores, _ = evaluate(
            model,
            data.val,
            data.tokenizer,
            val_cfg,
            device,
            beam_size=1,
            amp=amp,
            max_frames=cfg.data.max_frames,
        )
        val_loss = teacher_forced_loss(model, val_batches, specials.pad, device, amp)
        eval_time = time.perf_counter() - eval_started
        bleu_signature = str(scores["bleu_signature"])

        metrics: dict[str, float] = {
            "train_loss": train_loss,
            "val_bleu": float(scores["bleu"]),
            "val_chrf": float(scores["chrf"]),
            "val_loss": val_loss,
            # The base lr (ratio-1 groups) of the epoch's last step.
            "lr": cfg.optim.lr * scheduler.lr_lambdas[0](step - 1),
            "epoch_time_s": epoch_time,
            "eval_time_s": eval_time,
        }
        history.append({"epoch": float(epoch), **metrics})
        if not best or metrics["val_bleu"] > best["val_bleu"]:
            best = history[-1]
        if report is not None:
            # May raise StopTrial (pruned); it propagates. This epoch is already in the
            # history and in ``best``, and the caller has seen every epoch's metrics.
            report(epoch, metrics)
        if on_epoch_end is not None:
            on_epoch_end(
                TrainState(
                    epoch=epoch,
                    step=step,
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    history=list(history),
                    best=dict(best),
                )
            )
        if should_stop is not None and should_stop():
            break

    return FitResult(
        best=dict(best),
        history=history,
        epochs_run=len(history),
        n_params=sum(p.numel() for p in model.parameters()),
        device=str(device),
        wall_time_s=time.perf_counter() - started,
        bleu_signature=bleu_signature,
        model=model,
    )


@torch.no_grad()
def teacher_forced_loss(
    model: SignModel, batches: list[Any], pad_id: int, device: torch.device, amp: bool = False
) -> float:
    """Mean token NLL of the references given the previous reference tokens (no label smoothing).

    Returns:
        The loss per target token over all ``batches``; NaN when they hold no token.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    tokens = 0
    for cpu_batch in batches:
        batch = cpu_batch.to(device)
        with _autocast(device, amp):
            logits = model(batch.src, batch.src_mask, batch.tgt_in)
        total += F.cross_entropy(
            logits.float().flatten(0, 1), batch.tgt_out.flatten(), ignore_index=pad_id, reduction="sum"
        ).double()
        tokens += int((batch.tgt_out != pad_id).sum())
    model.train(was_training)
    return float(total.item() / tokens) if tokens else math.nan


def _pad_frames(features: list[np.ndarray], max_frames: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(T_i, D)`` arrays into ``(B, T, D)`` frames and a ``(B, T)`` real-frame mask."""
    lengths = [len(f) if max_frames is None else min(len(f), max_frames) for f in features]
    frames = np.zeros((len(features), max(lengths), features[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(features), max(lengths)), dtype=bool)
    for row, (f, n) in enumerate(zip(features, lengths, strict=True)):
        frames[row, :n] = f[:n]
        mask[row, :n] = True
    return torch.from_numpy(frames), torch.from_numpy(mask)


def evaluate(
    model: IncrementalDecoder[Any],
    split: Split,
    tokenizer: TextTokenizer,
    cfg: EvalConfig,
    device: torch.device,
    *,
    beam_size: int | None = None,
    amp: bool = False,
    max_frames: int | None = None,
) -> tuple[dict[str, float | str], list[str]]:
    """Decode a whole split and score it against its texts.

    Sentences are decoded in batches of ``cfg.batch_size`` sorted by length (less padding,
    and rows of a batch finish at similar steps); hypotheses come back in split order.

    Args:
        model: the model, on ``device`` (any ``IncrementalDecoder``, e.g. a ``SignModel``).
        split: the split to translate; ``split.texts`` are the references.
        tokenizer: turns token ids back into text.
        cfg: decoding length, batch size, and BLEU tokenizer and case.
        device: where the model is.
        beam_size: greedy if 1, beam search otherwise; None uses ``cfg.beam_size``.
        amp: bf16 autocast (CUDA only).
        max_frames: keep at most this many leading frames of each clip, as in training.

    Returns:
        ``corpus_scores`` of the split (``bleu``, ``chrf``, ``precision1``..``precision4``, signatures)
        and the hypotheses in split order.
    """
    hyps = translate(model, split.features, tokenizer, cfg, device, beam_size=beam_size, amp=amp, max_frames=max_frames)
    scores = corpus_scores(hyps, split.texts, tokenize=cfg.bleu_tokenize, lowercase=cfg.lowercase)
    return scores, hyps


def translate(
    model: IncrementalDecoder[Any],
    features: list[np.ndarray],
    tokenizer: TextTokenizer,
    cfg: EvalConfig,
    device: torch.device,
    *,
    beam_size: int | None = None,
    amp: bool = False,
    max_frames: int | None = None,
) -> list[str]:
    """Translate clips in batches sorted by length; the texts come back in input order."""
    beam = cfg.beam_size if beam_size is None else beam_size
    ids_of = special_ids(tokenizer)  # the start and end tokens are the tokenizer's (T5: pad and </s>)
    bos, eos = ids_of.bos, ids_of.eos
    order = sorted(range(len(features)), key=lambda i: len(features[i]), reverse=True)
    hyps: list[str] = [""] * len(features)
    # Beam search decodes beam x batch rows: fewer clips per batch keep its memory at greedy's.
    batch_size = cfg.batch_size if beam == 1 else max(1, cfg.batch_size // beam)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        src, src_mask = _pad_frames([features[i] for i in index], max_frames)
        src, src_mask = src.to(device), src_mask.to(device)
        with _autocast(device, amp):
            if beam == 1:
                ids = greedy_decode(model, src, src_mask, max_len=cfg.max_len, bos_id=bos, eos_id=eos)
            else:
                ids = beam_search(model, src, src_mask, beam_size=beam, max_len=cfg.max_len, bos_id=bos, eos_id=eos)
        for i, row in zip(index, ids, strict=True):
            hyps[i] = tokenizer.decode(row)
    return hyps
