"""Runs the replay comparison's cells on a process pool and writes its tables and curves.

``python -m benchmarks.replay`` is the entry point; this module holds the pool, the tables
(markdown, for RESULTS.md), the target checks and the anytime curves (HTML with plotly, PNG with
matplotlib).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import multiprocessing as mp
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.replay import Cell, Problem, _problem, _run_cell, plan, ratio, seeds_for, strategies, summarise

HERE = Path(__file__).resolve().parent
SECTION_MD = HERE / "replay" / "RESULTS_REPLAY.md"  # the section RESULTS.md embeds
RESULTS_MD = HERE / "RESULTS.md"
LIVE_JSON = HERE / "data" / "live_confirm.json"  # the live confirmation on the real trainer
BEGIN = "<!-- replay:begin (python -m benchmarks.replay writes this section) -->"
END = "<!-- replay:end -->"

LABELS = {
    "random": "random search, no pruning",
    "today": "today's defaults (TPE 8 start-up + median on the objective, warm-up 2)",
    "optuna": "plain Optuna defaults (TPESampler() + MedianPruner())",
    "hyperband": "TPE + Hyperband (min 1 epoch, factor 3)",
    "gp": "GPSampler, no pruning",
    "new": (
        "new defaults (sampler: auto; pruner: auto, i.e. successive halving on val_loss for the demo, the median "
        "on the objective for MF-Hartmann; the spec's known-good config first)"
    ),
    "new-median": "new defaults with the median pruner (3 start-up trials, from epoch 1) instead of halving",
    "new-sha-objective": "new defaults with successive halving on the objective itself instead of an early signal",
    "new-recipe": "new defaults plus SSVP-SLT's published T5 recipe queued second",
}


def run_and_report(args: argparse.Namespace, started: float) -> int:
    cells = plan(args)
    seeds = list(range(args.seeds))
    problems = {name: _problem(name, args.table) for name in args.problems}
    # Slow cells first, so the pool's two processes finish together.
    weight = {"gp": 40.0, "random": 0.2}
    order = sorted(cells, key=lambda c: -c.trials * c.workers**0.2 * weight.get(c.setup, 1.0))
    same = same_runs(cells, problems)
    chunks = [
        (c, cell_seeds[i : i + 10], args.table)
        for c in order
        if c not in same
        for cell_seeds in [seeds_for(c, args)]
        for i in range(0, len(cell_seeds), 10)
    ]
    results: dict[Cell, list[dict[str, Any]]] = {c: [] for c in cells}
    with mp.get_context("fork").Pool(args.jobs) as pool:
        for n, (cell, runs) in enumerate(pool.imap_unordered(_run_cell, chunks), start=1):
            results[cell].extend(runs)
            if n % 10 == 0 or n == len(chunks):
                print(f"[{time.perf_counter() - started:5.0f}s] {n}/{len(chunks)} chunks", flush=True)
    for cell, source in same.items():
        results[cell] = copy.deepcopy(results[source])
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
    section = render_section(summary, problems, md, out)
    print(section)
    if args.into:
        from benchmarks.gpu.render import splice

        section_md = out / SECTION_MD.name  # benchmarks/replay/RESULTS_REPLAY.md with the default --out
        section_md.write_text(section, encoding="utf-8")
        target = Path(args.into)
        target.write_text(splice(target.read_text(encoding="utf-8"), section, BEGIN, END), encoding="utf-8")
        print(f"wrote {section_md} and its copy in {target}")
    print(f"replay: {len(cells)} cells x {len(seeds)} seeds in {wall:.0f} s with {args.jobs} processes -> {out}")
    return 0


def same_runs(cells: list[Cell], problems: dict[str, Problem]) -> dict[Cell, Cell]:
    """Cells whose runs are another cell's, to the seed: a set-up that queues no prior runs the
    same on a function's good- and bad-prior problems (``mfh3-bad`` takes ``mfh3-good``'s runs)."""
    planned = set(cells)
    out: dict[Cell, Cell] = {}
    for c in cells:
        if not c.problem.endswith("-bad") or strategies(problems[c.problem])[c.setup]["enqueue"] is not None:
            continue
        source = dataclasses.replace(c, problem=c.problem.removesuffix("-bad") + "-good")
        if source in planned:
            out[c] = source
    return out


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--seeds {args.seeds}", f"--gp-seeds {args.gp_seeds}"]
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
            "| trials | workers | set-up | seeds | median time to target | reached | median best | pruned "
            "| vs random | vs today |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        mine = [r for r in rows if r["problem"] == name]
        for trials in sorted({r["trials"] for r in mine}):
            for workers in sorted({r["workers"] for r in mine}):
                group = {r["setup"]: r for r in mine if r["trials"] == trials and r["workers"] == workers}
                for setup, r in group.items():
                    vs_random = ratio(group["random"]["median_ttt"], r["median_ttt"]) if "random" in group else math.nan
                    vs_today = ratio(group["today"]["median_ttt"], r["median_ttt"]) if "today" in group else math.nan
                    lines.append(
                        f"| {trials} | {workers} | {setup} | {r['seeds']} | {_fmt_t(r['median_ttt'])} "
                        f"| {r['reached']:.0%} "
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
        "new-median": "#e377c2",
        "new-sha-objective": "#8c564b",
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


def embedded_section(section_md: Path = SECTION_MD) -> str:
    """The replay section between its markers, as ``python -m benchmarks`` puts it into RESULTS.md."""
    text = section_md.read_text(encoding="utf-8") if section_md.is_file() else "## 9. Replay benchmark\n\nPending.\n"
    return f"{BEGIN}\n\n{text.strip()}\n\n{END}"


def _row(summary: dict[str, Any], problem: str, setup: str, trials: int, workers: int) -> dict[str, Any] | None:
    for r in summary["rows"]:
        if (r["problem"], r["setup"], r["trials"], r["workers"]) == (problem, setup, trials, workers):
            return r
    return None


def checks(summary: dict[str, Any]) -> list[list[str]]:
    """The issue's targets, each measured, with MET / NOT MET."""
    out: list[list[str]] = []

    def status(ok: bool | None) -> str:
        return "not measured" if ok is None else "**MET**" if ok else "**NOT MET**"

    new, rnd, today = (_row(summary, "demo", s, 30, 1) for s in ("new", "random", "today"))
    if new and rnd:
        r = ratio(rnd["median_ttt"], new["median_ttt"])
        out.append(["demo, 30 trials, 1 worker: new >= 3x faster to target than random", _fmt_ratio(r), status(r >= 3)])
    if new and today:
        r = ratio(today["median_ttt"], new["median_ttt"])
        out.append(
            ["demo, 30 trials, 1 worker: new >= 1.5x faster than today's defaults", _fmt_ratio(r), status(r >= 1.5)]
        )
    if new:
        out.append(
            [
                "demo, 30 trials, 1 worker: target reached in >= 90% of seeds",
                f"{new['reached']:.0%}",
                status(new["reached"] >= 0.9),
            ]
        )
    for dims in (3, 6):
        good_new, good_rnd = (
            _row(summary, f"mfh{dims}-good", "new", 30, 1),
            _row(summary, f"mfh{dims}-good", "random", 30, 1),
        )
        if good_new and good_rnd:
            r = ratio(good_rnd["median_ttt"], good_new["median_ttt"])
            out.append(
                [f"MF-Hartmann {dims}-d, good prior: new >= 3x faster than random", _fmt_ratio(r), status(r >= 3)]
            )
        bad_new, bad_rnd = (
            _row(summary, f"mfh{dims}-bad", "new", 30, 1),
            _row(summary, f"mfh{dims}-bad", "random", 30, 1),
        )
        if bad_new and bad_rnd:
            r = ratio(bad_rnd["median_ttt"], bad_new["median_ttt"])
            slower = 1 / r if r and math.isfinite(r) else math.inf
            shown = f"new takes {slower:.2f}x random's time" if math.isfinite(slower) else _fmt_ratio(r)
            out.append(
                [
                    f"MF-Hartmann {dims}-d, bad prior: new at most 1.25x slower than random",
                    shown,
                    status(slower <= 1.25),
                ]
            )
    ranks = {w: _ranking(summary, "demo", 30, w) for w in (1, 4)}
    if ranks[1] and ranks[4]:
        out.append(
            [
                "demo, 30 trials: the same ranking with 4 workers as with 1",
                f"1: {' < '.join(ranks[1])}; 4: {' < '.join(ranks[4])}",
                status(ranks[1] == ranks[4]),
            ]
        )
    return out


def _ranking(summary: dict[str, Any], problem: str, trials: int, workers: int) -> list[str]:
    """Set-ups fastest first: by median time to target, then share reached, then median best."""
    rows = [r for r in summary["rows"] if (r["problem"], r["trials"], r["workers"]) == (problem, trials, workers)]
    sign = 1
    return [r["setup"] for r in sorted(rows, key=lambda r: (r["median_ttt"], -r["reached"], -sign * r["median_best"]))]


def _priors_line(demo: Problem) -> str:
    """What the demo's known-good configs score in the table, against the target."""
    labels = ("the demo's enqueued config", "the same with SSVP-SLT's recipe")
    finals = [demo.final(demo.curve(cfg).metrics) for cfg in demo.known_good]
    scored = "; ".join(f"{label} scores {v:.1f} BLEU" for label, v in zip(labels, finals, strict=True))
    if all(not demo.reached(v) for v in finals):
        why = "both are below the target at this fidelity, so `new` pays for one poor full trial first, as a "
        why += "study with a wrong prior would"
    else:
        why = "a prior at or above the target reaches it with the first trial"
    return f"Priors on the demo: {scored} (target {demo.target:g}): {why}."


def live_lines(path: Path = LIVE_JSON) -> list[str]:
    """The live confirmation (``benchmarks.tuning_efficiency --json``): real training, side by side."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text(encoding="utf-8"))
    s, marks = r["summary"], [str(int(m)) for m in r["marks"]]

    def t(x: float) -> str:
        return f"{x:.0f}" if math.isfinite(x) else "-"

    lines = [
        "### Live confirmation on the real trainer",
        "",
        f"Command: `{r['command']}`. {r['problem']}; target val BLEU {r['target_bleu']:g} (the replay's demo "
        f"target); {r['budget_s']:.0f} wall s per set-up and seed, {r['seeds']} seeds; the set-ups of a seed run at "
        "the same time, one torch thread each (**CPU**, 2 cores). `ours` = the demo spec as shipped (`auto`), "
        "`today` = the previous defaults, `random` = random search without pruning; all queue the demo's "
        f"enqueued config first. Load average at each seed's start: {r.get('load_during')}.",
        "",
        "| set-up | time to target s: median (per seed) | reached | "
        + " | ".join(f"best BLEU at {m} s: median [per seed]" for m in marks)
        + " | trials complete / pruned per seed |",
        "|---|---|---|" + "---|" * len(marks) + "---|",
    ]
    for name, v in s.items():
        ttt = [float(x) for x in v["time_to_target_s"]]
        best = " | ".join(f"{v['best_at'][m]:.1f} {v['best_at_runs'][m]}" for m in marks)
        lines.append(
            f"| {name} | {t(float(v['median_time_to_target_s']))} ({', '.join(t(x) for x in ttt)}) | {v['reached']} | "
            f"{best} | {v['trials_complete']} / {v['trials_pruned']} |"
        )
    lines += [
        "",
        "Best-so-far curves per seed: `replay/live_confirm.html`, drawn from the JSON by `python -m "
        "benchmarks.tuning_efficiency --redraw benchmarks/data/live_confirm.json --html "
        "benchmarks/replay/live_confirm.html` (plotly.js linked from its CDN, 12 KB instead of 4.8 MB).",
    ]
    if "ours" in s and len(s) > 1:
        last = marks[-1]
        first = all(
            float(s["ours"]["median_time_to_target_s"]) <= float(o["median_time_to_target_s"]) for o in s.values()
        )
        first = first and math.isfinite(float(s["ours"]["median_time_to_target_s"]))
        holds = all(s["ours"]["best_at"][last] >= o["best_at"][last] for o in s.values())
        lines += [
            "",
            "| target | status |",
            "|---|---|",
            f"| live: ours reaches the target first in the median seed | {'**MET**' if first else '**NOT MET**'} |",
            f"| live: ours holds the best median BLEU at {last} s | {'**MET**' if holds else '**NOT MET**'} |",
        ]
    return [*lines, ""]


def render_section(summary: dict[str, Any], problems: dict[str, Problem], tables: str, out: Path) -> str:
    demo = problems.get("demo")
    lines = [
        "## 9. Replay benchmark: tuning strategies on recorded and synthetic learning curves",
        "",
        f"Command: `{summary['command']}` — {summary['wall_s']:.0f} s wall with {summary['jobs']} processes on "
        f"{summary['machine']} (**CPU**; no model is trained: the clock is simulated).",
        "",
        "Set-ups: " + "; ".join(f"`{k}` = {v}" for k, v in LABELS.items()) + ".",
        "",
        "Set-ups that queue no prior (`random`, `optuna`, `hyperband`, `gp`) run the same on a function's good- "
        "and bad-prior problems, seed for seed, so they are run once per MF-Hartmann function and their good- "
        "and bad-prior rows are the same runs.",
        "",
        "| target | measured | status |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in checks(summary)),
        "",
    ]
    if demo is not None:
        n = demo.notes
        rc = n["rank_correlation"]
        lines += [
            f"Demo table: {n['table_rows']} configs trained to 8 epochs at subset 0.3 "
            f"({n['surrogate_rows']} complete, {n['diverged']} diverged; `python -m benchmarks.lc_table`). "
            f"Surrogate (random forest, 5-fold held out): Spearman rank correlation {rc['best_val_bleu']:.2f} "
            f"for the best val BLEU, {rc['final_val_loss']:.2f} for the final val loss. "
            f"Early signal in the table itself: epoch-1 val loss ranks the configs' best BLEU with "
            f"Spearman {rc['epoch1_val_loss_vs_best_bleu']:.2f}, epoch-1 val BLEU with "
            f"{rc['epoch1_val_bleu_vs_best_bleu']:.2f}.",
            "",
            _priors_line(demo),
            "",
        ]
    lines += [
        tables,
        "",
        f"Curves: `{out.name}/curves.png`, `{out.name}/curves.html` (median best-so-far over seeds).",
        "",
    ]
    lines += live_lines()
    return "\n".join(lines) + "\n"
