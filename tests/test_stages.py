"""Staged studies (``stages:`` in study.yaml): the derivation of each stage's spec, and the real
`study` CLI over a fast plug-in: order, fixed values, resume after Ctrl-C, status, export,
promote-best and its provenance, and every bad input (exit 2, one message, nothing written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tests.runner.conftest import run_study, study_cmd

from signtune.errors import ConfigError
from signtune.spec import load_spec
from signtune.stages import Fixed, parse, stage_spec, study_name

# Reads x, y, kind and w (each optional: the plug-in's own default otherwise), logs the config it
# got, saves a checkpoint when promote-best asks, and holds a trial while the hang file exists
# and names a key of its config and a trial number it has reached ("y 2").
PLUGIN = """
import json, os, time

def objective(config, report, ctx):
    with open(os.environ["STAGEPLUG_LOG"], "a") as f:
        f.write(json.dumps({k: v for k, v in config.items()}) + "\\n")
    hang = os.environ.get("FASTPLUG_HANG_FILE")
    x, y = float(config.get("x", 0.5)), float(config.get("y", 0.5))
    w = float(config.get("w", 0.0)) if config.get("kind", "a") == "a" else 0.0
    score = -((x - 0.3) ** 2) - (y - 0.6) ** 2 + 0.01 * w
    for epoch in range(1, int(config.get("run.epochs", 2)) + 1):
        while hang and os.path.exists(hang):
            key, number = open(hang).read().split()
            if key not in config or ctx.trial_number < int(number):
                break
            time.sleep(0.05)
        report(epoch, {"score": score})
        if ctx.checkpoint is not None:
            import torch
            ctx.checkpoint(epoch, {"w": torch.zeros(1)}, {"score": score})
    return {"score": score}
"""

SPACE = """\
# study run --study fast
params:
  x: {type: float, low: 0.0, high: 1.0}
  y: {type: float, low: 0.0, high: 1.0}
  kind: {type: categorical, choices: [a, b]}
  w: {type: float, low: 0.0, high: 1.0, when: {kind: a}}
"""

STAGES = """\
stages:
  - {name: first, params: [x], trials: 3}
  - {name: second, params: [y], trials: 4}
"""


def _spec(stages: str = STAGES, extra: str = "") -> str:
    return (
        textwrap.dedent(
            """\
            # Staged plug-in study: study run --study fast
            name: fast
            task: stageplug:objective
            search_space: ../../search_spaces/stage.yaml
            fixed: {run.epochs: 2, run.device: cpu}
            objective: {metric: score, direction: maximize}
            sampler: {name: tpe, seed: 0, n_startup_trials: 2}
            pruner: {name: none}
            tracking: {enabled: false}
            """
        )
        + extra
        + stages
    )


@pytest.fixture
def staged(fast_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (fast_project / "stageplug.py").write_text(PLUGIN)
    (fast_project / "search_spaces" / "stage.yaml").write_text(SPACE)
    (fast_project / "studies" / "fast" / "study.yaml").write_text(_spec())
    monkeypatch.setenv("STAGEPLUG_LOG", str(fast_project / "configs.jsonl"))
    return fast_project


def _study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage="sqlite:///studies/fast/study.db")


def _configs(project: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (project / "configs.jsonl").read_text().splitlines()]


def _finished(name: str) -> int:
    return len(_study(name).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


# --- a stage's spec, without storage -------------------------------------------------------------


def _load(project: Path, spec_text: str) -> tuple[object, object]:
    from signtune.study import load_def

    (project / "studies" / "fast" / "study.yaml").write_text(spec_text)
    loaded = load_def("fast", {})
    return loaded.spec, loaded.space


def test_stage_spec_fixes_earlier_best_and_takes_enqueue_defaults(staged: Path) -> None:
    spec, space = _load(
        staged,
        _spec(
            "stages:\n  - {name: first, params: [x], trials: 3}\n  - {name: second, params: [kind], trials: 2, "
            "subset: 0.5, epochs: 1}\n  - {name: third, params: [y], trials: 2}\n",
            extra="enqueue:\n  - {x: 0.1, y: 0.2, kind: b}\n",
        ),
    )
    stages = parse(spec, space)  # type: ignore[arg-type]
    assert [s.params for s in stages] == [("x",), ("kind", "w"), ("y",)]  # w follows its parent
    earlier = [Fixed("first", "fast.1-first", 7, -0.01, {"x": 0.31})]
    second, second_space = stage_spec(spec, space, stages[1], earlier)  # type: ignore[arg-type]
    assert second.name == "fast.2-second" == study_name(spec, stages[1])  # type: ignore[arg-type]
    assert second_space.names == ["kind", "w"]
    # x from stage 1's best; y (a later stage's) from the first enqueued config; kind searched
    assert second.fixed["x"] == 0.31 and second.fixed["y"] == 0.2 and "kind" not in second.fixed
    assert second.budget.trials == 2 and second.budget.subset == 0.5 and second.epochs == 1
    assert second.fixed["run.epochs"] == 1
    assert second.enqueue == ({"kind": "b"},)  # the enqueued config, cut to the stage's params
    assert second.experiment == "fast.2-second" and second.hash() != spec.hash()  # type: ignore[attr-defined]
    # the CLI's --subset/--epochs win over the stage's own
    flagged, _ = stage_spec(spec, space, stages[1], earlier, subset=0.25, epochs=3)  # type: ignore[arg-type]
    assert flagged.budget.subset == 0.25 and flagged.epochs == 3


BAD = [
    # (id, stages yaml, fragment naming the place, fragment naming the rule and value)
    (
        "not-in-space",
        "stages:\n  - {name: a, params: [x, nope], trials: 2}\n",
        "stages[0].params[1]",
        "must name a parameter of the search space",
    ),
    (
        "two-stages-one-param",
        "stages:\n  - {name: a, params: [x], trials: 2}\n  - {name: b, params: [y, x], trials: 2}\n",
        "stages[1].params[1]",
        "'x' is already searched by stages[0]",
    ),
    ("empty-params", "stages:\n  - {name: a, params: [], trials: 2}\n", "stages[0].params", "non-empty list"),
    ("zero-trials", "stages:\n  - {name: a, params: [x], trials: 0}\n", "stages[0].trials", "but got 0"),
    (
        "duplicate-names",
        "stages:\n  - {name: a, params: [x], trials: 2}\n  - {name: a, params: [y], trials: 2}\n",
        "stages[1].name",
        "'a' is already the name of stages[0]",
    ),
    (
        "conditional-without-parent",
        "stages:\n  - {name: a, params: [kind], trials: 2}\n  - {name: b, params: [w], trials: 2}\n",
        "stages[1].params[0]",
        "'w' is already searched by stages[0]",
    ),
    ("not-a-list", "stages: {name: a}\n", "stages", "must be a non-empty list"),
    ("bad-subset", "stages:\n  - {name: a, params: [x], trials: 2, subset: 1.5}\n", "stages[0].subset", "1.5"),
]


@pytest.mark.parametrize(("stages", "where", "rule"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_stages_exit_2_naming_the_place_and_write_nothing(staged: Path, stages: str, where: str, rule: str) -> None:
    (staged / "studies" / "fast" / "study.yaml").write_text(_spec(stages))
    res = run_study("run", "--study", "fast", cwd=staged)
    assert res.returncode == 2, res.stderr
    assert f"studies/fast/study.yaml: {where}:" in res.stderr and rule in res.stderr
    assert "fix:" in res.stderr and "Traceback" not in res.stderr
    assert not (staged / "studies" / "fast" / "study.db").exists()
    assert not (staged / "configs.jsonl").exists()


def test_stage_param_in_fixed_is_refused(staged: Path) -> None:
    text = _spec("stages:\n  - {name: a, params: [x], trials: 2}\n").replace(
        "fixed: {run.epochs: 2,", "fixed: {x: 0.5, run.epochs: 2,"
    )
    with pytest.raises(ConfigError) as exc:
        _load(staged, text)
    [problem] = exc.value.problems
    assert problem.where.endswith("stages[0].params[0]") and "'x' is in `fixed:` (= 0.5)" in problem.message


def test_a_conditional_param_needs_its_parent_in_its_stage(staged: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(
            staged, _spec("stages:\n  - {name: a, params: [w], trials: 2}\n  - {name: b, params: [kind], trials: 2}\n")
        )
    messages = [(p.where, p.message) for p in exc.value.problems]
    assert any(
        w.endswith("stages[0].params[0]") and "must be searched in the stage that searches kind" in m
        for w, m in messages
    ), messages


# --- the CLI ---------------------------------------------------------------------------------------


def test_stages_run_in_order_with_the_earlier_best_fixed_and_are_skipped_once_finished(staged: Path) -> None:
    res = run_study("run", "--study", "fast", cwd=staged)
    assert res.returncode == 0, res.stderr
    first, second = _study("fast.1-first"), _study("fast.2-second")
    assert _finished("fast.1-first") == 3 and _finished("fast.2-second") == 4
    best = first.best_trial
    assert all(set(t.params) == {"y"} for t in second.trials)  # stage 1's x is not searched again
    seen = _configs(staged)
    assert [c["x"] for c in seen[3:]] == [best.params["x"]] * 4  # the trainer got stage 1's best x
    assert all("y" not in c for c in seen[:3])  # stage 2's y: the trainer's own default in stage 1
    attr = second.user_attrs["stage"]
    assert attr["name"] == "second" and attr["params"] == ["y"] and attr["index"] == 2 and attr["parent"] == "fast"
    assert attr["fixed_from"] == [
        {"stage": "first", "study": "fast.1-first", "trial": best.number, "value": best.value, "params": best.params}
    ]
    assert first.user_attrs["stage"]["fixed_from"] == []

    again = run_study("run", "--study", "fast", cwd=staged)
    assert again.returncode == 0, again.stderr
    assert "3/3 finished" in again.stdout and "skipped" in again.stdout
    assert len(_study("fast.1-first").trials) == 3 and len(_study("fast.2-second").trials) == 4
    assert len(_configs(staged)) == 7  # nothing trained

    status = run_study("status", "--study", "fast", cwd=staged)
    assert status.returncode == 0, status.stderr
    assert "fast.1-first" in status.stdout and "3/3" in status.stdout and "4/4" in status.stdout
    assert "fast.2-second: running 0, complete 4" in status.stdout


def test_spawned_workers_search_only_their_stage(staged: Path) -> None:
    res = run_study("run", "--study", "fast", "--workers", "2", cwd=staged)
    assert res.returncode == 0, res.stderr
    assert _finished("fast.1-first") == 3 and _finished("fast.2-second") == 4
    assert all(set(t.params) == {"x"} for t in _study("fast.1-first").trials)
    assert all(set(t.params) == {"y"} for t in _study("fast.2-second").trials)


def test_trials_flag_is_refused_with_stages(staged: Path) -> None:
    res = run_study("run", "--study", "fast", "--trials", "5", cwd=staged)
    assert res.returncode == 2
    assert "--trials: sets one study's budget" in res.stderr and "its `trials:` under `stages:`" in res.stderr
    assert not (staged / "studies" / "fast" / "study.db").exists()
    status = run_study("status", "--study", "fast", cwd=staged)  # nothing run yet: the stage table only
    assert status.returncode == 0, status.stderr
    assert "fast.1-first" in status.stdout and "0/3" in status.stdout and "0/4" in status.stdout
    assert not (staged / "studies" / "fast" / "study.db").exists()


def _wait(name: str, complete: int, running: int, timeout: float = 120) -> None:
    """Wait until stage study ``name`` has ``complete`` complete trials and ``running`` running ones."""
    end = time.monotonic() + timeout
    states: list[TrialState] = []
    while time.monotonic() < end:
        try:
            states = [t.state for t in _study(name).trials]
        except KeyError:
            states = []
        if states.count(TrialState.COMPLETE) >= complete and states.count(TrialState.RUNNING) >= running:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name}: {states} after {timeout}s")


def test_interrupt_mid_stage_resumes_and_skips_the_finished_stage(staged: Path) -> None:
    hang = staged / "hang"
    hang.write_text("y 2")  # stage 2's third trial holds
    proc = subprocess.Popen(
        study_cmd("run", "--study", "fast", cwd=staged),
        cwd=staged,
        env={**os.environ, "FASTPLUG_HANG_FILE": str(hang)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C
    )
    try:
        _wait("fast.2-second", complete=2, running=1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    stage1 = [t.number for t in _study("fast.1-first").trials]
    reasons = [t.user_attrs.get("reason") for t in _study("fast.2-second").trials]
    assert len(stage1) == 3 and reasons == [None, None, "interrupted"]
    trained = len(_configs(staged))

    hang.unlink()
    res = run_study("run", "--study", "fast", cwd=staged)
    assert res.returncode == 0, res.stderr
    assert "stage 1/2 first (fast.1-first): 3/3 finished" in res.stdout and "skipped" in res.stdout
    assert [t.number for t in _study("fast.1-first").trials] == stage1  # no new trial in stage 1
    assert _finished("fast.2-second") == 4  # exactly its budget
    assert len(_configs(staged)) == trained + 2  # two more stage-2 trials, nothing else


def test_export_status_and_promote_use_the_last_stage_or_stage_flag(staged: Path) -> None:
    assert run_study("run", "--study", "fast", cwd=staged).returncode == 0
    export = staged / "studies" / "fast" / "export" / "best_params.json"

    res = run_study("export", "--study", "fast", cwd=staged)
    assert res.returncode == 0, res.stderr
    doc = json.loads(export.read_text())
    assert doc["study"] == "fast.2-second" and set(doc["params"]) == {"y"}
    assert doc["fixed"]["x"] == _study("fast.1-first").best_params["x"]

    res = run_study("export", "--study", "fast", "--stage", "first", cwd=staged)
    assert res.returncode == 0, res.stderr
    doc = json.loads(export.read_text())
    assert doc["study"] == "fast.1-first" and set(doc["params"]) == {"x"}

    res = run_study("status", "--study", "fast", "--stage", "first", cwd=staged)
    assert res.returncode == 0 and "fast.1-first: running 0, complete 3" in res.stdout

    bad = run_study("export", "--study", "fast", "--stage", "nope", cwd=staged)
    assert bad.returncode == 2 and "--stage nope: is not a stage" in bad.stderr and "'first'" in bad.stderr

    res = run_study("promote-best", "--study", "fast", "--epochs", "1", cwd=staged)
    assert res.returncode == 0, res.stderr
    prov = json.loads((staged / "studies" / "fast" / "promoted" / "provenance.json").read_text())
    first, second = _study("fast.1-first"), _study("fast.2-second")
    assert prov["study"] == "fast.2-second" and prov["winner_trial"] == second.best_trial.number
    assert prov["stages"] == [
        {
            "stage": "first",
            "study": "fast.1-first",
            "best_trial": first.best_trial.number,
            "value": first.best_value,
            "fixed": first.best_params,
        },
        {"stage": "second", "study": "fast.2-second", "searched": ["y"]},
    ]
    promoted = json.loads((staged / "studies" / "fast" / "promoted" / "config.json").read_text())
    assert promoted["config"]["x"] == first.best_params["x"]  # the winner trains with stage 1's best

    res = run_study("promote-best", "--study", "fast", "--epochs", "1", "--stage", "first", cwd=staged)
    assert res.returncode == 0, res.stderr
    prov = json.loads((staged / "studies" / "fast" / "promoted" / "provenance.json").read_text())
    assert prov["study"] == "fast.1-first"
    assert prov["stages"] == [{"stage": "first", "study": "fast.1-first", "searched": ["x"]}]


def test_stage_flag_without_stages_is_refused(fast_project: Path) -> None:
    from tests.runner.conftest import fast_spec

    (fast_project / "studies" / "fast" / "study.yaml").write_text(fast_spec(trials=2))
    res = run_study("export", "--study", "fast", "--stage", "arch", cwd=fast_project)
    assert res.returncode == 2 and "--stage arch: names a stage, but" in res.stderr


def test_load_spec_accepts_the_stages_key(staged: Path) -> None:
    spec = load_spec("fast")
    assert spec.raw["stages"][0]["name"] == "first"


DEMO_STAGES = """
stages:
  - {name: arch, params: [model.d_model, model.num_encoder_layers, model.num_decoder_layers, model.num_heads], trials: 20}
  - {name: optim, params: [optim.lr, optim.weight_decay, loss.label_smoothing, optim.encoder_lr_ratio, schedule.name, schedule.warmup_ratio], trials: 20}
  - {name: reg, params: [model.dropout, data.batch_size], trials: 10}
"""


def test_the_readme_stages_fit_the_demo_space_and_set_the_typed_config(study_dir: Path) -> None:
    from signtune.study import load_def

    path = study_dir / "study.yaml"
    path.write_text(path.read_text() + DEMO_STAGES)
    spec, space, _ = load_def("demo", {})
    stages = parse(spec, space)
    assert "schedule.min_lr_ratio" in stages[1].params  # follows schedule.name
    arch = {"model.d_model": 64, "model.num_encoder_layers": 1, "model.num_decoder_layers": 3, "model.num_heads": 2}
    optim, optim_space = stage_spec(spec, space, stages[1], [Fixed("arch", "demo.1-arch", 4, 9.5, arch)])
    assert optim.name == "demo.2-optim" and "optim.lr" in optim_space.names and "model.d_model" not in optim_space.names
    # the trainer's typed config: arch's best, and the first enqueued config for reg's params
    assert optim.base.model.d_model == 64 and optim.base.model.num_decoder_layers == 3
    assert optim.base.model.dropout == 0.1 and optim.base.data.batch_size == 32
    assert "optim.lr" not in optim.fixed  # searched here: the enqueued 1.0e-4 is not fixed
    assert optim.fixed["model.dropout"] == 0.1 and optim.fixed["model.d_model"] == 64
