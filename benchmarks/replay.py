"""Replay benchmark: tuning strategies driven against recorded or synthetic learning curves.

    python -m benchmarks.replay                         # the whole comparison (RESULTS.md section 9)
    python -m benchmarks.replay --seeds 5 --quick       # a smoke run

No model is trained. Each strategy is the product's own stack: the spec's sampler and pruner
from ``signtune.study`` (``build_sampler``, ``build_pruner``, ``resolve_strategy``), its
enqueued known-good configs (``enqueue_defaults``), the search space's ``suggest``, and the
objective's intermediate value (``pruning_value``). Simulated workers ask, report each epoch,
ask the pruner and tell, in the order a real worker does, against a simulated clock: a trial's
epoch takes the time its curve says, and with several workers the next event is always the
earliest one. The study lives in Optuna's in-memory storage.

Problems:

- ``demo``: the demo study's learning-curve table (``benchmarks/data/lc_demo.jsonl``, built by
  ``python -m benchmarks.lc_table``: real training at subset 0.3, 8 epochs). A config in the
  table replays its own curve; any other is answered by a random-forest surrogate fitted on
  the table (config -> per-epoch val BLEU, val loss and CPU seconds), as surrogate benchmarks
  such as YAHPO Gym and LCBench do. The clock is the table's CPU seconds (one thread).
- ``mfh3-good``, ``mfh3-bad``, ``mfh6-good``, ``mfh6-bad``: the MF-Hartmann functions of
  mf-prior-bench (3-d and 6-d, its "good" fidelity-correlation preset: bias 2.5, noise 2.0; 100
  fidelity levels, cost 0.05 + 0.95 (z/100)^2), implemented from their published definition
  (``benchmarks/mfhartmann.py``), with a good prior (the optimum, perturbed) or a bad one (the
  worst of 10,000 random points) as the known-good config. Epoch e of 8 evaluates fidelity
  ``round(100 ** (e / 8))``; its cost is the cost's increase from the previous epoch.

The target of each problem is the 95th percentile of random configs' final objective (the
table's random rows; 10,000 uniform points of the Hartmann function at full fidelity): a
config better than 19 of 20 random ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, random_configs

OUT = ROOT / "benchmarks" / "replay"
EPOCHS = 8


# ----------------------------------------------------------------------------------------------
# Problems


@dataclasses.dataclass
class Curve:
    """One config's learning curve: per epoch, every metric the task would report, and its cost."""

    metrics: list[dict[str, float]]
    cost: list[float]


@dataclasses.dataclass
class Problem:
    name: str
    space: Any  # signtune.space.SearchSpace
    metric: str  # the objective's metric
    direction: str  # its better direction
    aux_metric: str | None  # a second metric the task reports (val_loss for the demo)
    curve: Callable[[dict[str, Any]], Curve]
    final: Callable[[list[dict[str, float]]], float]  # a trial's objective from its reports
    known_good: list[dict[str, Any]]  # priors: the spec's known-good configs plus published recipes
    baseline_known_good: list[dict[str, Any]]  # what the spec enqueues
    target: float
    target_rule: str
    time_unit: str
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def reached(self, value: float) -> bool:
        return value >= self.target if self.direction == "maximize" else value <= self.target


def _encode(space: Any, params: dict[str, Any]) -> list[float]:
    """A config as numbers for the surrogate: log10 for log params, choice index or number for
    categoricals, and -1 for an inactive conditional parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    row: list[float] = []
    for p in space.params:
        d = p.distribution
        if p.name not in params:
            row.append(-1.0)
            continue
        v = params[p.name]
        if isinstance(d, CategoricalDistribution):
            row.append(
                float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float(d.choices.index(v))
            )
        elif isinstance(d, FloatDistribution | IntDistribution) and d.log:
            row.append(math.log10(float(v)))
        else:
            row.append(float(v))
    return row


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class TableSurrogate:
    """Config -> curve from the learning-curve table: exact rows replay, others are predicted."""

    def __init__(self, rows: list[dict[str, Any]], space: Any, *, seed: int = 0) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.space = space
        full = [r for r in rows if r["status"] == "complete" and len(r["epochs"]) == EPOCHS]
        self.exact = {_key(r["params"]): r for r in full}
        self.x = np.array([_encode(space, r["params"]) for r in full])
        self.y = np.array([self._targets(r) for r in full])
        self.model = RandomForestRegressor(n_estimators=64, min_samples_leaf=2, random_state=seed, n_jobs=1)
        self.model.fit(self.x, self.y)
        self.cache: dict[str, Curve] = {}
        self.n_rows = len(full)
        self.n_diverged = sum(r["status"] == "diverged" for r in rows)

    @staticmethod
    def _targets(row: dict[str, Any]) -> list[float]:
        ep = row["epochs"]
        return [e["val_bleu"] for e in ep] + [e["val_loss"] for e in ep] + [e["cpu_s"] for e in ep]

    @staticmethod
    def _curve(y: Sequence[float]) -> Curve:
        bleu, loss, cpu = y[:EPOCHS], y[EPOCHS : 2 * EPOCHS], y[2 * EPOCHS :]
        metrics = [{"val_bleu": float(b), "val_loss": float(v)} for b, v in zip(bleu, loss, strict=True)]
        return Curve(metrics, [max(0.01, float(c)) for c in cpu])

    def __call__(self, params: dict[str, Any]) -> Curve:
        key = _key(params)
        hit = self.cache.get(key)
        if hit is None:
            row = self.exact.get(key)
            y = self._targets(row) if row is not None else self._predict(np.array([_encode(self.space, params)]))[0]
            hit = self.cache[key] = self._curve(y)
        return hit

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """The forest's mean prediction, tree by tree: ``RandomForestRegressor.predict`` costs
        ~20 ms a call in joblib overhead, as much as the sampler, for one row."""
        x32 = x.astype(np.float32)
        return np.mean([tree.tree_.predict(x32)[:, :, 0] for tree in self.model.estimators_], axis=0)

    def random_finals(self, n: int, seed: int) -> np.ndarray:
        """The best val BLEU the surrogate gives ``n`` uniform random configs of the space."""
        x = np.array([_encode(self.space, params) for params in random_configs(self.space, n, seed)])
        return np.asarray(self.model.predict(x)[:, :EPOCHS].max(axis=1))

    def held_out_rank_correlation(self, folds: int = 5, seed: int = 0) -> dict[str, float]:
        """Spearman correlation of predicted and recorded final BLEU and val loss, k-fold."""
        from scipy.stats import spearmanr
        from sklearn.base import clone
        from sklearn.model_selection import KFold

        pred = np.zeros_like(self.y)
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(self.x):
            pred[test] = clone(self.model).fit(self.x[train], self.y[train]).predict(self.x[test])
        best_true, best_pred = self.y[:, :EPOCHS].max(axis=1), pred[:, :EPOCHS].max(axis=1)
        loss_true, loss_pred = self.y[:, 2 * EPOCHS - 1], pred[:, 2 * EPOCHS - 1]
        return {
            "best_val_bleu": float(spearmanr(best_true, best_pred).statistic),
            "final_val_loss": float(spearmanr(loss_true, loss_pred).statistic),
            "epoch1_val_loss_vs_best_bleu": float(spearmanr(-self.y[:, EPOCHS], best_true).statistic),
            "epoch1_val_bleu_vs_best_bleu": float(spearmanr(self.y[:, 0], best_true).statistic),
        }


def demo_problem(table: Path) -> Problem:
    from benchmarks.lc_table import RECIPE, demo_enqueued, read_table
    from signtune.space import parse

    space = parse(ROOT / "search_spaces" / "sign2text.yaml")
    rows = read_table(table)
    surrogate = TableSurrogate(rows, space)
    finals = [
        max(e["val_bleu"] for e in r["epochs"])
        for r in rows
        if r["id"] not in ("enqueued", "recipe") and r["status"] == "complete"  # the random rows, r000 ...
    ]
    # The replay answers unseen configs with the surrogate, so the target is the 95th percentile
    # of what it gives random configs (the table's own is reported beside it).
    target = float(np.percentile(surrogate.random_finals(2000, seed=1), 95))
    enqueued = demo_enqueued()
    return Problem(
        name="demo",
        space=space,
        metric="val_bleu",
        direction="maximize",
        aux_metric="val_loss",
        curve=surrogate,
        final=lambda reports: max(m["val_bleu"] for m in reports),
        known_good=[enqueued, {**enqueued, **RECIPE}],
        baseline_known_good=[enqueued],
        target=round(target, 1),
        target_rule=(
            "95th percentile of the surrogate's best val BLEU over 2,000 random configs "
            f"(of the table's {len(finals)} random configs: {np.percentile(finals, 95):.1f})"
        ),
        time_unit="CPU s",
        notes={
            "table_rows": len(rows),
            "surrogate_rows": surrogate.n_rows,
            "diverged": surrogate.n_diverged,
            "rank_correlation": surrogate.held_out_rank_correlation(),
        },
    )


def hartmann_problem(dims: int, prior: str) -> Problem:
    from benchmarks.mfhartmann import MFHartmann, hartmann_space

    fn = MFHartmann(dims)
    space = hartmann_space(dims)
    zs = [round(fn.z_max ** (e / EPOCHS)) for e in range(1, EPOCHS + 1)]
    costs = [fn.cost(z) - (fn.cost(zs[i - 1]) if i else 0.0) for i, z in enumerate(zs)]

    def curve(params: dict[str, Any]) -> Curve:
        x = tuple(float(params[f"x{i}"]) for i in range(dims))
        return Curve([{"value": fn(z, x)} for z in zs], costs)

    finals = fn.random_finals(10_000, seed=0)
    prior_cfg = fn.good_prior(seed=0) if prior == "good" else fn.bad_prior(seed=0)
    cfg = {f"x{i}": v for i, v in enumerate(prior_cfg)}
    return Problem(
        name=f"mfh{dims}-{prior}",
        space=space,
        metric="value",
        direction="minimize",
        aux_metric=None,
        curve=curve,
        final=lambda reports: reports[-1]["value"],
        known_good=[cfg],
        baseline_known_good=[cfg],
        target=round(float(np.percentile(finals, 5)), 3),
        target_rule="5th percentile (minimised) of 10,000 uniform random configs at full fidelity",
        time_unit="cost units",
        notes={"prior": cfg, "prior_value": fn(fn.z_max, tuple(prior_cfg)), "optimum_value": fn(fn.z_max, fn.optimum)},
    )


# ----------------------------------------------------------------------------------------------
# Strategies: spec sections, as a researcher would write them


def strategies(problem: Problem) -> dict[str, dict[str, Any]]:
    """Each set-up's spec sections. ``enqueue``: ``known`` (the problem's priors), ``baseline``
    (what today's demo spec enqueues) or none."""
    aux = problem.aux_metric
    new_pruner: dict[str, Any] = {"name": "auto"}
    if aux:
        new_pruner["metric"] = aux

    def rungs(name: str, min_resource: int, factor: int, enqueue: str | None = "baseline") -> dict[str, Any]:
        """``new`` with other rungs: successive halving or Hyperband on the same metric."""
        pruner = {**new_pruner, "name": name, "min_resource": min_resource, "reduction_factor": factor}
        return {"sampler": {"name": "auto"}, "pruner": pruner, "enqueue": enqueue}

    return {
        "random": {"sampler": {"name": "random"}, "pruner": {"name": "none"}, "enqueue": None},
        "today": {
            "sampler": {"name": "tpe", "n_startup_trials": 8},
            "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
            "enqueue": "baseline",
        },
        "optuna": {  # optuna.create_study(): TPESampler() and MedianPruner() defaults
            "sampler": {"name": "tpe", "n_startup_trials": 10},
            "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
            "enqueue": None,
        },
        "hyperband": {
            "sampler": {"name": "tpe", "n_startup_trials": 10},
            "pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
            "enqueue": None,
        },
        "gp": {"sampler": {"name": "gp", "n_startup_trials": 10}, "pruner": {"name": "none"}, "enqueue": None},
        # The demo as shipped: auto sampler and pruner, pruning on val_loss, its enqueued config.
        # ``auto`` resolves to successive halving on an early signal (val_loss), to the median
        # pruner on the objective itself (MF-Hartmann reports only its objective).
        "new": {"sampler": {"name": "auto"}, "pruner": new_pruner, "enqueue": "baseline"},
        "new-recipe": {"sampler": {"name": "auto"}, "pruner": new_pruner, "enqueue": "known"},
        # Variants that isolate one choice of ``new`` (not run unless named in --setups).
        "new-no-priors": {"sampler": {"name": "auto"}, "pruner": new_pruner, "enqueue": None},
        "new-objective-signal": {"sampler": {"name": "auto"}, "pruner": {"name": "auto"}, "enqueue": "baseline"},
        "new-median": {  # the median pruner of ``auto`` on the objective, here on the early signal too
            "sampler": {"name": "auto"},
            "pruner": {**new_pruner, "name": "median", "n_startup_trials": 3, "n_warmup_steps": 0},
            "enqueue": "baseline",
        },
        "new-sha-objective": {  # ``new``'s halving on the objective itself (early BLEU; Hartmann's low fidelities)
            "sampler": {"name": "auto"},
            "pruner": {"name": "sha", "min_resource": 1, "reduction_factor": 3},
            "enqueue": "baseline",
        },
        "new-sha4": rungs("sha", 1, 4),
        "new-sha2": rungs("sha", 2, 3),
        "new-hyperband": rungs("hyperband", 1, 3),
        "new-hyperband2": rungs("hyperband", 2, 3),
        "new-startup-10": {
            "sampler": {"name": "tpe", "n_startup_trials": 10},
            "pruner": new_pruner,
            "enqueue": "baseline",
        },
    }


def make_spec(problem: Problem, setup: dict[str, Any], trials: int, seed: int) -> Any:
    from signtune.spec import load_spec

    enqueue = {"known": problem.known_good, "baseline": problem.baseline_known_good, None: []}[setup["enqueue"]]
    spec = load_spec(
        ROOT / "studies" / "demo" / "study.yaml",
        overrides={
            "sampler": {**setup["sampler"], "seed": seed},
            "pruner": setup["pruner"],
            "objective": {"metric": problem.metric, "direction": problem.direction},
            "budget.trials": trials,
            "fixed.run.epochs": EPOCHS,
            "enqueue": None,
            "storage": "sqlite:///:memory:",
        },
    )
    return dataclasses.replace(spec, enqueue=tuple(enqueue))


# ----------------------------------------------------------------------------------------------
# The simulated workers


@dataclasses.dataclass
class TrialLog:
    number: int
    params: dict[str, Any]
    state: str  # complete | pruned
    value: float | None
    started: float
    ended: float
    epochs: int


def replay(problem: Problem, spec: Any, workers: int) -> list[TrialLog]:
    """Run ``spec``'s strategy on ``problem`` with ``workers`` simulated workers; every trial."""
    import optuna
    from optuna.trial import TrialState

    from signtune.space import suggest
    from signtune.study import build_pruner, build_sampler, enqueue_defaults, pruning_value

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.InMemoryStorage()
    studies = [
        optuna.create_study(
            study_name="replay",
            storage=storage,
            sampler=build_sampler(spec, seed_offset=w),
            pruner=build_pruner(spec),
            direction=problem.direction,
            load_if_exists=True,
        )
        for w in range(workers)
    ]
    enqueue_defaults(studies[0], spec)
    budget = spec.budget.trials
    asked = 0
    logs: list[TrialLog] = []
    running: dict[int, tuple[Any, Curve, dict[str, Any], float, list[dict[str, float]]]] = {}
    events: list[tuple[float, int]] = [(0.0, w) for w in range(workers)]  # (time, worker) when it next acts
    heapq.heapify(events)
    while events:
        now, w = heapq.heappop(events)
        if w not in running:  # idle: ask for a trial
            if asked >= budget:
                continue
            asked += 1
            trial = studies[w].ask()
            params = suggest(trial, problem.space)
            curve = problem.curve(params)
            running[w] = (trial, curve, params, now, [])
            heapq.heappush(events, (now + curve.cost[0], w))
            continue
        trial, curve, params, started, reports = running[w]
        epoch = len(reports) + 1
        metrics = curve.metrics[epoch - 1]
        reports.append(metrics)
        trial.report(pruning_value(spec, metrics), epoch)
        done = epoch == len(curve.metrics)
        if not done and trial.should_prune():
            studies[w].tell(trial, state=TrialState.PRUNED)
            logs.append(TrialLog(trial.number, params, "pruned", None, started, now, epoch))
        elif done:
            value = problem.final(reports)
            studies[w].tell(trial, value)
            logs.append(TrialLog(trial.number, params, "complete", value, started, now, epoch))
        else:
            heapq.heappush(events, (now + curve.cost[epoch], w))
            continue
        del running[w]
        heapq.heappush(events, (now, w))
    return logs


def best_so_far(problem: Problem, logs: list[TrialLog]) -> list[tuple[float, float]]:
    """(time, best objective) at each improvement, over complete trials in time order."""
    out: list[tuple[float, float]] = []
    for log in sorted((t for t in logs if t.state == "complete"), key=lambda t: (t.ended, t.number)):
        assert log.value is not None
        if not out or problem.better(log.value, out[-1][1]):
            out.append((log.ended, log.value))
    return out


def time_to_target(problem: Problem, curve: list[tuple[float, float]]) -> float:
    for t, v in curve:
        if problem.reached(v):
            return t
    return math.inf


# ----------------------------------------------------------------------------------------------
# The comparison


@dataclasses.dataclass(frozen=True)
class Cell:
    problem: str
    setup: str
    trials: int
    workers: int


def _problem(name: str, table: str) -> Problem:
    if name == "demo":
        return demo_problem(Path(table))
    dims, prior = int(name[3]), name.split("-")[1]
    return hartmann_problem(dims, prior)


_PROBLEMS: dict[str, Problem] = {}


def _run_cell(args: tuple[Cell, list[int], str]) -> tuple[Cell, list[dict[str, Any]]]:
    cell, seeds, table = args
    import torch

    torch.set_num_threads(1)  # one thread per pool process (GPSampler runs on torch)
    problem = _PROBLEMS.get(cell.problem)
    if problem is None:
        problem = _PROBLEMS[cell.problem] = _problem(cell.problem, table)
    setup = strategies(problem)[cell.setup]
    out = []
    for seed in seeds:
        started = time.process_time()
        logs = replay(problem, make_spec(problem, setup, cell.trials, seed), cell.workers)
        curve = best_so_far(problem, logs)
        out.append(
            {
                "seed": seed,
                "ttt": time_to_target(problem, curve),
                "curve": curve,
                "end": max(t.ended for t in logs),
                "complete": sum(t.state == "complete" for t in logs),
                "pruned": sum(t.state == "pruned" for t in logs),
                "epochs": sum(t.epochs for t in logs),
                "duplicates": len(logs) - len({_key(t.params) for t in logs}),
                "cpu_s": time.process_time() - started,
            }
        )
    return cell, out


def plan(args: argparse.Namespace) -> list[Cell]:
    """The cells to run. Without ``--full``: every problem at the smallest budget with 1 worker,
    the demo also with 4 workers and at the largest budget with 1 worker; GPSampler (about 0.5 s
    an ask, some 100x TPE's) only at the smallest budget with 1 worker, on ``--gp-seeds`` seeds."""
    cells: list[Cell] = []
    small = min(args.trials)
    for problem in args.problems:
        for setup in args.setups:
            for trials in args.trials:
                for workers in args.workers:
                    if not args.full:
                        if setup == "gp" and (trials != small or workers != 1):
                            continue
                        if problem != "demo" and (trials != small or workers != 1):
                            continue
                        if problem == "demo" and trials != small and workers != 1:
                            continue
                    cells.append(Cell(problem, setup, trials, workers))
    return cells


def seeds_for(cell: Cell, args: argparse.Namespace) -> list[int]:
    return list(range(args.gp_seeds if cell.setup == "gp" and not args.full else args.seeds))


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def summarise(problems: dict[str, Problem], results: dict[Cell, list[dict[str, Any]]]) -> dict[str, Any]:
    rows = []
    for cell, runs in results.items():
        ttt = [r["ttt"] for r in runs]
        rows.append(
            {
                **dataclasses.asdict(cell),
                "seeds": len(runs),
                "median_ttt": _median(ttt),
                "reached": sum(math.isfinite(t) for t in ttt) / len(ttt),
                "median_end": _median([r["end"] for r in runs]),
                "median_best": _median([r["curve"][-1][1] if r["curve"] else math.nan for r in runs]),
                "pruned_share": sum(r["pruned"] for r in runs) / max(1, sum(r["pruned"] + r["complete"] for r in runs)),
                "duplicates": sum(r["duplicates"] for r in runs),
                "cpu_s": sum(r["cpu_s"] for r in runs),
            }
        )
    return {"rows": rows}


def ratio(a: float, b: float) -> float:
    """How many times faster ``b`` is than ``a`` (time a / time b); inf when only b reached it."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if math.isinf(b):
        return 0.0
    return a / b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--trials", type=int, nargs="+", default=[30, 100])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--problems", nargs="+", default=["demo", "mfh3-good", "mfh3-bad", "mfh6-good", "mfh6-bad"])
    p.add_argument(
        "--setups",
        nargs="+",
        default=["random", "today", "optuna", "hyperband", "gp", "new", "new-median", "new-sha-objective"],
    )
    p.add_argument("--table", default=str(ROOT / "benchmarks" / "data" / "lc_demo.jsonl"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--full", action="store_true", help="every problem x budget x workers, GPSampler on --seeds seeds")
    p.add_argument("--gp-seeds", type=int, default=10, help="seeds for GPSampler without --full")
    p.add_argument("--out", default=str(OUT), help="folder for results.json and the curves")
    p.add_argument("--quick", action="store_true", help="30 trials, 1 worker: a smoke run")
    p.add_argument("--into", default=None, help="splice the section into this RESULTS.md (benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.workers = [30], [1]
    started = time.perf_counter()
    from benchmarks.replay_report import run_and_report

    return run_and_report(args, started)


if __name__ == "__main__":
    sys.exit(main())
