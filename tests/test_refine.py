"""`study refine` and the search-space advice: the derivation rules, the child study it writes,
its lineage, and every bad input (exit 2, one message, nothing written).

Parent studies are built without training: trials are added to a SQLite study with
``optuna.trial.create_trial``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from signtune.advice import advise
from signtune.cli import app
from signtune.errors import ConfigError, StudyError
from signtune.refine import (
    IMPORTANCE_MIN_TRIALS,
    NEGLIGIBLE_IMPORTANCE,
    crowded_edges,
    param_importances,
    refine_space,
)
from signtune.space import SearchSpace, parse

ROOT = Path(__file__).resolve().parents[1]

SPACE = """\
# study run --study par
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  x: {type: float, low: 0.0, high: 1.0}
  layers: {type: int, low: 1, high: 6}
  width: {type: int, low: 16, high: 256, step: 16}
  drop: {type: float, low: 0.0, high: 0.5, step: 0.05}
  d_model: {type: categorical, choices: [64, 128, 192]}
  sched: {type: categorical, choices: [cosine, linear, constant]}
  min_lr: {type: float, low: 0.0, high: 0.1, when: {sched: cosine}}
"""

PLUGIN = "def objective(config, report, ctx):\n    return {'score': 0.0}\n"

PARENT = """\
# study run --study par
name: par
task: refplug:objective
search_space: ../../search_spaces/rich.yaml
data: {root: data}
fixed: {run.epochs: 3, run.device: cpu}
objective: {metric: score, direction: maximize}
sampler: {name: tpe, seed: 0, n_startup_trials: 5}
pruner: {name: none}
budget: {trials: 10}
tracking: {enabled: false}
"""

# The top trials (best first): lr near the high edge, x mid-range, few layers, d_model all 64,
# sched cosine or linear, never constant.
TOP = [
    {
        "optim.lr": 0.009,
        "x": 0.5,
        "layers": 2,
        "width": 64,
        "drop": 0.1,
        "d_model": 64,
        "sched": "cosine",
        "min_lr": 0.02,
    },
    {"optim.lr": 0.0085, "x": 0.45, "layers": 3, "width": 48, "drop": 0.15, "d_model": 64, "sched": "linear"},
    {
        "optim.lr": 0.0095,
        "x": 0.55,
        "layers": 2,
        "width": 80,
        "drop": 0.1,
        "d_model": 64,
        "sched": "cosine",
        "min_lr": 0.04,
    },
]
REST = [
    {"optim.lr": 0.0002, "x": 0.1, "layers": 6, "width": 256, "drop": 0.45, "d_model": 192, "sched": "constant"},
    {
        "optim.lr": 0.001,
        "x": 0.9,
        "layers": 5,
        "width": 16,
        "drop": 0.0,
        "d_model": 128,
        "sched": "cosine",
        "min_lr": 0.09,
    },
]


def space_of(tmp_path: Path, text: str = SPACE) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return parse(path)


def trials_of(
    space: SearchSpace, configs: list[dict[str, Any]], values: list[float] | None = None
) -> list[FrozenTrial]:
    """Complete trials, best first (values descending), numbered in order."""
    values = values or [100.0 - i for i in range(len(configs))]
    dists = space.distributions()
    out = []
    for i, (params, value) in enumerate(zip(configs, values, strict=True)):
        t = optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=value, state=TrialState.COMPLETE
        )
        t.number = i
        out.append(t)
    return out


# --- ranges ------------------------------------------------------------------------------------


def test_log_range_narrows_in_log_space_and_widens_past_the_crowded_high_edge(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    lr = r.params["optim.lr"]
    assert lr["log"] is True and lr["type"] == "float"
    assert lr["high"] > 1.0e-2  # widened past the edge the top-3 crowd
    assert 1.0e-4 < lr["low"] <= 0.0085  # narrowed from below, top-3 inside
    # the pad is a share of the *log* width: a linear pad would put low near 0.0085 - 0.05*0.01
    assert lr["low"] < 0.0085 / 1.3
    assert r.rules["optim.lr"] == "narrowed around top-3 (log); widened past high edge 0.01"


def test_linear_range_narrows_around_the_top_k(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    x = r.params["x"]
    assert 0.0 < x["low"] <= 0.45 and 0.55 <= x["high"] < 1.0
    assert "log" not in x
    assert r.rules["x"] == "narrowed around top-3 (linear)"


def test_int_range_stays_int_and_widens_by_whole_steps(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    layers = r.params["layers"]
    assert layers["type"] == "int" and isinstance(layers["low"], int) and isinstance(layers["high"], int)
    assert layers["low"] <= 2 and 3 <= layers["high"] < 6
    crowded = [{**c, "layers": 6} for c in TOP]
    r2 = refine_space(space, trials_of(space, crowded + REST), 3)
    assert r2.params["layers"]["high"] == 7  # one step past the edge 6, at least
    assert "widened past high edge 6" in r2.rules["layers"]


def test_step_ranges_stay_on_their_grid(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    width, drop = r.params["width"], r.params["drop"]
    assert width["step"] == 16 and (width["low"] - 16) % 16 == 0 and (width["high"] - 16) % 16 == 0
    assert width["low"] <= 48 and width["high"] >= 80 and (width["low"], width["high"]) != (16, 256)
    steps = [(v - 0.0) / 0.05 for v in (drop["low"], drop["high"])]
    assert all(math.isclose(s, round(s), abs_tol=1e-9) for s in steps), drop
    assert drop["low"] <= 0.1 and drop["high"] >= 0.15 and drop["high"] < 0.5


def test_widening_stops_at_the_natural_limits(tmp_path: Path) -> None:
    """A [0, 1] range stays inside [0, 1]; a non-negative one stays non-negative."""
    space = space_of(tmp_path)
    top = [{**c, "x": v} for c, v in zip(TOP, (0.99, 0.97, 0.995), strict=True)]
    r = refine_space(space, trials_of(space, top + REST), 3)
    assert r.params["x"]["high"] == 1.0
    assert "widened" not in r.rules["x"]
    low = [{**c, "drop": 0.0} for c in TOP]
    r2 = refine_space(space, trials_of(space, low + REST), 3)
    assert r2.params["drop"]["low"] == 0.0


def test_crowded_edges_are_log_aware(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    lr = space["optim.lr"].distribution
    assert crowded_edges(lr, [0.007, 0.009]) == (False, True)  # top 10% of the log range
    linear = optuna.distributions.FloatDistribution(1.0e-4, 1.0e-2)
    assert crowded_edges(linear, [0.007, 0.009]) == (False, False)  # 0.007 is only 70% up
    assert crowded_edges(lr, [1.2e-4, 1.4e-4]) == (True, False)


# --- choices and conditions ----------------------------------------------------------------------


def test_categorical_cut_to_choices_the_top_k_used(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    assert r.params["sched"]["choices"] == ["cosine", "linear"]
    assert r.rules["sched"] == "cut to choices used by top-3"


def test_ordered_number_choices_at_an_end_gain_the_neighbour_past_it(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    assert r.params["d_model"]["choices"] == [32, 64]  # 64 - 64 would be 0: geometric step
    assert "plus 32 past the low end" in r.rules["d_model"]
    high = [{**c, "d_model": 192} for c in TOP]
    r2 = refine_space(space, trials_of(space, high + REST), 3)
    assert r2.params["d_model"]["choices"] == [192, 256]


def test_conditional_param_keeps_its_when_while_its_choice_is_searched(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    r = refine_space(space, trials_of(space, TOP + REST), 3)
    assert r.params["min_lr"]["when"] == {"sched": "cosine"}
    assert r.params["min_lr"]["high"] < 0.1


def test_conditional_param_follows_its_fixed_or_cut_parent(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    linear = [{k: v for k, v in c.items() if k != "min_lr"} | {"sched": "linear"} for c in TOP]
    r = refine_space(space, trials_of(space, linear + REST), 3)
    assert r.fixed["sched"] == "linear" and "sched" not in r.params
    assert "min_lr" not in r.params and "min_lr" in r.dropped
    assert "never holds" in r.rules["min_lr"]
    cosine = [{**c, "sched": "cosine", "min_lr": 0.03} for c in TOP]
    r2 = refine_space(space, trials_of(space, cosine + REST), 3)
    assert r2.fixed["sched"] == "cosine"
    assert "when" not in r2.params["min_lr"]  # its condition now always holds


def test_negligible_importance_is_fixed_at_the_best_value(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    imp = {"optim.lr": 0.6, "x": 0.004, "layers": 0.3, "width": 0.05, "drop": 0.03, "d_model": 0.01, "sched": 0.006}
    r = refine_space(space, trials_of(space, TOP + REST), 3, imp)
    assert r.fixed["x"] == 0.5 and "x" not in r.params
    assert r.rules["x"] == f"fixed: importance 0.004 < {NEGLIGIBLE_IMPORTANCE}"
    assert r.fixed["sched"] == "cosine"  # the best trial's; min_lr follows (kept, unconditional)
    assert "when" not in r.params["min_lr"]
    assert "drop" in r.params  # 0.03 is above the threshold


def test_importance_fixes_at_most_half_the_params_least_important_first(tmp_path: Path) -> None:
    space = space_of(tmp_path)  # 8 params: at most 4 fixed
    imp = {
        "optim.lr": 0.9,
        "x": 0.001,
        "layers": 0.002,
        "width": 0.003,
        "drop": 0.004,
        "d_model": 0.005,
        "sched": 0.006,
    }
    r = refine_space(space, trials_of(space, TOP + REST), 3, imp)
    assert sorted(k for k, rule in r.rules.items() if "importance" in rule) == ["drop", "layers", "width", "x"]
    assert "d_model" in r.params and "sched" in r.params


def test_importances_need_enough_trials(tmp_path: Path) -> None:
    space = space_of(
        tmp_path, "params:\n  a: {type: float, low: 0.0, high: 1.0}\n  b: {type: float, low: 0.0, high: 1.0}\n"
    )
    study = optuna.create_study(direction="maximize")
    rng = __import__("random").Random(0)
    assert IMPORTANCE_MIN_TRIALS >= 2 * 2  # two params: the floor is the larger rule
    for i in range(IMPORTANCE_MIN_TRIALS):
        a, b = rng.random(), rng.random()
        if i == IMPORTANCE_MIN_TRIALS - 1:
            assert param_importances(study) is None  # one short of the minimum
        study.add_trial(
            optuna.trial.create_trial(params={"a": a, "b": b}, distributions=space.distributions(), value=10 * a)
        )
    imp = param_importances(study)
    assert imp is not None and imp["a"] > imp["b"]


def test_enqueued_configs_are_the_top_k_restricted_to_the_child(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    imp = {"optim.lr": 0.6, "x": 0.004, "layers": 0.3, "width": 0.05, "drop": 0.03, "d_model": 0.04, "sched": 0.3}
    r = refine_space(space, trials_of(space, TOP + REST), 3, imp)
    assert r.trials == [0, 1, 2]
    assert [e["optim.lr"] for e in r.enqueue] == [0.009, 0.0085, 0.0095]
    assert all("x" not in e for e in r.enqueue)  # fixed: goes to fixed:, not the queue
    assert "min_lr" in r.enqueue[0] and "min_lr" not in r.enqueue[1]  # trial 1 used linear


def test_fewer_complete_trials_than_top_k_is_refused(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    with pytest.raises(StudyError, match=r"needs at least --top-k 3 complete trials .* but has 2"):
        refine_space(space, trials_of(space, TOP[:2]), 3)


# --- advice ------------------------------------------------------------------------------------


def test_advice_names_edges_unused_choices_and_unimportant_params(tmp_path: Path) -> None:
    space = space_of(tmp_path)
    advice = advise(space, trials_of(space, TOP + REST), {"x": 0.001, "optim.lr": 0.9}, "par", 3)
    text = "\n".join(f"{a.param}: {a.finding} | {a.fix}" for a in advice)
    assert "optim.lr: top-3 (0.0085..0.0095) crowd the high edge 0.01 (log)" in text
    assert "d_model: top-3 all use 64, the low end" in text
    assert "sched: top-3 never use ['constant']" in text
    assert "x: no measurable importance (0.001 < 0.02)" in text
    assert all("`study refine --from par --top-k 3`" in a.fix for a in advice)
    assert not any(a.param in ("layers", "width") for a in advice), text
    assert advise(space, trials_of(space, TOP[:2]), None, "par", 3) == []


# --- the spec's lineage: key ------------------------------------------------------------------


def test_spec_lineage_is_validated(tmp_path: Path) -> None:
    from signtune.spec import load_spec

    (tmp_path / "s.yaml").write_text(SPACE)
    good = "search_space: s.yaml\nlineage: {parent_study: par, parent_trials: [3, 1], rules: {x: narrowed}}\n"
    (tmp_path / "study.yaml").write_text(good)
    spec = load_spec(tmp_path / "study.yaml")
    assert spec.lineage is not None and spec.lineage.links()[0] == {"study": "par", "storage": "", "trials": [3, 1]}
    (tmp_path / "study.yaml").write_text("search_space: s.yaml\nlineage: {parent_trials: [a], colour: red}\n")
    with pytest.raises(ConfigError) as exc:
        load_spec(tmp_path / "study.yaml")
    text = str(exc.value)
    assert "lineage.parent_study" in text and "lineage.parent_trials" in text and "lineage.colour" in text


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with study `par` (plug-in task) whose storage holds the TOP and REST trials."""
    (tmp_path / "studies" / "par").mkdir(parents=True)
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "rich.yaml").write_text(SPACE)
    (tmp_path / "studies" / "par" / "study.yaml").write_text(PARENT)
    (tmp_path / "refplug.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    add_parent_trials(tmp_path, TOP + REST)
    return tmp_path


def add_parent_trials(root: Path, configs: list[dict[str, Any]]) -> None:
    space = parse(root / "search_spaces" / "rich.yaml")
    study = optuna.create_study(
        study_name="par", storage=f"sqlite:///{root}/studies/par/study.db", direction="maximize", load_if_exists=True
    )
    study.set_user_attr("settings", {"budget.subset": 0.3, "fixed.run.epochs": 2, "budget.trials": 10})
    for t in trials_of(space, configs):
        study.add_trial(t)


def refine(*args: str) -> Any:
    return CliRunner().invoke(app, ["refine", *args])


def names(root: Path) -> list[str]:
    return optuna.get_all_study_names(f"sqlite:///{root}/studies/par/study.db")


def test_dry_run_prints_the_child_and_writes_nothing(project: Path) -> None:
    before = sorted(p.name for p in (project / "studies").iterdir())
    res = refine("--from", "par", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "name: par-refine" in res.output
    assert "optim.lr: {type: float" in res.output and "# narrowed around top-3 (log)" in res.output
    assert "parent_trials:" in res.output
    assert sorted(p.name for p in (project / "studies").iterdir()) == before
    assert names(project) == ["par"]


def test_refine_writes_the_child_study_with_its_lineage_and_queue(project: Path) -> None:
    from signtune.study import load_def

    res = refine("--from", "par", "--top-k", "3", "--trials", "7", "--subset", "0.5")
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("Next: study run --study studies/par-refine")
    child = project / "studies" / "par-refine"
    raw = yaml.safe_load((child / "study.yaml").read_text())
    assert raw["name"] == "par-refine" and raw["search_space"] == "search_space.yaml"
    assert raw["data"]["root"] == "../par/data"  # the parent's data, from the child's folder
    assert raw["budget"]["trials"] == 7 and raw["budget"]["subset"] == 0.5
    assert raw["fixed"]["run.epochs"] == 2  # what the parent's trials ran (its stored settings)
    assert raw["storage"] == "sqlite:///studies/par/study.db"  # the parent's storage
    lineage = raw["lineage"]
    assert lineage["parent_study"] == "par" and lineage["parent_trials"] == [0, 1, 2]
    assert lineage["rules"]["optim.lr"].startswith("narrowed around top-3 (log)")
    assert "# cut to choices used by top-3" in (child / "search_space.yaml").read_text()
    spec, space, _ = load_def(str(child), {})  # the child loads as any study does
    assert spec.lineage is not None and spec.lineage.parent_trials == [0, 1, 2]
    assert space["optim.lr"].distribution.high > 1.0e-2
    study = optuna.load_study(study_name="par-refine", storage="sqlite:///studies/par/study.db")
    attrs = study.user_attrs
    assert attrs["parent_study"] == "par" and attrs["parent_trials"] == [0, 1, 2]
    assert attrs["parent_storage"] == "sqlite:///studies/par/study.db"
    assert attrs["refine_rules"]["sched"] == "cut to choices used by top-3"
    assert attrs["settings"] == {"budget.subset": 0.5, "fixed.run.epochs": 2, "budget.trials": 7}
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 3
    from signtune.space import suggest

    study.optimize(lambda trial: float(len(suggest(trial, space))), n_trials=3)  # the child's first trials
    first = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params["optim.lr"] for t in first] == [0.009, 0.0085, 0.0095]  # the parent's top-3, best first
    assert [t.params["sched"] for t in first] == ["cosine", "linear", "cosine"]
    assert "min_lr" not in first[1].params and first[2].params["min_lr"] == 0.04


def test_status_and_export_show_lineage_and_advice(project: Path) -> None:
    assert refine("--from", "par").exit_code == 0
    res = CliRunner().invoke(app, ["status", "--study", "studies/par-refine"])
    assert res.exit_code == 0, res.output
    assert "refined from par (trials 0, 1, 2)" in res.output
    parent = CliRunner().invoke(app, ["status", "--study", "par"])
    assert "advice: optim.lr: top-3 (0.0085..0.0095) crowd the high edge 0.01 (log)" in parent.output
    assert "study refine --from par --top-k 3" in parent.output
    res = CliRunner().invoke(app, ["export", "--study", "par"])
    assert res.exit_code == 0, res.output
    advice = (project / "studies" / "par" / "export" / "advice.md").read_text()
    assert "**d_model**: top-3 all use 64" in advice
    assert "Search-space advice" in (project / "studies" / "par" / "export" / "report.html").read_text()
    from signtune.export import best_params_doc
    from signtune.spec import load_spec

    spec = load_spec("studies/par-refine")
    study = optuna.load_study(study_name="par-refine", storage=spec.storage)
    doc = best_params_doc(study, spec)
    assert doc["lineage"] == [{"study": "par", "storage": "sqlite:///studies/par/study.db", "trials": [0, 1, 2]}]


def test_provenance_records_the_lineage_chain(project: Path) -> None:
    from signtune.promote.provenance import provenance
    from signtune.promote.select import Candidate
    from signtune.spec import load_spec

    assert refine("--from", "par").exit_code == 0
    # a grandchild: its chain names both parents, nearest first
    study = optuna.load_study(study_name="par-refine", storage="sqlite:///studies/par/study.db")
    space = parse(project / "studies" / "par-refine" / "search_space.yaml")
    for t in trials_of(space, [{k: v for k, v in e.items()} for e in _enqueued(project)]):
        study.add_trial(t)
    assert refine("--from", "studies/par-refine", "--name", "par-refine2").exit_code == 0
    spec = load_spec("studies/par-refine2")
    fields = {f for f in Candidate.__dataclass_fields__}
    cand = Candidate(**{f: _dummy(f) for f in fields})
    doc = provenance(spec, cand, [cand], {})
    assert [link["study"] for link in doc["lineage"]] == ["par-refine", "par"]
    assert doc["lineage"][1]["trials"] == [0, 1, 2]


def _enqueued(project: Path) -> list[dict[str, Any]]:
    raw = yaml.safe_load((project / "studies" / "par-refine" / "study.yaml").read_text())
    return list(raw["enqueue"])


def _dummy(name: str) -> Any:
    return {"trial": 0, "seed": 0, "value": 1.0, "epochs_run": 1, "metrics": {}}.get(name)


# --- bad input: exit 2, one message, nothing written --------------------------------------------


def _nothing_written(project: Path, before: list[str]) -> None:
    assert sorted(p.name for p in (project / "studies").iterdir()) == before
    assert names(project) == ["par"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--from", "par", "--top-k", "6"], ["needs at least --top-k 6 complete trials", "but has 5", "lower --top-k"]),
        (["--from", "nosuch"], ["--from nosuch", "no study spec found"]),
        (["--from", "par", "--top-k", "0"], ["--top-k: must be >= 1, but got 0"]),
    ],
    ids=["too-few-trials", "missing-spec", "bad-top-k"],
)
def test_bad_input_exits_2_and_writes_nothing(project: Path, args: list[str], fragments: list[str]) -> None:
    before = sorted(p.name for p in (project / "studies").iterdir())
    res = refine(*args)
    assert res.exit_code == 2, res.output
    for fragment in fragments:
        assert fragment in res.output, res.output
    _nothing_written(project, before)


def test_parent_missing_from_its_storage_exits_2(project: Path) -> None:
    (project / "studies" / "ghost").mkdir()
    (project / "studies" / "ghost" / "study.yaml").write_text(
        PARENT.replace("name: par", "name: ghost") + "storage: sqlite:///studies/par/study.db\n"
    )
    before = sorted(p.name for p in (project / "studies").iterdir())
    res = refine("--from", "ghost")
    assert res.exit_code == 2, res.output
    assert "no study named 'ghost'" in res.output and "study run --study ghost" in res.output
    _nothing_written(project, before)


def test_existing_child_needs_resume(project: Path) -> None:
    assert refine("--from", "par").exit_code == 0
    child = project / "studies" / "par-refine"
    text = (child / "study.yaml").read_text()
    res = refine("--from", "par")
    assert res.exit_code == 2, res.output
    assert "a refined study must be new" in res.output and "add --resume" in res.output
    res = refine("--from", "par", "--resume")
    assert res.exit_code == 0, res.output
    assert "nothing written" in res.output and "study run --study studies/par-refine" in res.output
    assert (child / "study.yaml").read_text() == text
    waiting = optuna.load_study(study_name="par-refine", storage="sqlite:///studies/par/study.db").get_trials(
        states=(TrialState.WAITING,)
    )
    assert len(waiting) == 3  # not queued twice


def test_child_in_storage_without_folder_exits_2(project: Path) -> None:
    optuna.create_study(study_name="taken", storage="sqlite:///studies/par/study.db")
    res = refine("--from", "par", "--name", "taken")
    assert res.exit_code == 2, res.output
    assert "study 'taken' in sqlite:///studies/par/study.db already exists" in res.output
    assert not (project / "studies" / "taken").exists()


def test_bad_input_through_the_real_cli(project: Path) -> None:
    """The installed command: exit 2, the message on stderr, no traceback."""
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "signtune.cli", "refine", "--from", "par", "--top-k", "9"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 2, res.stderr
    assert "needs at least --top-k 9 complete trials" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (project / "studies" / "par-refine").exists()


def test_rendered_yaml_keeps_float_dots(tmp_path: Path) -> None:
    """`1e-05` would read back as a string: the child's files must write `1.0e-05`."""
    from signtune.cli.refine import _yaml

    assert _yaml({"low": 1.0e-5}) == "{low: 1.0e-05}"
    assert yaml.safe_load(_yaml({"low": 1.0e-5}))["low"] == 1.0e-5


def test_storage_flag_puts_the_child_on_another_storage(project: Path) -> None:
    res = refine("--from", "par", "--storage", "sqlite:///other.db", "--name", "elsewhere")
    assert res.exit_code == 0, res.output
    raw = yaml.safe_load((project / "studies" / "elsewhere" / "study.yaml").read_text())
    assert raw["storage"] == "sqlite:///other.db"
    assert optuna.get_all_study_names("sqlite:///other.db") == ["elsewhere"]
    assert names(project) == ["par"]  # the parent's storage gained nothing


def test_refine_from_a_staged_study_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load((ROOT / "studies" / "demo" / "study.yaml").read_text())
    raw["search_space"] = str(ROOT / "search_spaces" / "sign2text.yaml")
    raw["data"]["root"] = str(tmp_path / "data")
    raw["storage"] = f"sqlite:///{tmp_path / 'study.db'}"
    raw["stages"] = [{"name": "arch", "params": ["model.d_model"], "trials": 2}]
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "study.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["refine", "--from", str(tmp_path / "staged")])
    assert result.exit_code == 2, result.output
    assert "is a staged study" in result.output and "promote-best" in result.output
    assert not (tmp_path / "staged-refine").exists() and not (tmp_path / "study.db").exists()


def test_past_the_low_end_an_even_int_choice_halves() -> None:
    from signtune.refine import edge_neighbour

    assert edge_neighbour([64, 192], [64]) == (32, "low")  # not 64 - 128 < 0, nor 64 * 64 / 192 = 21
    assert edge_neighbour([64, 128, 192], [64, 64]) == (32, "low")
    assert edge_neighbour([16, 32, 64], [64]) == (96, "high")
    assert edge_neighbour([0.1, 0.3], [0.1]) is not None


def test_status_warns_when_the_first_epoch_does_not_rank_the_objective(project: Path) -> None:
    """A study that halves on an early signal whose epoch-1 order is the reverse of the final one."""
    spec_text = PARENT.replace("name: par", "name: sig").replace(
        "pruner: {name: none}", "pruner: {name: auto, metric: loss}"
    )
    spec_text = spec_text.replace("run.epochs: 3", "run.epochs: 4")
    (project / "studies" / "sig").mkdir()
    (project / "studies" / "sig" / "study.yaml").write_text(spec_text)
    space = parse(project / "search_spaces" / "rich.yaml")
    study = optuna.create_study(
        study_name="sig", storage=f"sqlite:///{project}/studies/sig/study.db", direction="maximize"
    )
    dists = space.distributions()
    for i in range(9):  # the better the final score, the worse (higher) the epoch-1 loss
        params = {"optim.lr": 1e-3 + i * 1e-4, "x": i / 10}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=float(i),
                intermediate_values={1: -float(1 + i), 2: -float(1 + i)},  # -loss: loss 1 + i, worst for the best
            )
        )
    res = CliRunner().invoke(app, ["status", "--study", "sig"])
    assert res.exit_code == 0, res.output
    assert (
        "advice: pruner: loss at epoch 1 ranks the final score with Spearman -1.00 over 9 complete trials "
        "(sha prunes on it from epoch 1)" in res.output
    )
    assert "pruner: {name: median, n_warmup_steps: 2}" in res.output
