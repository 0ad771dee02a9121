"""The five parts of the GPU check; each runs in a process of its own and writes one JSON file.

    python -m benchmarks.gpu.parts NAME --ctx CONTEXT.json      (the orchestrator does this)

- ``trainer`` (a): our ``fit`` against the naive loop (``benchmarks/naive.py``) for a ~10M- and a
  ~60M-parameter model: samples/s, ms/step, peak memory, MFU (``trainer_throughput._variants``).
- ``workers`` (b): the real ``study run --gpus all --workers-per-gpu k`` for each k on the same
  enqueued demo configs (``scaling.run_enqueued``): trials/h and GPU utilisation.
- ``oom`` (c): a study whose one config cannot fit in GPU memory at its batch size but fits at
  half: the trial must fail with reason ``oom``, its retry at half batch complete, nothing stay
  RUNNING. The dry run injects the OOM (``SIGNTUNE_FAULTS=oom@0``) to walk the same bookkeeping.
  Then a real CUDA error (a device-side assert) in one worker of two: reason ``cuda_error``,
  the worker replaced by a fresh process, the trial retried there.
- ``bf16`` (d): one config trained with bf16 autocast and in fp32: val BLEU and loss compared.
- ``t5`` (e): one t5-family trial through ``study run`` with a tiny T5 built from a config.

A part saves what it has after every step (``save``), so a part stopped by its time budget
still leaves its figures so far; the orchestrator then marks it ``timeout``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu.context import (
    FLOPS_HOW,
    PART_FILES,
    Context,
    GpuSampler,
    child_env,
    study_cmd,
    tail,
    train_flops,
    trial_rows,
    write_study,
)

Save = Callable[[dict[str, Any]], None]

TRAINER_TARGET = 5.0  # ours >= 5x the naive loop's samples/s on a GPU
WORKERS_TARGET = 2.0  # 4 workers on one GPU >= 2x the trials/h of one
BLEU_TOL = 2.0  # bf16 vs fp32: best val BLEU within 2 points (or the fp32 seed-to-seed gap, if larger)
LOSS_TOL = 0.02  # ... and the last epoch's train loss within 2% (or the seed-to-seed gap)
OOM_FILL = 0.65  # the half batch is sized to fill 65% of the free memory; the full batch then needs ~1.3x it
CONTEXT_RESERVE = 2**30  # the worker's own CUDA context and cuBLAS workspace, not in this process's reading


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "detail": detail}


# --------------------------------------------------------------------------------------------
# a. Trainer throughput


def _with_peak_memory(fn: Callable[[], dict[str, Any]], cuda: bool) -> Callable[[], dict[str, Any]]:
    """``fn`` that also returns the CUDA peak memory it allocated (MiB); the caches are emptied first."""
    import torch

    def run() -> dict[str, Any]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = dict(fn())
        if cuda:
            torch.cuda.synchronize()
            result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return result

    return run


def _rounds(variants: dict[str, Callable[[], Any]], deadline: float, max_repeats: int) -> tuple[dict[str, Any], int]:
    """One untimed warm-up round, then interleaved rounds (A, B, A, B...) while ``deadline`` allows;
    at least one timed round. A round is assumed to cost what the warm-up did (an upper bound)."""
    from benchmarks.common import Timing, interleave

    started = time.time()
    interleave(variants, repeats=0, warmup=1)
    round_s = time.time() - started
    merged = {name: Timing() for name in variants}
    rounds = 0
    while rounds < max_repeats and (rounds == 0 or time.time() + round_s < deadline):
        for name, t in interleave(variants, repeats=1, warmup=0).items():
            merged[name].wall_s += t.wall_s
            merged[name].cpu_s += t.cpu_s
            merged[name].results += t.results
        rounds += 1
    return merged, rounds


def _batch_shapes(root: Path, clips: int, batch: int, model: dict[str, Any]) -> tuple[dict[str, list[Any]], int]:
    """The ``(batch, frames, target tokens)`` of every batch each loop trains in its one epoch, and the vocab."""
    from benchmarks import naive
    from benchmarks.common import load_demo, n_train
    from signtune.data.batching import make_batches
    from signtune.data.dataset import subset_indices
    from signtune.data.types import special_ids

    cfg, data = load_demo(root, subset=clips / n_train(root), overrides={"data.batch_size": batch, **model})
    ours = make_batches(data.train, batch, shuffle=True, seed=cfg.run.seed + 1, max_frames=cfg.data.max_frames,
                        specials=special_ids(data.tokenizer))
    rows = naive.read_rows(root / cfg.data.train_manifest)
    keep = subset_indices(len(rows), cfg.data.subset, cfg.data.subset_seed)
    dataset = naive.FeatureFileDataset([rows[i] for i in keep], root / cfg.data.features_dir, data.tokenizer)
    theirs = [(len(src), src.shape[1], tgt_in.shape[1]) for src, _, tgt_in, _ in
              naive.make_loader(dataset, batch, cfg.run.seed + 1)]
    shapes = {
        "ours (fit)": [(len(b.src), b.src.shape[1], b.tgt_in.shape[1]) for b in ours],
        "naive loop": theirs,
    }
    return shapes, data.tokenizer.vocab_size


def _n_params(model: dict[str, Any], feature_dim: int, vocab: int) -> int:
    import torch

    from signtune.config import TrainConfig, apply_overrides
    from signtune.models import build_model

    with torch.device("meta"):
        m = build_model(apply_overrides(TrainConfig(), model).model, feature_dim=feature_dim, vocab_size=vocab)
    return sum(p.numel() for p in m.parameters())


def trainer(ctx: Context, save: Save) -> None:
    """a. Ours against the naive loop, one epoch each, interleaved, per model size."""
    from benchmarks import trainer_throughput
    from benchmarks.common import synth_params

    s = ctx.sizes
    root = Path(ctx.data)
    cuda = ctx.device == "cuda"
    dim = int(synth_params(root)["feature_dim"])
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    save({"clips": s.trainer_clips, "batch_size": s.trainer_batch, "flops_how": FLOPS_HOW, "rows": rows,
          "targets": targets, "peak_tflops": ctx.peak_tflops,
          "what": "ours: fit (bf16 autocast and fused AdamW on CUDA; its validation, on one clip, subtracted); "
                  "naive: benchmarks/naive.py (fp32, np.load per clip, loss.item() every step)"})
    configs = list(s.trainer_configs.items())
    for i, (label, model) in enumerate(configs):
        deadline = time.time() + ctx.left() / (len(configs) - i)
        variants, steps = trainer_throughput._variants(root, s.trainer_clips, s.trainer_batch, overrides=model,
                                                       device=ctx.device)
        timings, rounds = _rounds({k: _with_peak_memory(f, cuda) for k, f in variants.items()}, deadline,
                                  s.trainer_max_repeats)
        shapes, vocab = _batch_shapes(root, s.trainer_clips, s.trainer_batch, model)
        n_params = _n_params(model, dim, vocab)
        walls = {}
        for loop, t in timings.items():
            flops = train_flops(model, feature_dim=dim, vocab_size=vocab, shapes=shapes[loop])
            peaks = [r["peak_mib"] for r in t.results if "peak_mib" in r]
            walls[loop] = t.wall
            rows.append({
                "config": label,
                "model": model,
                "params_m": round(n_params / 1e6, 2),
                "loop": loop,
                "steps": steps,
                "rounds": rounds,
                "ms_per_step": 1000 * t.wall / steps,
                "samples_per_s": s.trainer_clips / t.wall,
                "peak_mem_mib": max(peaks) if peaks else None,
                "gflop_per_epoch": flops / 1e9,
                "tflops_per_s": flops / t.wall / 1e12,
                "mfu": flops / t.wall / (ctx.peak_tflops * 1e12) if ctx.peak_tflops else None,
                "wall_s_runs": [round(x, 3) for x in t.wall_s],
                "final_loss": t.results[-1]["loss"],
                "label": ctx.label,
            })
        ratio = walls["naive loop"] / walls["ours (fit)"]
        targets.append({
            "target": f"trainer samples/s >= {TRAINER_TARGET:g}x the naive loop "
                      f"({label}, {n_params / 1e6:.1f}M params)",
            "measured": f"{ratio:.2f}x",
            "ratio": ratio,
            "met": None if ctx.dry_run else ratio >= TRAINER_TARGET,
        })
        save({})


# --------------------------------------------------------------------------------------------
# b. Workers per GPU


def workers(ctx: Context, save: Save) -> None:
    """b. The real ``study run`` at 1, 2 and 4 workers on one GPU, on the same enqueued configs."""
    from benchmarks import scaling

    s = ctx.sizes
    cuda = ctx.device == "cuda"
    configs = scaling.draw_configs(s.workers_configs, seed=0)
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    save({"configs": len(configs), "epochs": s.workers_epochs, "subset": s.workers_subset, "runs": runs,
          "checks": checks, "targets": targets,
          "what": "the same configs, drawn from the demo search space by a seeded random sampler, enqueued; "
                  "pruner off; trials/h over the trial window (first trial's start to last trial's end)"
                  + ("" if cuda else "; CPU dry run: `--workers k` stands in for `--gpus all --workers-per-gpu k`")})
    params: list[list[str]] = []
    for i, k in enumerate(s.workers_counts):
        budget = ctx.left() / (len(s.workers_counts) - i)
        placement = ["--gpus", "all", "--workers-per-gpu", str(k)] if cuda else ["--workers", str(k)]
        # No new trial after 60% of the share: the trials running then finish, the study exports.
        cli = [*placement, "--no-tracking", "--timeout", f"{max(5.0, 0.6 * budget):.0f}"]
        with GpuSampler(cuda) as sampler:
            r = scaling.run_enqueued(Path(ctx.data), configs, cli, epochs=s.workers_epochs, subset=s.workers_subset,
                                     cache=Path(ctx.cache), timeout_s=max(10.0, budget - 2),
                                     env=child_env(ctx.dry_run))
        params.append(r.pop("params"))
        stderr = r.pop("stderr_tail")
        r["gpu"] = sampler.summary(r["window_start"], r["window_end"])
        runs.append({"workers_per_gpu": k, "command": "study run " + " ".join(cli), **r, "label": ctx.label})
        ok = r["returncode"] == 0 and r["failed"] == 0 and r["running_left"] == 0 and r["finished"] > 0
        checks.append(_check(f"study run {' '.join(placement)}: exit 0, no failed or RUNNING trial", ok,
                             f"exit {r['returncode']}, {r['finished']} finished, {r['failed']} failed, "
                             f"{r['running_left']} left RUNNING" + ("" if ok else f"; stderr: {tail(stderr, 8)}")))
        save({})
    base = runs[0]["trials_per_hour_window"] if runs else 0.0
    for run in runs:
        run["ratio_vs_1"] = run["trials_per_hour_window"] / base if base else None
    top = runs[-1] if runs else None
    if top is not None and top["workers_per_gpu"] > 1 and top["ratio_vs_1"] is not None:
        where = "on one GPU" if cuda else "(CPU dry run: --workers)"
        targets.append({
            "target": f"{top['workers_per_gpu']} workers {where} >= {WORKERS_TARGET:g}x the trials/h of 1",
            "measured": f"{top['ratio_vs_1']:.2f}x",
            "ratio": top["ratio_vs_1"],
            "met": None if ctx.dry_run else top["ratio_vs_1"] >= WORKERS_TARGET,
        })
    # Timed-out runs finish fewer configs: the trials/h then compare a prefix of the same queue.
    save({"same_configs": len({tuple(p) for p in params}) == 1})


# --------------------------------------------------------------------------------------------
# c. A real CUDA OOM


def choose_oom_batch(free: float, fixed: float, per_sample: float, clips: int, *,
                     fill: float = OOM_FILL) -> int | None:
    """The full batch for the OOM part, or None when none works with these clips.

    The model's training step needs about ``fixed + batch * per_sample`` bytes (``fixed``: weights,
    gradients, AdamW state, workspaces; ``per_sample``: activations of one clip at the longest
    clip's frames). Half the batch is sized to fill ``fill`` of ``free``; the full batch then
    needs ``2 * fill * free - fixed`` (about 1.3x ``free`` at 0.65), which cannot fit, while the
    half leaves a third of the memory for the allocator's fragmentation. The full batch must be
    at most ``clips``: the OOM study trains one batch of exactly that many clips.
    """
    if per_sample <= 0:
        return None
    half = math.floor((fill * free - fixed) / per_sample)
    full = 2 * half
    if half < 1 or full > clips or fixed + full * per_sample <= 1.1 * free:
        return None
    return full


def _calibrate(model: dict[str, Any], *, feature_dim: int, vocab: int, frames: int, tokens: int,
               probe: tuple[int, int] = (8, 16)) -> tuple[float, float]:
    """``(fixed, per_sample)`` bytes of one training step as ``fit`` takes it on CUDA (fp32 weights, bf16
    autocast, the trainer's fused AdamW), from the peak memory at two batch sizes of ``frames`` frames
    and ``tokens`` target tokens (a line through the two points)."""
    import gc

    import torch
    import torch.nn.functional as F

    from signtune.config import TrainConfig, apply_overrides
    from signtune.models import build_model
    from signtune.train.optim import build_optimizer

    cfg = apply_overrides(TrainConfig(), model)

    def peaks() -> list[int]:
        net = build_model(cfg.model, feature_dim=feature_dim, vocab_size=vocab).cuda()
        opt = build_optimizer(net.named_groups(), cfg.optim, "cuda")

        def step(b: int) -> None:
            src = torch.randn(b, frames, feature_dim, device="cuda")
            mask = torch.ones(b, frames, dtype=torch.bool, device="cuda")
            tgt = torch.randint(4, vocab, (b, tokens), device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = net(src, mask, tgt)
            F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step(probe[0])  # allocates the AdamW state, part of `fixed`
        out = []
        for b in probe:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step(b)
            torch.cuda.synchronize()
            out.append(torch.cuda.max_memory_allocated())
        return out

    p = peaks()  # the model and its optimizer are gone once it returns
    gc.collect()
    torch.cuda.empty_cache()
    per_sample = (p[1] - p[0]) / (probe[1] - probe[0])
    fixed = p[0] - probe[0] * per_sample
    return float(fixed), float(per_sample)


def size_oom(ctx: Context) -> dict[str, Any]:
    """Pick the OOM config from the free GPU memory (``torch.cuda.mem_get_info``).

    For each model of the ladder (``Sizes.oom_models``): calibrate its memory per clip at the
    longest training clip, size the batch with ``choose_oom_batch``, and take a training subset
    of exactly that many clips, so the first attempt trains one batch of all of them (the
    length-aware batching cannot split it into shorter, smaller batches). The retry's half batch
    then runs as two micro-batches, each within ``OOM_FILL`` of the memory.
    """
    import torch

    from benchmarks.common import load_demo
    from signtune.data.dataset import subset_indices

    cfg, data = load_demo(Path(ctx.data), subset=1.0)
    n = len(data.train)
    frames = min(max(len(f) for f in data.train.features), cfg.data.max_frames)
    tokens = max(len(t) for t in data.train.token_ids) + 1
    vocab = data.tokenizer.vocab_size
    tried = []
    for model in ctx.sizes.oom_models:
        fixed, per_sample = _calibrate(model, feature_dim=data.feature_dim, vocab=vocab, frames=frames, tokens=tokens)
        free = float(torch.cuda.mem_get_info()[0])
        usable = free - CONTEXT_RESERVE
        full = choose_oom_batch(usable, fixed, per_sample, n)
        row: dict[str, Any] = {
            "model": model, "free_gib": free / 2**30, "usable_gib": usable / 2**30, "fixed_gib": fixed / 2**30,
            "per_clip_mib": per_sample / 2**20, "frames": frames, "tokens": tokens, "batch": full,
        }
        tried.append(row)
        if full is None:
            continue
        subset = full / n
        keep = subset_indices(n, subset, cfg.data.subset_seed)
        sub_frames = min(max(len(data.train.features[i]) for i in keep), cfg.data.max_frames)
        scale = sub_frames / frames  # activations grow with the frames of the batch's longest clip
        row.update(subset=subset, clips=len(keep), subset_frames=sub_frames,
                   predicted_full_gib=(fixed + full * per_sample * scale) / 2**30,
                   predicted_half_gib=(fixed + full // 2 * per_sample) / 2**30)
        if len(keep) == full and fixed + full * per_sample * scale > 1.05 * usable:
            return {"model": model, "batch": full, "subset": subset, "tried": tried}
        row["batch"] = None
    return {"model": None, "batch": None, "subset": None, "tried": tried}


def oom_part(ctx: Context, save: Save) -> None:
    """c. A trial that runs out of CUDA memory, its half-batch retry, and the bookkeeping around them."""
    from benchmarks.common import run_group

    s = ctx.sizes
    cuda = ctx.device == "cuda"
    checks: list[dict[str, Any]] = []
    if cuda:
        sizing = size_oom(ctx)
        save({"sizing": sizing, "checks": checks,
              "how": "sized from torch.cuda.mem_get_info(): the model's step memory is calibrated at two batch sizes "
                     f"(fixed + per clip, at the longest clip); half the batch fills {OOM_FILL:.0%} of the free memory "
                     f"less {CONTEXT_RESERVE / 2**30:.0f} GiB for the worker's CUDA context, so the full batch needs "
                     "about 1.3x the free memory; the training subset is one batch of exactly that many clips"})
        if sizing["batch"] is None:
            raise RuntimeError("no model of the OOM ladder gives a batch that cannot fit at full size but fits at half "
                               f"within the {s.synth['n_train']} training clips; see `sizing.tried`")
        model, batch, subset = sizing["model"], int(sizing["batch"]), float(sizing["subset"])
        env = child_env(False)
        placement = ["--gpus", "all", "--workers-per-gpu", "1"]
    else:
        model, batch, subset = dict(s.oom_models[0]), s.oom_batch, 1.0
        save({"sizing": {"model": model, "batch": batch, "subset": subset}, "checks": checks,
              "how": "CPU dry run: no real OOM; SIGNTUNE_FAULTS=oom@0 raises torch.cuda.OutOfMemoryError in trial 0 "
                     "after its first epoch, which walks the same bookkeeping (reason, retry at half batch)"})
        env = child_env(True, SIGNTUNE_FAULTS="oom@0")
        placement = []
    fixed = {**model, "run.epochs": 1, "run.seed": 0, "eval.max_len": 24, "data.batch_size": batch,
             "eval.batch_size": batch}
    space = {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}}
    study_yaml = write_study(ctx, "oom", fixed=fixed, space=space, enqueue=[{"optim.lr": 5.0e-4}], subset=subset)
    cmd = study_cmd(study_yaml, "run", "--trials", "1", "--no-tracking", *placement)
    with GpuSampler(cuda) as sampler:
        fin = run_group(cmd, timeout_s=max(10.0, ctx.left() - 3), env=env, cwd=ctx.work)
    rows = trial_rows(study_yaml, "oom")
    save({"command": " ".join(["study run --trials 1 --no-tracking", *placement]), "returncode": fin.returncode,
          "timed_out": fin.timed_out, "wall_s": fin.wall_s, "trials": rows, "gpu": sampler.summary(),
          "stderr_tail": tail(fin.stderr, 20)})

    first = rows[0] if rows else {}
    error = str(first.get("error", ""))
    real = "injected_fault" not in first and "out of memory" in error.lower()
    ok = first.get("state") == "FAIL" and first.get("reason") == "oom" and (real or not cuda)
    kind = " (a real CUDA OOM)" if cuda else " (injected)"
    checks.append(_check("the full-batch trial failed with reason oom" + kind,
                         ok, f"trial {first.get('number')}: {first.get('state')}, reason {first.get('reason')}, "
                             f"{error[:160]}"))
    retries = [r for r in rows if r.get("retry_of") == first.get("number")]
    retry = retries[0] if retries else {}
    conf = retry.get("oom_retry_config", {})
    ok = (len(retries) == 1 and retry.get("state") == "COMPLETE" and bool(retry.get("oom_retry"))
          and conf.get("data.batch_size") == batch // 2 and conf.get("optim.grad_accum") == 2)
    checks.append(_check("its retry at half batch completed", ok,
                         f"{len(retries)} retry: {retry.get('state')}, config {conf}, value {retry.get('value')}"))
    running = [r["number"] for r in rows if r["state"] == "RUNNING"]
    checks.append(_check("nothing left RUNNING; `study run` exited 0", not running and fin.returncode == 0,
                         f"RUNNING: {running}, exit {fin.returncode}"))
    save({})
    cuda_error(ctx, save, checks)


# The first trial to run breaks its worker's CUDA context for real: an out-of-bounds index on the
# GPU trips a device-side assert, after which nothing can run on the GPU in that process. Later
# trials (the retry included, in a fresh worker) use the GPU. The CPU dry run raises the error
# torch would raise.
BREAK_PLUGIN = """
import os, time

def objective(config, report, ctx):
    import torch

    marker = os.path.join(ctx.study_dir, "broke-once")
    cuda = torch.cuda.is_available()
    if not os.path.exists(marker):
        open(marker, "w").close()
        if cuda:
            x = torch.zeros(4, device="cuda")
            x[torch.tensor([1 << 20], device="cuda")].sum().item()
        raise RuntimeError("CUDA error: device-side assert triggered (emulated: CPU dry run)")
    if cuda:
        a = torch.ones(512, 512, device="cuda")
        (a @ a).sum().item()
    time.sleep(float(config["delay"]))
    report(1, {"score": config["x"]})
    return {"score": config["x"]}
"""


def cuda_error(ctx: Context, save: Save, checks: list[dict[str, Any]]) -> None:
    """c, second half. A CUDA error that breaks a worker's context: the trial fails with reason
    ``cuda_error``, its worker is replaced by a fresh process, the retry completes."""
    import optuna

    from benchmarks.common import run_group

    cuda = ctx.device == "cuda"
    k = ctx.sizes.cuda_error_workers
    trials = 3 * k
    if ctx.left() < 15:
        checks.append(_check("a broken CUDA context: worker replaced, trial retried", False,
                             f"not run: {ctx.left():.0f} s left of the part's budget"))
        save({})
        return
    plugins = Path(ctx.work) / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "signtune_cudabreak.py").write_text(BREAK_PLUGIN, encoding="utf-8")
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    # Each trial lasts long enough that the replacement worker starts while trials remain.
    study_yaml = write_study(ctx, "cuda_error", fixed={"delay": 3.0}, space=space, enqueue=[], trials=trials,
                             metric="score", task="signtune_cudabreak:objective")
    env = child_env(ctx.dry_run)
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), env["PYTHONPATH"]])
    placement = ["--gpus", "all", "--workers-per-gpu", str(k)] if cuda else ["--workers", str(k)]
    fin = run_group(study_cmd(study_yaml, "run", "--trials", str(trials), "--no-tracking", *placement),
                    timeout_s=max(10.0, ctx.left() - 3), env=env, cwd=ctx.work)
    rows = trial_rows(study_yaml, "cuda_error")
    study = optuna.load_study(study_name="cuda_error", storage=f"sqlite:///{study_yaml.parent / 'study.db'}")
    pids = {t.number: t.user_attrs.get("pid") for t in study.get_trials(deepcopy=False)}
    broken = [r for r in rows if r["state"] == "FAIL"]
    first = broken[0] if broken else {}
    number = int(first.get("number", -1))
    retry = [r for r in rows if number >= 0 and r.get("retry_of") == number]
    later = {pids[r["number"]] for r in rows if number >= 0 and r["number"] > number}
    # k workers run at a time, so a (k + 1)-th process that ran a trial is the broken one's replacement.
    workers_seen = len({pid for pid in pids.values() if pid is not None})
    error = str(first.get("error", ""))
    real = "device-side assert" in error and "emulated" not in error
    save({"cuda_error": {"command": " ".join([f"study run --trials {trials} --no-tracking", *placement]),
                         "returncode": fin.returncode, "wall_s": fin.wall_s, "trials": rows,
                         "worker_pids": workers_seen, "stderr_tail": tail(fin.stderr, 20)}})
    kind = " (a real device-side assert)" if cuda else " (emulated)"
    checks.append(_check("a CUDA error failed its trial with reason cuda_error" + kind,
                         len(broken) == 1 and first.get("reason") == "cuda_error" and (real or not cuda),
                         f"{len(broken)} failed; trial {first.get('number')}: reason {first.get('reason')}, "
                         f"{error[:160]}"))
    gone = number >= 0 and pids.get(number) not in later
    ok = len(retry) == 1 and retry[0]["state"] == "COMPLETE" and gone and workers_seen == k + 1
    checks.append(_check("its worker exited, a fresh one replaced it and ran trials, the retry completed", ok,
                         f"retry: {retry[0]['state'] if retry else 'none'}; the broken worker ran no later trial: "
                         f"{gone}; {workers_seen} worker processes ran trials for {k} slots (expected {k + 1})"))
    finished = sum(r["state"] == "COMPLETE" for r in rows)
    running = [r["number"] for r in rows if r["state"] == "RUNNING"]
    checks.append(_check(f"the study finished its {trials} trials, nothing left RUNNING, exit 0",
                         finished == trials and not running and fin.returncode == 0,
                         f"{finished} complete, RUNNING {running}, exit {fin.returncode}"))
    save({})


# --------------------------------------------------------------------------------------------
# d. bf16 against fp32


def _fit_summary(result: Any, peak_mib: float | None) -> dict[str, Any]:
    hist = result.history
    return {
        "best_val_bleu": result.best.get("val_bleu"),
        "last_train_loss": hist[-1]["train_loss"] if hist else None,
        "per_epoch": [{k: round(h[k], 4) for k in ("epoch", "train_loss", "val_bleu", "epoch_time_s", "eval_time_s")}
                      for h in hist],
        "wall_s": result.wall_time_s,
        "peak_mem_mib": peak_mib,
        "n_params": result.n_params,
    }


def bf16(ctx: Context, save: Save) -> None:
    """d. The same config, seed and batches with bf16 autocast and in fp32; a second fp32 seed as the noise."""
    import torch

    from benchmarks.common import load_demo
    from signtune.config import apply_overrides
    from signtune.train.loop import fit

    s = ctx.sizes
    cuda = ctx.device == "cuda"
    cfg, data = load_demo(Path(ctx.data), subset=s.bf16_subset,
                          overrides={**s.bf16_config, "run.device": ctx.device, "run.epochs": s.bf16_epochs})
    runs: dict[str, dict[str, Any]] = {}
    checks: list[dict[str, Any]] = []
    save({"config": s.bf16_config, "epochs": s.bf16_epochs, "train_clips": len(data.train), "runs": runs,
          "checks": checks, "tolerance": {"bleu_points": BLEU_TOL, "loss_relative": LOSS_TOL},
          "note": "" if cuda else "CPU dry run: bf16 autocast is CUDA-only in fit, so both runs are fp32 here"})
    variants = [("bf16 autocast", {"run.amp": True}), ("fp32", {"run.amp": False})]
    for name, over in variants:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = fit(apply_overrides(cfg, over), data)
        runs[name] = _fit_summary(result, torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
        save({})
    if ctx.left() > 1.3 * runs["fp32"]["wall_s"]:
        result = fit(apply_overrides(cfg, {"run.amp": False, "run.seed": cfg.run.seed + 1}), data)
        runs["fp32, seed + 1"] = _fit_summary(result, None)
    a, b = runs["bf16 autocast"], runs["fp32"]
    d_bleu = abs(a["best_val_bleu"] - b["best_val_bleu"])
    d_loss = abs(a["last_train_loss"] - b["last_train_loss"]) / b["last_train_loss"]
    noise = runs.get("fp32, seed + 1")
    n_bleu = abs(noise["best_val_bleu"] - b["best_val_bleu"]) if noise else 0.0
    n_loss = abs(noise["last_train_loss"] - b["last_train_loss"]) / b["last_train_loss"] if noise else 0.0
    tol_bleu, tol_loss = max(BLEU_TOL, n_bleu), max(LOSS_TOL, n_loss)
    save({"diff": {"bleu_points": d_bleu, "loss_relative": d_loss},
          "noise": {"bleu_points": n_bleu, "loss_relative": n_loss} if noise else None,
          "applied_tolerance": {"bleu_points": tol_bleu, "loss_relative": tol_loss}})
    checks.append(_check(f"bf16 vs fp32: best val BLEU within {tol_bleu:.2f} points, last train loss within "
                         f"{100 * tol_loss:.1f}%", d_bleu <= tol_bleu and d_loss <= tol_loss,
                         f"BLEU {a['best_val_bleu']:.2f} vs {b['best_val_bleu']:.2f}; loss {a['last_train_loss']:.4f} "
                         f"vs {b['last_train_loss']:.4f}"))
    save({})


# --------------------------------------------------------------------------------------------
# e. The T5 family


def t5(ctx: Context, save: Save) -> None:
    """e. One t5-family trial end to end through ``study run``, on a tiny T5 saved from a ``T5Config``."""
    # The tiny T5 of the test suite (d_model 32, 2 layers, word-level T5 tokenizer over the texts).
    from tests.models.tiny_t5 import save_tiny_t5

    from benchmarks.common import run_group
    from signtune.data.manifest import read_manifest

    s = ctx.sizes
    cuda = ctx.device == "cuda"
    fixed = {"model.family": "t5", "model.pretrained": "t5", "run.epochs": s.t5_epochs, "run.seed": 0,
             "eval.max_len": 32}
    space = {"optim.lr": {"type": "float", "low": 1.0e-3, "high": 5.0e-3, "log": True}}
    study_yaml = write_study(ctx, "t5", fixed=fixed, space=space, enqueue=[{"optim.lr": 3.0e-3}],
                             data={"tokenizer": "t5"}, subset=s.t5_subset, metric="val_chrf")
    root = Path(ctx.data)
    texts = [row.text for split in ("train", "val", "test")
             for row in read_manifest(root / f"how2sign_realigned_{split}.csv", format="how2sign",
                                      id_column="SENTENCE_NAME", text_column="SENTENCE")]
    save_tiny_t5(study_yaml.parent / "t5", texts)
    placement = ["--gpus", "all", "--workers-per-gpu", "1"] if cuda else []
    cmd = study_cmd(study_yaml, "run", "--trials", "1", "--no-tracking", *placement)
    fin = run_group(cmd, timeout_s=max(10.0, ctx.left() - 3), env=child_env(ctx.dry_run), cwd=ctx.work)
    rows = trial_rows(study_yaml, "t5")
    trial = rows[0] if rows else {}
    value = trial.get("value")
    ok = (len(rows) == 1 and trial.get("state") == "COMPLETE" and str(trial.get("device", "")).startswith(ctx.device)
          and value is not None and math.isfinite(value) and trial.get("epochs_run") == s.t5_epochs
          and fin.returncode == 0)
    save({"command": " ".join(["study run --trials 1 --no-tracking", *placement]), "model": "tiny T5 from a T5Config "
          "(d_model 32, d_ff 64, 2+2 layers, 2 heads; tests/models/tiny_t5.py)", "epochs": s.t5_epochs,
          "subset": s.t5_subset, "returncode": fin.returncode, "wall_s": fin.wall_s, "trials": rows,
          "stderr_tail": tail(fin.stderr, 20),
          "checks": [_check(f"one t5 trial completed on {ctx.device} end to end", ok,
                            f"{trial.get('state')} on {trial.get('device')}, val chrF {value}, "
                            f"{trial.get('epochs_run')} epochs, {trial.get('n_params')} params, "
                            f"exit {fin.returncode}")]})


PARTS: dict[str, Callable[[Context, Save], None]] = {
    "trainer": trainer,
    "workers": workers,
    "oom": oom_part,
    "bf16": bf16,
    "t5": t5,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--ctx", type=Path, required=True, help="the context JSON the orchestrator wrote")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: run_group stops our children
    ctx = Context.load(args.ctx)
    path = Path(ctx.out) / PART_FILES[args.part]
    result: dict[str, Any] = {"part": args.part, "label": ctx.label, "device": ctx.device, "dry_run": ctx.dry_run,
                              "status": "running"}
    started = time.perf_counter()

    def save(update: dict[str, Any]) -> None:
        result.update(update)
        result["seconds"] = round(time.perf_counter() - started, 1)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)

    save({})
    try:
        PARTS[args.part](ctx, save)
    except Exception as exc:
        traceback.print_exc()
        save({"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
              "traceback": traceback.format_exc(limit=12)[-3000:]})
        return 1
    save({"status": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
