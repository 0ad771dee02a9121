"""Trainer throughput: our ``fit`` against the naive tutorial-style loop, same model, same data.

    python -m benchmarks.trainer_throughput --clips 900 --repeats 5

Both train the demo's default model (SignTransformer, d_model 128, 4 heads, 2+2 layers,
ff 4x, dropout 0.1; ``signtune.models.build_model``) for one epoch over the same ``--clips``
training clips of the demo's synthetic data (D = 64), batch size 32, fp32 on the CPU, so both
take ceil(clips / 32) optimizer steps. Ours is the real ``fit`` call (model build, length-aware
batching from the in-memory split, the steps; its validation runs on a one-clip split with
max_len 1 and is subtracted). The naive loop (``benchmarks/naive.py``) builds the same model
and reads every clip from its ``.npy`` file through a per-sample Dataset and a padding
DataLoader, and reads ``loss.item()`` after every step. Runs are interleaved (ours, naive,
ours, naive...) after one warm-up each; figures are medians.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

TARGET_RATIO = 3.0


def _variants(
    data_root: Path, clips: int, batch_size: int, *, overrides: dict[str, Any] | None = None, device: str = "cpu"
) -> tuple[dict[str, Any], int]:
    """The two loops as zero-argument callables over the same clips, and the optimizer steps per run.

    ``overrides`` (dotted config keys, e.g. the model's shape) apply to both loops; ``device``
    is where both train (the GPU check passes ``cuda``; ours then uses bf16 autocast and the
    fused AdamW, the naive loop stays fp32 with torch's default AdamW).
    """
    from benchmarks import naive
    from benchmarks.common import load_demo, n_train
    from signtune.config import apply_overrides
    from signtune.data.dataset import subset_indices
    from signtune.data.types import Split, TaskData
    from signtune.train.loop import fit

    subset = clips / n_train(data_root)
    cfg, data = load_demo(
        data_root, subset=subset, overrides={"data.batch_size": batch_size, "run.device": device, **(overrides or {})}
    )
    cfg = apply_overrides(cfg, {"run.epochs": 1, "eval.max_len": 1})
    one_val = Split("val", data.val.ids[:1], data.val.texts[:1], data.val.features[:1], data.val.token_ids[:1])
    ours_data = TaskData(data.train, one_val, None, data.tokenizer, data.feature_dim)

    rows = naive.read_rows(data_root / cfg.data.train_manifest)
    keep = subset_indices(len(rows), cfg.data.subset, cfg.data.subset_seed)  # the same clips
    dataset = naive.FeatureFileDataset([rows[i] for i in keep], data_root / cfg.data.features_dir, data.tokenizer)
    if [r[0] for r in dataset.rows] != data.train.ids:
        raise RuntimeError("the naive dataset and fit's split hold different clips")

    def ours() -> dict[str, Any]:
        result = fit(cfg, ours_data)
        return {"exclude_s": result.history[0]["eval_time_s"], "loss": result.history[0]["train_loss"]}

    def naive_loop() -> dict[str, Any]:
        losses: list[float] = []
        naive.train(
            cfg,
            dataset,
            feature_dim=data.feature_dim,
            vocab_size=data.tokenizer.vocab_size,
            on_epoch=lambda _e, _m, loss: losses.append(loss),
            device=device,
        )
        return {"loss": losses[0]}

    steps = math.ceil(len(data.train) / cfg.data.batch_size)
    return {"ours (fit)": ours, "naive loop": naive_loop}, steps


def profile_steps(data_root: Path, clips: int, batch_size: int, *, rows: int = 12) -> dict[str, Any]:
    """cProfile of one epoch of each loop: top frames, and seconds per part of the step.

    Each loop is profiled twice, interleaved, and the faster epoch is kept: a profile taken while
    someone else's job holds the CPU would blame the wrong loop.
    """
    from benchmarks.common import profile_call, stat_seconds

    variants, _ = _variants(data_root, clips, batch_size)
    kept: dict[str, tuple[Any, str]] = {}
    for fn in variants.values():
        fn()  # warm
    for _ in range(2):
        for name, fn in variants.items():
            stats, text = profile_call(fn, rows=rows)
            if name not in kept or stats.total_tt < kept[name][0].total_tt:
                kept[name] = (stats, text)
    out: dict[str, Any] = {"text": [], "parts": {}}
    for name, (stats, text) in kept.items():
        out["text"].append(f"{name}: one epoch (the faster of two profiled), top {rows} frames by own time\n{text}")
        out["parts"][name] = {
            "total": stats.total_tt,
            "batches (collate / DataLoader incl. file reads)": max(
                stat_seconds(stats, "signtune/data/batching.py", "make_batches"),
                stat_seconds(stats, "torch/utils/data/dataloader.py", "__next__"),
            ),
            "forward": stat_seconds(stats, "signtune/models/transformer.py", "forward"),
            "backward": stat_seconds(stats, "", "'run_backward'", cumulative=False),
            "optimizer step": max(stat_seconds(stats, "torch/optim/", f) for f in
                                  ("_single_tensor_adam", "_multi_tensor_adam", "_fused_adam")),
            "grad clip": stat_seconds(stats, "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
            "loss.item()": stat_seconds(stats, "", "'item'", cumulative=False),
        }
    out["text"] = "\n\n".join(out["text"])
    return out


def optimizer_probe(*, repeats: int = 7, steps: int = 20) -> dict[str, float]:
    """ms per AdamW step on the benchmark's model: ours (foreach, 4 groups) against torch's default
    (per-tensor on the CPU, the naive loop's), interleaved; medians."""
    import statistics
    import time

    import torch

    from signtune.config import OptimConfig
    from signtune.models.transformer import SignTransformer
    from signtune.train.optim import build_optimizer

    torch.manual_seed(0)
    model = SignTransformer(64, 208, 128, 4, 2, 2, 4, 0.1, 1024)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    groups = model.named_groups()
    opts = {
        "ours (foreach)": build_optimizer(groups, OptimConfig(), "cpu"),
        "naive (torch default)": torch.optim.AdamW([{"params": groups["encoder"]}, {"params": groups["decoder"]}]),
    }
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(repeats):
        for name, opt in opts.items():
            t = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[name].append(1000 * (time.perf_counter() - t) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def padding(data_root: Path, clips: int, batch_size: int) -> dict[str, float]:
    """Share of the padded frames that are real frames, in each loop's batches of one epoch
    (the rest is padding the model computes anyway)."""
    from benchmarks import naive
    from benchmarks.common import load_demo, n_train
    from signtune.data.batching import make_batches
    from signtune.data.dataset import subset_indices

    cfg, data = load_demo(data_root, subset=clips / n_train(data_root), overrides={"data.batch_size": batch_size})
    ours = make_batches(data.train, batch_size, shuffle=True, seed=cfg.run.seed + 1, max_frames=cfg.data.max_frames)
    real, total = sum(int(b.src_mask.sum()) for b in ours), sum(b.src_mask.numel() for b in ours)
    rows = naive.read_rows(data_root / cfg.data.train_manifest)
    keep = subset_indices(len(rows), cfg.data.subset, cfg.data.subset_seed)
    dataset = naive.FeatureFileDataset([rows[i] for i in keep], data_root / cfg.data.features_dir, data.tokenizer)
    masks = [m for _, m, _, _ in naive.make_loader(dataset, batch_size, cfg.run.seed + 1)]
    return {"ours (fit)": real / total, "naive loop": sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=900, help="training clips (of the demo's 3000)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (generated when missing)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="also print cProfile top frames of both loops")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.common import command, demo_data, interleave, loadavg

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root = demo_data(args.data)
    variants, steps = _variants(root, args.clips, args.batch_size)
    load_before = loadavg()
    timings = interleave(variants, repeats=args.repeats)
    ours, naive_t = timings["ours (fit)"], timings["naive loop"]
    result: dict[str, Any] = {
        "command": command("trainer_throughput", argv),
        "model": "SignTransformer d_model 128, 4 heads, 2+2 layers, ff 4x, dropout 0.1 (both loops)",
        "clips": args.clips,
        "batch_size": args.batch_size,
        "steps_per_run": steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "load_before": load_before,
        "load_after": loadavg(),
        "rows": [],
    }
    for name, t in timings.items():
        result["rows"].append(
            {
                "loop": name,
                "ms_per_step": 1000 * t.wall / steps,
                "samples_per_s": args.clips / t.wall,
                "cpu_ms_per_step": 1000 * t.cpu / steps,
                "wall_s_runs": [round(x, 2) for x in t.wall_s],
                "final_loss": t.results[-1]["loss"],
            }
        )
    result["ratio_wall"] = naive_t.wall / ours.wall
    result["ratio_cpu"] = naive_t.cpu / ours.cpu
    result["target"] = f"ours >= {TARGET_RATIO:g}x the naive loop's samples/s"
    result["met"] = result["ratio_wall"] >= TARGET_RATIO
    result["padding"] = padding(root, args.clips, args.batch_size)
    if args.profile or not result["met"]:
        prof = profile_steps(root, args.clips, args.batch_size)
        result["profile"], result["profile_parts"] = prof["text"], prof["parts"]
        result["optimizer_ms_per_step"] = optimizer_probe(repeats=7 if args.repeats >= 3 else 3)
    for row in result["rows"]:
        print(
            f"{row['loop']:12s} {row['ms_per_step']:7.1f} ms/step  {row['samples_per_s']:7.1f} samples/s  "
            f"cpu {row['cpu_ms_per_step']:7.1f} ms/step  runs {row['wall_s_runs']}",
            flush=True,
        )
    print(f"ratio (naive wall / ours wall): {result['ratio_wall']:.2f}x   cpu-time ratio {result['ratio_cpu']:.2f}x")
    print("real frames / padded frames:", {k: round(v, 3) for k, v in result["padding"].items()})
    if args.profile and "profile" in result:
        print(result["profile"])
        for name, parts in result["profile_parts"].items():
            print(name, {k: round(v, 2) for k, v in parts.items()})
        print("AdamW ms/step:", {k: round(v, 2) for k, v in result["optimizer_ms_per_step"].items()})
    return result


if __name__ == "__main__":
    main()
