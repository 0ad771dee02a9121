"""Validation cost: its share of a trial, and batched KV-cache greedy against naive decoding.

    python -m benchmarks.eval_cost --clips 900 --epochs 3 --repeats 3

(a) Share: ``fit`` with the demo's config (the trainer's defaults plus the demo study's
``fixed``: d_model 128, 2+2 layers, batch 32, lr 1e-3, eval.max_len 32) on ``--clips`` training
clips for ``--epochs`` epochs, validating on the WHOLE val split (300 clips) after every epoch
as every trial does. Share = validation seconds / ``fit``'s wall time, per run and overall.

(b) Decoding: the model ``fit`` leaves after one epoch translates the whole val split with our
``evaluate`` (batches of 128 sorted by length, cached cross-attention K/V, one cached decoder
step per token) and with the naive decoder of ``benchmarks/naive.py`` (one clip at a time, the
full decoder re-run over the prefix for every token, stop at EOS). Both are scored with the same
sacrebleu corpus BLEU, so each run is "translate and score the split". Interleaved repeats,
medians; the hypotheses of both are compared as a check.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

TARGET_SHARE = 0.15


def _load(data_root: Path, clips: int, val_clips: int) -> tuple[Any, Any]:
    """The demo config and data with ``clips`` training clips and the first ``val_clips`` val clips."""
    from benchmarks.common import load_demo, n_train
    from signtune.data.types import Split, TaskData

    cfg, data = load_demo(data_root, subset=clips / n_train(data_root))
    if val_clips < len(data.val):
        v, n = data.val, val_clips
        val = Split(v.name, v.ids[:n], v.texts[:n], v.features[:n], v.token_ids[:n])
        data = TaskData(data.train, val, data.test, data.tokenizer, data.feature_dim)
    return cfg, data


def share_of_trial(data_root: Path, clips: int, epochs: int, repeats: int, val_clips: int) -> dict[str, Any]:
    from signtune.config import apply_overrides
    from signtune.train.loop import fit

    cfg, data = _load(data_root, clips, val_clips)
    cfg = apply_overrides(cfg, {"run.epochs": epochs})
    runs = []
    for seed in range(repeats):
        run_cfg = apply_overrides(cfg, {"run.seed": seed})
        result = fit(run_cfg, data)
        eval_s = sum(h["eval_time_s"] for h in result.history)
        train_s = sum(h["epoch_time_s"] for h in result.history)
        runs.append(
            {
                "seed": seed,
                "fit_wall_s": result.wall_time_s,
                "train_s": train_s,
                "eval_s": eval_s,
                "share": eval_s / result.wall_time_s,
                "per_epoch": [
                    {
                        "epoch": int(h["epoch"]),
                        "train_s": h["epoch_time_s"],
                        "eval_s": h["eval_time_s"],
                        "val_bleu": h["val_bleu"],
                    }
                    for h in result.history
                ],
            }
        )
    return {
        "config": "trainer defaults + demo fixed (d_model 128, 4 heads, 2+2 layers, batch 32, lr 1e-3, "
        f"eval.max_len 32, eval.batch_size 128), {len(data.train)} train clips, {epochs} epochs, "
        f"val {len(data.val)} clips",
        "runs": runs,
        "share": statistics.median(r["share"] for r in runs),
        "train_clips": len(data.train),
        "val_clips": len(data.val),
    }


def decode_ours_vs_naive(data_root: Path, clips: int, repeats: int, val_clips: int) -> dict[str, Any]:
    import torch

    from benchmarks import naive
    from benchmarks.common import interleave
    from signtune.config import apply_overrides
    from signtune.train.loop import evaluate, fit
    from signtune.train.metrics import corpus_scores

    cfg, data = _load(data_root, clips, val_clips)
    model = fit(apply_overrides(cfg, {"run.epochs": 1}), data).model
    if model is None:
        raise RuntimeError("fit returned no model")
    model.eval()
    val, tok, device = data.val, data.tokenizer, torch.device("cpu")

    def ours() -> dict[str, Any]:
        scores, hyps = evaluate(model, val, tok, cfg.eval, device, beam_size=1, max_frames=cfg.data.max_frames)
        return {"bleu": float(scores["bleu"]), "hyps": hyps}

    def naive_decode() -> dict[str, Any]:
        hyps = [tok.decode(ids) for ids in naive.greedy(model, val.features, max_len=cfg.eval.max_len)]
        return {"bleu": float(corpus_scores(hyps, val.texts)["bleu"]), "hyps": hyps}

    variants = {"ours (batched, KV cache)": ours, "naive (per clip, no cache)": naive_decode}
    timings = interleave(variants, repeats=repeats)
    a, b = timings.values()
    same = sum(x == y for x, y in zip(a.results[-1]["hyps"], b.results[-1]["hyps"], strict=True))
    return {
        "rows": [
            {"decoder": name, "wall_s": t.wall, "cpu_s": t.cpu, "runs": [round(x, 2) for x in t.wall_s],
             "bleu": t.results[-1]["bleu"]}
            for name, t in timings.items()
        ],
        "ratio_wall": b.wall / a.wall,
        "ratio_cpu": b.cpu / a.cpu,
        "identical_hypotheses": f"{same}/{len(val)}",
        "mean_hyp_tokens": sum(len(tok.encode(h)) for h in a.results[-1]["hyps"]) / max(1, len(val)),
        "val_clips": len(val),
        "max_len": cfg.eval.max_len,
    }


def profile_eval(data_root: Path, clips: int, val_clips: int, *, rows: int = 14, repeats: int = 3) -> dict[str, Any]:
    """Where one validation's time goes (cProfile), and validation at ``eval.max_len`` against
    the shorter length ``fit`` validates at (``validation_max_len``), timed interleaved, with
    the model after one epoch at the demo's lr and at the enqueued config's lr (1e-4, which
    leaves a model that has not learned to stop)."""
    import torch

    from benchmarks.common import interleave, profile_call, stat_seconds
    from signtune.config import apply_overrides
    from signtune.train.loop import evaluate, fit, validation_max_len

    cfg, data = _load(data_root, clips, val_clips)
    one_epoch = apply_overrides(cfg, {"run.epochs": 1})
    models = {"lr 1e-3": fit(one_epoch, data).model,
              "lr 1e-4 (undertrained)": fit(apply_overrides(one_epoch, {"optim.lr": 1e-4}), data).model}
    ref_len = max(len(t) for t in data.val.token_ids)
    capped = validation_max_len(cfg.eval, data.train)
    device = torch.device("cpu")

    def run(model: Any, max_len: int) -> Any:
        eval_cfg = apply_overrides(cfg, {"eval.max_len": max_len}).eval

        def validate() -> dict[str, float]:
            scores, hyps = evaluate(model, data.val, data.tokenizer, eval_cfg, device, beam_size=1)
            return {"bleu": float(scores["bleu"]), "hyp_tokens": statistics.mean(len(h.split()) for h in hyps)}

        return validate

    stats, text = profile_call(run(models["lr 1e-3"], cfg.eval.max_len), rows=rows)
    parts = {
        "total": stats.total_tt,
        "encode": stat_seconds(stats, "signtune/models/transformer.py", "encode"),
        "decode steps": stat_seconds(stats, "signtune/models/transformer.py", "decode_step"),
        "sacrebleu scoring": stat_seconds(stats, "signtune/train/metrics.py", "corpus_scores"),
    }
    variants = {f"{name}, max_len {n}": run(model, n)
                for name, model in models.items() for n in (cfg.eval.max_len, capped)}
    timings = interleave(variants, repeats=repeats)
    return {
        "text": f"validation of {len(data.val)} clips after one epoch, eval.max_len {cfg.eval.max_len}, longest val "
                f"reference {ref_len} tokens (+1 for EOS); top {rows} frames by own time\n{text}",
        "parts": parts,
        "max_len": {name: {"wall_s": t.wall, "bleu": t.results[-1]["bleu"], "hyp_tokens": t.results[-1]["hyp_tokens"]}
                    for name, t in timings.items()},
        "ref_len": ref_len,
        "capped": capped,
        "train_longest": max(len(t) for t in data.train.token_ids),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=900, help="training clips (of the demo's 3000)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="runs of (a) and interleaved repeats of (b)")
    ap.add_argument("--share-repeats", type=int, default=None, help="runs of (a) (default: --repeats)")
    ap.add_argument("--val-clips", type=int, default=300, help="the first N val clips (300: the whole split)")
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (generated when missing)")
    ap.add_argument("--profile", action="store_true", help="also profile one validation")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.common import command, demo_data, loadavg

    root = demo_data(args.data)
    result: dict[str, Any] = {"command": command("eval_cost", argv), "threads": torch.get_num_threads(),
                              "load_before": loadavg()}
    result["share"] = share_of_trial(root, args.clips, args.epochs, args.share_repeats or args.repeats,
                                     args.val_clips)
    share = result["share"]["share"]
    print(f"(a) validation share of fit: {100 * share:.1f}%  "
          f"runs {[round(100 * r['share'], 1) for r in result['share']['runs']]}", flush=True)
    for r in result["share"]["runs"]:
        print("    ", [(e["epoch"], round(e["train_s"], 2), round(e["eval_s"], 2), round(e["val_bleu"], 1))
                       for e in r["per_epoch"]], flush=True)
    result["decode"] = decode_ours_vs_naive(root, args.clips, args.repeats, args.val_clips)
    for row in result["decode"]["rows"]:
        print(f"(b) {row['decoder']:28s} {row['wall_s']:7.2f} s  cpu {row['cpu_s']:7.2f} s  bleu {row['bleu']:.2f}  "
              f"runs {row['runs']}", flush=True)
    print(f"    ratio {result['decode']['ratio_wall']:.1f}x (cpu {result['decode']['ratio_cpu']:.1f}x), "
          f"identical hypotheses {result['decode']['identical_hypotheses']}")
    result["load_after"] = loadavg()
    result["target"] = f"validation <= {100 * TARGET_SHARE:.0f}% of a trial's time"
    result["met"] = share <= TARGET_SHARE
    if args.profile or not result["met"]:
        prof = profile_eval(root, args.clips, args.val_clips, repeats=args.repeats)
        result["profile"], result["profile_parts"] = prof["text"], prof["parts"]
        result["max_len_probe"], result["ref_len"] = prof["max_len"], prof["ref_len"]
        result["capped"], result["train_longest"] = prof["capped"], prof["train_longest"]
        if args.profile:
            print(result["profile"])
            print({k: round(v, 2) for k, v in prof["parts"].items()})
            print(prof["max_len"])
    return result


if __name__ == "__main__":
    main()
