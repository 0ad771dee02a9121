"""The replay benchmark's harness and the strategy defaults it chose (``sampler/pruner: auto``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from benchmarks import replay
from benchmarks.lc_table import configs
from benchmarks.mfhartmann import MFHartmann

from signtune.spec import PrunerSpec, SamplerSpec, load_spec
from signtune.study import (
    build_pruner,
    build_sampler,
    pruning_metric,
    pruning_value,
    resolve_strategy,
    startup_trials,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "studies" / "demo" / "study.yaml"


def _fake_row(cid: str, params: dict, epochs: int = replay.EPOCHS) -> dict:
    """A curve shaped like the demo's: higher lr (to 5e-3) and more layers learn faster."""
    skill = -abs(math.log10(params["optim.lr"]) - math.log10(5e-3)) + 0.3 * params["model.num_decoder_layers"]
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "val_bleu": round(max(0.0, 10 * (skill + 1) * e / epochs), 3),
                "val_loss": round(4 - (skill + 1) * e / epochs, 3),
                "train_loss": 1.0,
                "wall_s": 1.0,
                "cpu_s": 1.0 + params["model.d_model"] / 128,
            }
        )
    return {"id": cid, "params": params, "status": "complete", "n_params": 1, "epochs": rows}


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("table") / "lc.jsonl"
    path.write_text("".join(json.dumps(_fake_row(cid, p)) + "\n" for cid, p in configs(40)))
    return path


@pytest.fixture(scope="module")
def demo(tiny_table: Path) -> replay.Problem:
    return replay.demo_problem(tiny_table)


def _run(problem: replay.Problem, setup: str, trials: int, workers: int, seed: int) -> list[replay.TrialLog]:
    spec = replay.make_spec(problem, replay.strategies(problem)[setup], trials, seed)
    return replay.replay(problem, spec, workers)


def _trace(logs: list[replay.TrialLog]) -> list[tuple]:
    return [(t.number, json.dumps(t.params, sort_keys=True), t.state, t.value, t.started, t.ended) for t in logs]


def test_harness_is_deterministic_per_seed(demo: replay.Problem) -> None:
    a = _run(demo, "new", 20, 2, seed=3)
    b = _run(demo, "new", 20, 2, seed=3)
    c = _run(demo, "new", 20, 2, seed=4)
    assert _trace(a) == _trace(b)
    assert _trace(a) != _trace(c)
    assert len(a) == 20


def test_table_rows_replay_their_own_curve(demo: replay.Problem, tiny_table: Path) -> None:
    row = json.loads(tiny_table.read_text().splitlines()[5])
    curve = demo.curve(row["params"])
    assert [m["val_bleu"] for m in curve.metrics] == [e["val_bleu"] for e in row["epochs"]]
    assert curve.cost == [e["cpu_s"] for e in row["epochs"]]


def test_simulated_clock_runs_workers_in_parallel(demo: replay.Problem) -> None:
    one = _run(demo, "random", 12, 1, seed=0)
    four = _run(demo, "random", 12, 4, seed=0)
    # Random search without pruning trains the same 12 configs either way (the sampler's seed
    # offset changes only which worker draws what, so compare the total work instead).
    assert sum(t.ended - t.started for t in one) == pytest.approx(max(t.ended for t in one))
    assert max(t.ended for t in four) < 0.5 * sum(t.ended - t.started for t in four)
    starts = sorted(t.started for t in four)[:4]
    assert starts == [0.0, 0.0, 0.0, 0.0]  # four trials run at once from the start


def test_known_good_configs_are_tried_first(demo: replay.Problem) -> None:
    logs = sorted(_run(demo, "new", 10, 1, seed=0), key=lambda t: t.number)
    assert [t.params for t in logs[: len(demo.baseline_known_good)]] == demo.baseline_known_good
    logs = sorted(_run(demo, "new-recipe", 10, 4, seed=0), key=lambda t: t.number)
    assert len(demo.known_good) == 2  # the spec's config, then SSVP-SLT's recipe
    assert [t.params for t in logs[:2]] == demo.known_good
    assert all(t.params not in demo.known_good for t in logs[2:])
    baseline = sorted(_run(demo, "random", 10, 1, seed=0), key=lambda t: t.number)
    assert baseline[0].params not in demo.known_good  # plain random search has no priors


def test_no_duplicate_suggestions_with_four_workers(demo: replay.Problem) -> None:
    logs = _run(demo, "new", 60, 4, seed=1)
    keys = [json.dumps(t.params, sort_keys=True) for t in logs]
    assert len(keys) == 60
    assert len(set(keys)) == len(keys)


def test_pruning_on_val_loss_prunes_from_the_first_epoch(demo: replay.Problem) -> None:
    logs = _run(demo, "new", 40, 1, seed=0)
    pruned = [t for t in logs if t.state == "pruned"]
    assert pruned, "successive halving on val_loss pruned nothing"
    assert min(t.epochs for t in pruned) == 1  # the first rung is epoch 1: bad curves stop there
    assert {t.epochs for t in pruned} <= {1, 3}  # rungs at epochs 1 and 3 of 8
    spec = replay.make_spec(demo, replay.strategies(demo)["new"], 40, 0)
    assert pruning_metric(spec) == ("val_loss", "minimize")


def test_time_to_target_and_best_so_far() -> None:
    problem = replay.hartmann_problem(3, "good")
    logs = [
        replay.TrialLog(0, {}, "complete", -1.0, 0.0, 2.0, 8),
        replay.TrialLog(1, {}, "pruned", None, 2.0, 2.5, 1),
        replay.TrialLog(2, {}, "complete", -3.5, 2.5, 4.0, 8),
        replay.TrialLog(3, {}, "complete", -2.0, 4.0, 6.0, 8),
    ]
    curve = replay.best_so_far(problem, logs)
    assert curve == [(2.0, -1.0), (4.0, -3.5)]
    assert replay.time_to_target(problem, curve) == 4.0  # the target is about -2.97
    assert math.isinf(replay.time_to_target(problem, curve[:1]))


def test_mf_hartmann_matches_mf_prior_bench() -> None:
    ref = json.loads((ROOT / "benchmarks" / "data" / "mfhartmann_reference.json").read_text())
    fns = {3: MFHartmann(3), 6: MFHartmann(6)}
    assert len(ref["points"]) >= 100
    for p in ref["points"]:
        assert fns[p["dims"]](p["z"], tuple(p["x"])) == pytest.approx(p["value"], abs=1e-12)
        assert MFHartmann.cost(p["z"]) == pytest.approx(p["cost"], abs=1e-12)
    assert fns[3](100, fns[3].optimum) == pytest.approx(-3.86278, abs=1e-4)
    assert fns[6](100, fns[6].optimum) == pytest.approx(-3.32237, abs=1e-4)


def test_hartmann_priors_are_good_and_bad() -> None:
    good, bad = replay.hartmann_problem(6, "good"), replay.hartmann_problem(6, "bad")
    assert good.notes["prior_value"] < good.target < bad.notes["prior_value"]


# --- the strategy choice, per budget ------------------------------------------------------------


def _spec(trials: int, epochs: int = 8, sampler: dict | None = None, pruner: dict | None = None):
    over = {"budget.trials": trials, "fixed.run.epochs": epochs}
    if sampler is not None:
        over["sampler"] = sampler
    if pruner is not None:
        over["pruner"] = pruner
    return load_spec(DEMO, over)


@pytest.mark.parametrize(("trials", "startup"), [(10, 4), (20, 4), (30, 4), (60, 6), (100, 10), (500, 10)])
def test_startup_is_sized_to_the_budget(trials: int, startup: int) -> None:
    spec = _spec(trials, sampler={"name": "auto"})
    assert startup_trials(spec) == startup
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == startup
    assert startup_trials(_spec(trials, sampler={"name": "tpe", "n_startup_trials": 8})) == 8  # explicit wins


@pytest.mark.parametrize(
    ("epochs", "metric", "pruner"),
    [
        (1, "val_loss", optuna.pruners.NopPruner),
        (2, None, optuna.pruners.NopPruner),
        (8, "val_loss", optuna.pruners.SuccessiveHalvingPruner),  # an early signal: halving from epoch 1
        (8, None, optuna.pruners.MedianPruner),  # the objective itself: the gentler median
        (8, "val_bleu", optuna.pruners.MedianPruner),  # naming the objective's metric is the same
        (20, "val_loss", optuna.pruners.SuccessiveHalvingPruner),
    ],
)
def test_auto_pruner_follows_the_epochs_and_the_signal(epochs: int, metric: str | None, pruner: type) -> None:
    spec = _spec(30, epochs, pruner={"name": "auto", "metric": metric})
    built = build_pruner(spec)
    assert isinstance(built, pruner)
    resolved = resolve_strategy(spec)
    assert resolved.sampler.name == "tpe"
    if isinstance(built, optuna.pruners.SuccessiveHalvingPruner):
        assert (resolved.pruner.min_resource, resolved.pruner.reduction_factor) == (1, 3)
    if isinstance(built, optuna.pruners.MedianPruner):
        assert (resolved.pruner.n_startup_trials, resolved.pruner.n_warmup_steps) == (3, 0)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("sha", optuna.pruners.SuccessiveHalvingPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_explicit_pruners_keep_working(name: str, cls: type) -> None:
    spec = _spec(30, pruner={"name": name})
    assert isinstance(build_pruner(spec), cls)
    assert resolve_strategy(spec).pruner == spec.pruner


@pytest.mark.parametrize(
    ("name", "cls"),
    [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler), ("gp", optuna.samplers.GPSampler)],
)
def test_explicit_samplers_keep_working(name: str, cls: type) -> None:
    assert isinstance(build_sampler(_spec(30, sampler={"name": name})), cls)


def test_pruning_value_is_signed_for_the_study_direction() -> None:
    spec = _spec(30, pruner={"name": "median", "metric": "val_loss"})
    assert spec.objective.direction == "maximize"
    assert pruning_value(spec, {"val_bleu": 3.0, "val_loss": 2.5}) == -2.5
    same = dataclasses.replace(spec, pruner=PrunerSpec(name="median"))
    assert pruning_value(same, {"val_bleu": 3.0, "val_loss": 2.5}) == 3.0
    told = dataclasses.replace(spec, pruner=PrunerSpec(name="median", metric="val_chrf", direction="maximize"))
    assert pruning_value(told, {"val_chrf": 30.0}) == 30.0


def test_defaults_are_auto() -> None:
    assert SamplerSpec().name == "auto" and SamplerSpec().n_startup_trials is None
    assert PrunerSpec().name == "auto"


def test_replay_summary_ratios() -> None:
    assert replay.ratio(100.0, 25.0) == 4.0
    assert replay.ratio(math.inf, 10.0) == math.inf
    assert replay.ratio(10.0, math.inf) == 0.0
    assert math.isnan(replay.ratio(math.inf, math.inf))
    assert np.isfinite(replay.ratio(3.0, 1.5))


# --- the pruning-signal check (study status, export's advice.md) --------------------------------


def _finished(first: list[float], finals: list[float]) -> list[optuna.trial.FrozenTrial]:
    return [
        optuna.trial.create_trial(value=v, intermediate_values={1: a, 2: a, 3: a}, params={}, distributions={})
        for a, v in zip(first, finals, strict=True)
    ]


def test_a_weak_first_epoch_signal_is_reported() -> None:
    from signtune.advice import SIGNAL_MIN_TRIALS, pruning_signal

    spec = _spec(30, pruner={"name": "auto", "metric": "val_loss"})
    finals = [float(i) for i in range(10)]
    assert pruning_signal(_finished([f + 0.5 for f in finals], finals), spec) == []  # it ranks them: quiet
    reversed_ = pruning_signal(_finished([-f for f in finals], finals), spec)
    assert [a.param for a in reversed_] == ["pruner"]
    assert "Spearman -1.00 over 10 complete trials" in reversed_[0].finding
    assert "sha prunes on it from epoch 1" in reversed_[0].finding and "val_loss" in reversed_[0].finding
    few = finals[: SIGNAL_MIN_TRIALS - 1]
    assert pruning_signal(_finished([-f for f in few], few), spec) == []  # too few to judge
    pruned = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 99.0})
    assert len(pruning_signal([*_finished([-f for f in finals], finals), pruned], spec)) == 1  # complete only
    # The median pruner with warm-up 2 judges epoch 2; no pruner, nothing to judge.
    warm = _spec(30, pruner={"name": "median", "n_warmup_steps": 2})
    late = pruning_signal(_finished([-f for f in finals], finals), warm)[0]
    assert "at epoch 2" in late.finding and "n_warmup_steps: 3" in late.fix  # a later start than its own
    assert pruning_signal(_finished([-f for f in finals], finals), _spec(30, 2)) == []


def test_runs_without_priors_are_shared_by_good_and_bad_problems() -> None:
    from benchmarks.replay_report import same_runs

    problems = {name: replay.hartmann_problem(3, name.split("-")[1]) for name in ("mfh3-good", "mfh3-bad")}
    cells = [replay.Cell(p, s, 30, 1) for p in problems for s in ("random", "gp", "new")]
    same = same_runs(cells, problems)
    assert same == {
        replay.Cell("mfh3-bad", "random", 30, 1): replay.Cell("mfh3-good", "random", 30, 1),
        replay.Cell("mfh3-bad", "gp", 30, 1): replay.Cell("mfh3-good", "gp", 30, 1),
    }  # ``new`` queues the prior, so its bad-prior runs are its own
    # ... and the shared runs are what running them would give
    spec = {
        name: replay.make_spec(problems[name], replay.strategies(problems[name])["random"], 12, 3) for name in problems
    }
    runs = {name: replay.replay(problems[name], spec[name], 1) for name in problems}
    assert [t.params for t in runs["mfh3-good"]] == [t.params for t in runs["mfh3-bad"]]


def test_live_confirmation_renders_from_its_json(tmp_path: Path) -> None:
    from benchmarks.replay_report import LIVE_JSON, live_lines

    text = "\n".join(live_lines(LIVE_JSON))
    assert "| ours | 472 (519, 373, 472) | 3/3 |" in text
    assert "| random | - (-, 242, -) | 1/3 |" in text  # a seed that never reached it shows as -
    assert "reaches the target first in the median seed | **MET**" in text
    assert live_lines(tmp_path / "absent.json") == []
