"""Runs the replay comparison's cells on a process pool and writes its tables and curves.

``python -m benchmarks.replay`` is the entry point; this module holds the pool, the tables
(markdown, for RESULTS.md), the target checks and the anytime curves (HTML with plotly, PNG with
matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.replay import Cell, Problem, _problem, _run_cell, plan, ratio, summarise

LABELS = {
    "random": "random search, no pruning",
    "today": "today's defaults (TPE 8 start-up + median on the objective, warm-up 2)",
    "optuna": "plain Optuna defaults (TPESampler() + MedianPruner())",
    "hyperband": "TPE + Hyperband (min 1 epoch, factor 3)",
    "gp": "GPSampler, no pruning",
    "new": "new defaults (sampler: auto, pruner: auto on val_loss for the demo, known-good configs first)",
}


def run_and_report(args: argparse.Namespace, started: float) -> int:
    cells = plan(args)
    seeds = list(range(args.seeds))
    problems = {name: _problem(name, args.table) for name in args.problems}
    # Slow cells first, so the pool's two processes finish together.
    weight = {"gp": 40.0, "random": 0.2}
    order = sorted(cells, key=lambda c: -c.trials * c.workers**0.2 * weight.get(c.setup, 1.0))
    chunks = [(c, seeds[i : i + 10], args.table) for c in order for i in range(0, len(seeds), 10)]
    results: dict[Cell, list[dict[str, Any]]] = {c: [] for c in cells}
    with mp.get_context("fork").Pool(args.jobs) as pool:
        for n, (cell, runs) in enumerate(pool.imap_unordered(_run_cell, chunks), start=1):
            results[cell].extend(runs)
            if n % 10 == 0 or n == len(chunks):
                print(f"[{time.perf_counter() - started:5.0f}s] {n}/{len(chunks)} chunks", flush=True)
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    wall = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(problems, results)
    summary.update(
        {
            "command": "python -m benchmarks.replay " + " ".join(_argv(args)),
            "wall_s": round(wall, 1),
            "jobs": args.jobs,
            "machine": f"{platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}",
            "problems": {
                name: {
                    "target": p.target,
                    "target_rule": p.target_rule,
                    "time_unit": p.time_unit,
                    "notes": p.notes,
                }
                for name, p in problems.items()
            },
        }
    )
    curves = {
        f"{c.problem}|{c.setup}|{c.trials}|{c.workers}": [r["curve"] for r in runs] for c, runs in results.items()
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=_json) + "\n")
    md = markdown(summary, problems)
    (out / "results.md").write_text(md)
    plot(problems, curves, out)
    print(md)
    print(f"replay: {len(cells)} cells x {len(seeds)} seeds in {wall:.0f} s with {args.jobs} processes -> {out}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--seeds {args.seeds}"]
    if args.full:
        out.append("--full")
    return out


def _json(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o))


def _fmt_t(t: float) -> str:
    return "not reached" if math.isinf(t) else f"{t:,.0f}" if t >= 10 else f"{t:.2f}"


def _fmt_ratio(r: float) -> str:
    if math.isnan(r):
        return "n/a"
    if math.isinf(r):
        return "only the new reached it"
    return f"{r:.2f}x"


def markdown(summary: dict[str, Any], problems: dict[str, Problem]) -> str:
    rows = summary["rows"]
    lines: list[str] = []
    for name, p in problems.items():
        lines.append(
            f"**{name}** — target {p.direction}d objective {'>=' if p.direction == 'maximize' else '<='} {p.target} "
            f"({p.target_rule}); time in {p.time_unit}."
        )
        lines.append("")
        lines.append(
            "| trials | workers | set-up | median time to target | reached | median best | pruned "
            "| vs random | vs today |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        mine = [r for r in rows if r["problem"] == name]
        for trials in sorted({r["trials"] for r in mine}):
            for workers in sorted({r["workers"] for r in mine}):
                group = {r["setup"]: r for r in mine if r["trials"] == trials and r["workers"] == workers}
                for setup, r in group.items():
                    vs_random = ratio(group["random"]["median_ttt"], r["median_ttt"]) if "random" in group else math.nan
                    vs_today = ratio(group["today"]["median_ttt"], r["median_ttt"]) if "today" in group else math.nan
                    lines.append(
                        f"| {trials} | {workers} | {setup} | {_fmt_t(r['median_ttt'])} | {r['reached']:.0%} "
                        f"| {r['median_best']:.3g} | {r['pruned_share']:.0%} "
                        f"| {_fmt_ratio(vs_random)} | {_fmt_ratio(vs_today)} |"
                    )
        lines.append("")
    return "\n".join(lines)


def plot(problems: dict[str, Problem], curves: dict[str, list[list[tuple[float, float]]]], out: Path) -> None:
    """Median best-so-far over seeds against time, one panel per (problem, trials, workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = sorted(
        {tuple(k.split("|")[i] for i in (0, 2, 3)) for k in curves}, key=lambda k: (k[0], int(k[1]), int(k[2]))
    )
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig_png, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    fig_html = make_subplots(
        rows=rows, cols=cols, subplot_titles=[f"{p} · {t} trials · {w} workers" for p, t, w in panels]
    )
    palette = {
        "random": "#7f7f7f",
        "today": "#1f77b4",
        "optuna": "#9467bd",
        "hyperband": "#ff7f0e",
        "gp": "#2ca02c",
        "new": "#d62728",
    }
    for i, (pname, trials, workers) in enumerate(panels):
        problem = problems[pname]
        ax = axes[i // cols][i % cols]
        keys = [
            k for k in curves if k.split("|")[0] == pname and k.split("|")[2] == trials and k.split("|")[3] == workers
        ]
        end = max((c[-1][0] for k in keys for c in curves[k] if c), default=1.0)
        grid = np.linspace(0, end, 200)
        for k in keys:
            setup = k.split("|")[1]
            med = _median_curve(curves[k], grid, problem)
            ax.plot(grid, med, label=setup, color=palette.get(setup))
            fig_html.add_trace(
                go.Scatter(
                    x=grid, y=med, name=setup, legendgroup=setup, showlegend=i == 0, line={"color": palette.get(setup)}
                ),
                row=i // cols + 1,
                col=i % cols + 1,
            )
        ax.axhline(problem.target, color="black", lw=0.6, ls="--")
        ax.set_title(f"{pname} · {trials} trials · {workers} w", fontsize=9)
        ax.set_xlabel(problem.time_unit, fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig_png.suptitle("Replay: median best-so-far over seeds (dashed: target)", fontsize=11)
    fig_png.tight_layout()
    fig_png.savefig(out / "curves.png", dpi=80)
    plt.close(fig_png)
    fig_html.update_layout(height=300 * rows, title="Replay: median best-so-far over seeds")
    fig_html.write_html(out / "curves.html", include_plotlyjs="cdn", full_html=True)


def _median_curve(runs: list[list[tuple[float, float]]], grid: np.ndarray, problem: Problem) -> np.ndarray:
    worst = -math.inf if problem.direction == "maximize" else math.inf
    values = np.full((len(runs), len(grid)), np.nan)
    for i, curve in enumerate(runs):
        times = np.array([t for t, _ in curve]) if curve else np.array([])
        vals = np.array([v for _, v in curve]) if curve else np.array([])
        idx = np.searchsorted(times, grid, side="right") - 1
        values[i] = np.where(idx >= 0, vals[np.clip(idx, 0, None)] if len(vals) else worst, worst)
    med = np.median(values, axis=0)
    return np.where(np.isfinite(med), med, np.nan)
