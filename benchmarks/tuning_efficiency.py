"""Tuning efficiency: wall time to a target val BLEU, and best BLEU at fixed wall budgets.

    python -m benchmarks.tuning_efficiency --subset 0.2 --epochs 6 --budget 180 --seeds 3 --target 5

The demo problem made smaller to fit the suite: ``--subset`` of the demo's 3000 training clips
(0.2: 600) and ``--epochs`` per trial (6), the demo's search space, val BLEU-4 on the whole
300-clip val split. Three set-ups, each searching for ``--budget`` wall seconds per seed:

- ``ours``: ``signtune.runner.run_study`` with the demo spec as shipped (``sampler: auto``:
  TPE with a start-up sized to the budget; ``pruner: auto`` on ``val_loss``: successive halving
  from epoch 1), one worker, our ``fit``; the data load (``task.prepare``, cold) is on the clock;
- ``plain_tpe``: plain ``optuna.create_study`` (in memory) with ``TPESampler(seed)`` and no
  pruning, driving the naive loop of ``benchmarks/naive.py`` (per-clip file-reading DataLoader,
  ``loss.item()`` per step); after every epoch it scores BLEU on the first 30 val clips with
  per-clip greedy decoding without a cache (as the earlier hand-written script did); Optuna
  sees the final epoch's 30-clip BLEU. For comparability each finished trial's final model is
  ALSO scored on the whole val split with our ``evaluate``, off the clock, after the budget;
  the curves use that whole-split score (the 30-clip score is recorded too);
- ``random``: ``run_study`` with ``RandomSampler(seed)`` and no pruner, our ``fit``;
- ``today``: ``run_study`` with the demo's strategy before ``sampler/pruner: auto`` (TPE with 8
  start-up trials, median pruner on val BLEU after 5 trials and 2 warm-up epochs, the one
  hand-tuned config enqueued).

All three queue the demo spec's ``enqueue`` config (the hand-tuned script's defaults) first,
and MLflow tracking is off for all. The three set-ups of one seed run AT THE SAME TIME, one
torch thread each, so each sees the same machine load (other people's jobs included); one wall
second is then about 2/3 of a core on a 2-core machine. A trial still running when the budget
ends is cut at its next epoch and not counted. Seeds vary the sampler's seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETUPS = ("ours", "plain_tpe", "random", "today")
TARGET_VS_PLAIN = 3.0
TARGET_VS_RANDOM = 6.0
NAIVE_VAL_CLIPS = 30


# ----------------------------------------------------------------------------------------------
# One set-up, one seed (runs in its own process)


def _spec(setup: str, seed: int, args: argparse.Namespace, work: Path) -> Any:
    import yaml

    from benchmarks.common import ROOT, synth_params
    from signtune.spec import load_spec

    raw = yaml.safe_load((ROOT / "studies" / "demo" / "study.yaml").read_text())
    raw["name"] = f"bench-{setup}-{seed}"
    raw["search_space"] = str(ROOT / "search_spaces" / "sign2text.yaml")
    raw["data"]["root"] = str(Path(args.data).resolve())
    # The data's own generator parameters, so prepare() finds it complete and generates nothing.
    raw["data"]["synthetic"] = {k: v for k, v in synth_params(Path(args.data)).items() if k != "feature_dim"}
    raw["fixed"].update({"run.epochs": args.epochs, "run.threads": 1, "run.device": "cpu"})
    raw["sampler"]["seed"] = seed
    if setup == "random":
        raw["sampler"] = {"name": "random", "seed": seed}
        raw["pruner"] = {"name": "none"}
    if setup == "today":  # the demo's strategy before sampler/pruner auto, and its one enqueued config
        raw["sampler"] = {"name": "tpe", "seed": seed, "n_startup_trials": 8}
        raw["pruner"] = {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2}
        raw["enqueue"] = raw["enqueue"][:1]
    raw["budget"] = {"trials": 100_000, "subset": args.subset, "timeout": float(args.budget)}
    raw["storage"] = f"sqlite:///{work / 'study.db'}"
    raw["tracking"] = {"enabled": False}
    (work / "study.yaml").write_text("# python -m benchmarks.tuning_efficiency\n" + yaml.safe_dump(raw))
    return load_spec(str(work / "study.yaml"))


def run_ours(setup: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``ours`` or ``random``: the real runner and trainer, cut at the budget."""
    import dataclasses

    from optuna.trial import TrialState

    from signtune.data.dataset import clear_cache
    from signtune.errors import StopTrial
    from signtune.runner import RunEvents, run_study
    from signtune.space import parse
    from signtune.study import open_study
    from signtune.tasks import get_task

    spec = _spec(setup, seed, args, work)
    task = get_task(spec.task)
    space = parse(spec.search_space, known_keys=task.config_keys())
    clear_cache()
    t0_wall, t0 = time.time(), time.perf_counter()
    deadline = t0 + args.budget
    task.prepare(spec)  # the data load, on the clock
    remaining = max(1.0, deadline - time.perf_counter())
    spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, timeout=remaining))
    epochs: list[dict[str, float]] = []

    def on_epoch(number: int, epoch: int, metrics: dict[str, float]) -> None:
        epochs.append({"trial": number, "epoch": epoch, "train_s": metrics["epoch_time_s"],
                       "eval_s": metrics["eval_time_s"]})
        if time.perf_counter() >= deadline:
            raise StopTrial("timeout", "the benchmark's wall budget is spent")

    run_study(spec, space, task, events=RunEvents(on_epoch=on_epoch))
    study = open_study(spec, create=False)
    events, counts = [], {"complete": 0, "pruned": 0, "cut": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE and t.datetime_complete is not None:
            at = t.datetime_complete.timestamp() - t0_wall
            if at <= args.budget:
                counts["complete"] += 1
                events.append({"t": at, "trial": t.number, "bleu": float(t.value or 0.0)})
            else:
                counts["cut"] += 1
        elif t.state == TrialState.PRUNED:
            counts["cut" if t.user_attrs.get("reason") == "timeout" else "pruned"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed"] += 1
    return {"events": sorted(events, key=lambda e: e["t"]), "counts": counts, "epochs": epochs}


def run_plain_tpe(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Plain Optuna TPE, no pruning, the naive loop and its 30-clip per-clip validation."""
    import copy

    import numpy as np
    import optuna
    import torch
    from sacrebleu.metrics import BLEU

    from benchmarks import naive
    from benchmarks.common import ROOT, load_demo
    from signtune.config import apply_overrides
    from signtune.data.dataset import subset_indices
    from signtune.space import parse, suggest
    from signtune.spec import load_spec
    from signtune.train.loop import evaluate

    demo = load_spec(str(ROOT / "studies" / "demo" / "study.yaml"))
    space = parse(ROOT / "search_spaces" / "sign2text.yaml")
    root = Path(args.data).resolve()
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    base, data = load_demo(root, subset=args.subset, overrides={"run.epochs": args.epochs})  # tokenizer, val refs
    rows = naive.read_rows(root / base.data.train_manifest)
    keep = subset_indices(len(rows), args.subset, base.data.subset_seed)
    dataset = naive.FeatureFileDataset([rows[i] for i in keep], root / base.data.features_dir, data.tokenizer)
    val_rows = naive.read_rows(root / base.data.val_manifest)[:NAIVE_VAL_CLIPS]

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for params in demo.enqueue:
        study.enqueue_trial(dict(params))
    models: dict[int, dict[str, Any]] = {}
    epochs: list[dict[str, float]] = []
    cut = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal cut
        cfg = apply_overrides(base, suggest(trial, space))
        scores: list[float] = []
        mark = [time.perf_counter()]  # when the epoch's training started

        def on_epoch(epoch: int, model: Any, loss: float) -> None:
            trained = time.perf_counter()
            feats = [np.load(root / base.data.features_dir / f"{cid}.npy") for cid, _ in val_rows]
            hyps = [data.tokenizer.decode(ids) for ids in naive.greedy(model, feats, max_len=cfg.eval.max_len)]
            scores.append(BLEU().corpus_score(hyps, [[text for _, text in val_rows]]).score)
            now = time.perf_counter()
            epochs.append(
                {"trial": trial.number, "epoch": epoch, "train_s": trained - mark[0], "eval_s": now - trained}
            )
            mark[0] = now
            if time.perf_counter() >= deadline:
                raise optuna.TrialPruned("the benchmark's wall budget is spent")

        try:
            model = naive.train(cfg, dataset, feature_dim=data.feature_dim, vocab_size=data.tokenizer.vocab_size,
                                on_epoch=on_epoch)
        except optuna.TrialPruned:
            cut += 1
            raise
        models[trial.number] = {"state": copy.deepcopy(model.state_dict()), "cfg": cfg,
                                "t": time.perf_counter() - t0, "bleu30": scores[-1]}
        return scores[-1]

    while time.perf_counter() < deadline:
        study.optimize(objective, n_trials=1, catch=(Exception,))
    # Off the clock: every finished trial's final model on the whole val split.
    from signtune.models import build_model

    events = []
    for number, m in sorted(models.items()):
        model = build_model(m["cfg"].model, feature_dim=data.feature_dim, vocab_size=data.tokenizer.vocab_size)
        model.load_state_dict(m["state"])
        scores, _ = evaluate(model, data.val, data.tokenizer, m["cfg"].eval, torch.device("cpu"), beam_size=1)
        events.append({"t": m["t"], "trial": number, "bleu": float(scores["bleu"]), "bleu30": m["bleu30"]})
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False))
    counts = {"complete": len(models), "pruned": 0, "cut": cut, "failed": failed}
    return {"events": events, "counts": counts, "epochs": epochs}


def _child(setup: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"signtune-tune-{setup}-") as tmp:
        if setup == "plain_tpe":
            return run_plain_tpe(seed, args)
        return run_ours(setup, seed, args, Path(tmp))


# ----------------------------------------------------------------------------------------------
# Summaries


def same_proposals(seeds: int, trials: int) -> bool:
    """Whether the three set-ups' samplers propose the same first ``trials`` configs for every seed.

    Replays the samplers (the demo spec's TPE, plain TPE, random; the spec's enqueued config
    first) on the demo search space without training anything.
    """
    import optuna

    from benchmarks.common import ROOT
    from signtune.space import parse, suggest
    from signtune.spec import load_spec
    from signtune.study import build_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    demo = load_spec(str(ROOT / "studies" / "demo" / "study.yaml"))
    space = parse(demo.search_space)
    for seed in range(seeds):
        samplers = [
            build_sampler(dataclasses.replace(demo, sampler=dataclasses.replace(demo.sampler, seed=seed))),
            optuna.samplers.TPESampler(seed=seed),
            optuna.samplers.RandomSampler(seed=seed),
        ]
        proposals = []
        for sampler in samplers:
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for params in demo.enqueue:
                study.enqueue_trial(dict(params))
            configs = []
            for i in range(trials):
                trial = study.ask()
                configs.append(suggest(trial, space))
                study.tell(trial, float(i))
            proposals.append(configs)
        if not proposals[0] == proposals[1] == proposals[2]:
            return False
    return True



def best_at(events: list[dict[str, Any]], t: float, key: str = "bleu") -> float:
    values = [e[key] for e in events if e["t"] <= t]
    return max(values) if values else 0.0


def time_to(events: list[dict[str, Any]], target: float, budget: float) -> float:
    """First time the best-so-far reaches ``target``; ``inf`` when not within the budget."""
    return next((e["t"] for e in sorted(events, key=lambda e: e["t"]) if e["bleu"] >= target and e["t"] <= budget),
                math.inf)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def summarize(runs: dict[str, list[dict[str, Any]]], *, target: float, budget: float,
              marks: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setup, seeds in runs.items():
        ttt = [time_to(r["events"], target, budget) for r in seeds]
        epochs = [e for r in seeds for e in r["epochs"]]
        train_s, eval_s = sum(e["train_s"] for e in epochs), sum(e["eval_s"] for e in epochs)
        out[setup] = {
            "time_to_target_s": ttt,
            "median_time_to_target_s": _median(ttt),
            "reached": f"{sum(math.isfinite(x) for x in ttt)}/{len(ttt)}",
            "best_at": {str(int(m)): _median([best_at(r["events"], m) for r in seeds]) for m in marks},
            "best_at_runs": {str(int(m)): [round(best_at(r["events"], m), 1) for r in seeds] for m in marks},
            "trials_complete": [r["counts"]["complete"] for r in seeds],
            "trials_pruned": [r["counts"]["pruned"] for r in seeds],
            "trials_cut": [r["counts"]["cut"] for r in seeds],
            "trials_failed": [r["counts"]["failed"] for r in seeds],
            "eval_share_of_epochs": eval_s / (train_s + eval_s) if epochs else math.nan,
            "epochs_run": len(epochs),
            "mean_epoch_s": (train_s + eval_s) / len(epochs) if epochs else math.nan,
        }
        if setup == "plain_tpe":
            out[setup]["best30_at"] = {str(int(m)): _median([best_at(r["events"], m, "bleu30") for r in seeds])
                                       for m in marks}
    return out


def speedup(slow: float, fast: float, budget: float) -> tuple[float, str]:
    """``slow / fast`` of two median times to target, and how to read it."""
    if not math.isfinite(fast):
        return math.nan, "ours did not reach the target"
    if not math.isfinite(slow):
        return budget / fast, f">= {budget / fast:.1f}x (the other set-up did not reach it within {budget:.0f} s)"
    return slow / fast, f"{slow / fast:.1f}x"


def write_html(runs: dict[str, list[dict[str, Any]]], path: Path, *, target: float, budget: float,
               title: str, plotlyjs: bool | str = True) -> None:
    import plotly.graph_objects as go

    colors = {"ours": "#1f77b4", "plain_tpe": "#d62728", "random": "#7f7f7f"}
    fig = go.Figure()
    for setup, seeds in runs.items():
        for i, r in enumerate(seeds):
            xs, ys, best = [0.0], [0.0], 0.0
            for e in sorted(r["events"], key=lambda e: e["t"]):
                best = max(best, e["bleu"])
                xs.append(e["t"])
                ys.append(best)
            xs.append(budget)
            ys.append(best)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name=f"{setup} seed {r['seed']}",
                                     legendgroup=setup, line={"color": colors.get(setup), "width": 2},
                                     opacity=0.55 + 0.45 / (i + 1)))
    fig.add_hline(y=target, line_dash="dot", annotation_text=f"target {target:g}")
    fig.update_layout(title=title, xaxis_title="wall seconds", yaxis_title="best val BLEU-4 so far (whole val split)",
                      template="plotly_white")
    path.write_text(fig.to_html(include_plotlyjs=plotlyjs, full_html=True), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# The benchmark


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--budget", type=float, default=180.0, help="wall seconds per set-up and seed")
    ap.add_argument("--marks", default="60,120,180", help="wall budgets at which best BLEU is reported")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target", type=float, default=5.0, help="val BLEU-4 to reach")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (generated when missing)")
    ap.add_argument("--inline", action="store_true",
                    help="run the set-ups one after another in this process (the smoke test), not side by side")
    ap.add_argument("--html", type=Path, default=Path(__file__).with_name("tuning_efficiency.html"))
    ap.add_argument("--json", type=Path, default=None, help="also write the whole result here")
    ap.add_argument("--redraw", type=Path, default=None,
                    help="draw --html from a --json result instead of running (plotly.js linked from its CDN)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child is not None:
        result = _child(args.child, args.seed, args)
        args.out.write_text(json.dumps(result))
        return result
    if args.redraw is not None:
        saved = json.loads(args.redraw.read_text(encoding="utf-8"))
        write_html(saved["runs"], args.html, target=saved["target_bleu"], budget=saved["budget_s"],
                   title=f"Best-so-far val BLEU: {saved['problem']}; {saved['seeds']} seed(s)", plotlyjs="cdn")
        print(f"drew {args.html} from {args.redraw}")
        return saved

    from benchmarks.common import ROOT, command, demo_data, loadavg, n_train, synth_params

    args.data = demo_data(args.data)
    setups = [s for s in args.setups.split(",") if s]
    marks = [float(m) for m in args.marks.split(",") if m]
    result: dict[str, Any] = {"command": command("tuning_efficiency", argv), "load_before": loadavg()}
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("MLFLOW_TRACKING_URI", None)
    loads = []
    with tempfile.TemporaryDirectory(prefix="signtune-tune-") as tmp:
        for seed in range(args.seeds):
            if args.inline:
                for setup in setups:
                    runs[setup].append({**_child(setup, seed, args), "seed": seed})
                continue
            procs = {}
            for setup in setups:  # all set-ups of a seed at once: the same machine load for each
                out = Path(tmp) / f"{setup}-{seed}.json"
                cmd = [sys.executable, "-m", "benchmarks.tuning_efficiency", "--child", setup, "--seed", str(seed),
                       "--out", str(out), "--subset", str(args.subset), "--epochs", str(args.epochs),
                       "--budget", str(args.budget), "--data", str(args.data)]
                procs[setup] = (subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True), out)
            loads.append(loadavg())
            for setup, (proc, out) in procs.items():
                log, _ = proc.communicate()
                if proc.returncode != 0 or not out.is_file():
                    raise RuntimeError(
                        f"tuning child {setup} seed {seed} failed (exit {proc.returncode}):\n{log[-3000:]}"
                    )
                run = json.loads(out.read_text())
                run["seed"] = seed
                runs[setup].append(run)
            line = "  ".join(
                f"{s}: {runs[s][-1]['counts']['complete']} done, best {best_at(runs[s][-1]['events'], args.budget):.1f}"
                for s in setups)
            print(f"seed {seed}: {line}", flush=True)
    summary = summarize(runs, target=args.target, budget=args.budget, marks=marks)
    result.update({
        "problem": f"demo data, subset {args.subset} ({round(n_train(args.data) * args.subset)} train clips), "
                   f"{args.epochs} epochs per trial, whole val split ({synth_params(args.data)['n_val']} clips)",
        "budget_s": args.budget, "seeds": args.seeds, "target_bleu": args.target, "marks": marks,
        "summary": summary, "load_during": loads, "load_after": loadavg(),
        "runs": {s: [{"seed": r["seed"], "events": r["events"], "counts": r["counts"]} for r in rs]
                 for s, rs in runs.items()},
    })
    checks = []
    if "ours" in summary:
        fast = summary["ours"]["median_time_to_target_s"]
        for other, need in (("plain_tpe", TARGET_VS_PLAIN), ("random", TARGET_VS_RANDOM)):
            if other not in summary:
                continue
            ratio, text = speedup(summary[other]["median_time_to_target_s"], fast, args.budget)
            checks.append({"vs": other, "ratio": ratio, "text": text, "need": need,
                           "met": math.isfinite(ratio) and ratio >= need})
    result["checks"] = checks
    result["met"] = bool(checks) and all(c["met"] for c in checks)
    if args.html:
        write_html(runs, args.html, target=args.target, budget=args.budget,
                   title=f"Best-so-far val BLEU: {result['problem']}; {args.seeds} seed(s)")
        result["html"] = str(args.html)
    for s, v in summary.items():
        print(f"{s:10s} time to BLEU {args.target:g}: {v['time_to_target_s']} "
              f"(median {v['median_time_to_target_s']:.0f})  best at {v['best_at']}  "
              f"complete {v['trials_complete']} pruned {v['trials_pruned']}")
    for c in checks:
        print(f"ours vs {c['vs']}: {c['text']} (need >= {c['need']:g}x) {'MET' if c['met'] else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
