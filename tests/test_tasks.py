"""``signtune.tasks``: the task registry (built-in and ``module:function`` plug-ins) and the
``Task`` hooks each implements, in-process (the plug-in tests of ``test_plugins`` run the CLI)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from signtune.config import TrainConfig
from signtune.config import config_keys as train_config_keys
from signtune.errors import ConfigError, DataError, SigntuneError, StudyError
from signtune.spec import StudySpec, load_spec
from signtune.tasks import (
    BUILTIN,
    PluginTask,
    Resume,
    Sign2TextTask,
    Task,
    TaskResult,
    TrialContext,
    get_task,
)

PLUGIN = """
CALLS = []
NOT_CALLABLE = 3


def train(config, report, ctx):
    CALLS.append(dict(config))
    for epoch in (1, 2, 3):
        report(epoch, {"score": config["x"] * epoch})
    return {"score": config["x"] * 3}


def _prepare(spec):
    return [("clips", 12)]


train.prepare = _prepare


def bare(config, report, ctx):
    return {"score": 1.0}
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plug-in module on ``sys.path``, under a name no other test imported; its name."""
    name = f"plug_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def plugin_spec(tmp_path: Path, plugin: str) -> StudySpec:
    study = tmp_path / "studies" / "plug"
    study.mkdir(parents=True)
    (study / "space.yaml").write_text("params:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    (study / "study.yaml").write_text(
        f"name: plug\n"
        f"task: {plugin}:train\n"
        "search_space: space.yaml\n"
        "fixed: {x: 0.1, run.epochs: 4, db_url: 'postgresql+psycopg://u:secret@h/db'}\n"
        "objective: {metric: score, direction: maximize}\n"
        "budget: {trials: 3, subset: 0.25}\n"
        "promote: {overrides: {x: 0.9, run.amp: false}}\n"
        "tracking: {enabled: false}\n"
    )
    return load_spec(study / "study.yaml")


def ctx_in(tmp_path: Path, device: str = "cpu") -> TrialContext:
    return TrialContext(
        device=device, seed=0, subset=1.0, trial_number=0, scratch_dir=tmp_path / "scratch", study_dir=tmp_path
    )


def protocol_methods() -> list[str]:
    return sorted(n for n, v in vars(Task).items() if callable(v) and not n.startswith("_"))


# ----------------------------------------------------------------------------------------------
# The registry


def test_the_builtin_task_is_found_by_name() -> None:
    assert set(BUILTIN) == {"sign2text"}
    task = get_task("sign2text")
    assert isinstance(task, Sign2TextTask) and task.name == "sign2text"
    assert get_task("sign2text") is not task, "each caller gets its own task (it keeps per-process state)"


def test_a_plugin_is_imported_from_module_colon_function(plugin: str) -> None:
    task = get_task(f"{plugin}:train")
    assert isinstance(task, PluginTask)
    assert task.name == f"{plugin}:train"
    assert task.fn is sys.modules[plugin].train
    assert task.config_keys() is None, "a plug-in's config is untyped: any key may be searched"


def test_both_tasks_implement_every_hook_of_the_protocol(plugin: str) -> None:
    names = protocol_methods()
    assert {"make_config", "fit", "prepare", "promote_config", "ship", "config_keys", "fixed_config"} <= set(names)
    for task in (get_task("sign2text"), get_task(f"{plugin}:train")):
        missing = [n for n in names if not callable(getattr(task, n, None))]
        assert not missing, f"{task.name} lacks {missing}"


@pytest.mark.parametrize(
    ("ref", "fragment", "fix"),
    [
        ("sign2txt", "unknown task 'sign2txt'", "sign2text"),
        (":train", "unknown task ':train'", "package.module:function"),
        ("mod:", "unknown task 'mod:'", "package.module:function"),
        ("signtune_no_such_module_zz:train", "cannot import module 'signtune_no_such_module_zz'", "PYTHONPATH"),
        ("{plugin}:nope", "has no callable 'nope'", "function name"),
        ("{plugin}:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'", "function name"),
    ],
)
def test_a_bad_task_reference_is_a_config_error_naming_the_place(
    plugin: str, ref: str, fragment: str, fix: str
) -> None:
    ref = ref.format(plugin=plugin)
    where = "studies/plug/study.yaml: task"
    with pytest.raises(ConfigError) as info:
        get_task(ref, where=where)
    assert isinstance(info.value, SigntuneError), "the CLI turns it into exit code 2, no traceback"
    (problem,) = info.value.problems
    assert problem.where == where
    assert fragment in problem.message
    assert fix in problem.fix


def test_a_plugin_that_fails_on_import_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("VALUE = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        get_task(f"{name}:train")
    (problem,) = info.value.problems
    assert problem.where == "task"
    assert f"importing '{name}'" in problem.message and "ZeroDivisionError" in problem.message
    assert problem.fix == "fix the module"
    sys.modules.pop(name, None)


# ----------------------------------------------------------------------------------------------
# The built-in task's configs


def test_builtin_config_keys_are_the_trainers() -> None:
    keys = get_task("sign2text").config_keys()
    assert keys == set(train_config_keys())
    assert {"optim.lr", "data.batch_size", "model.dropout", "run.epochs"} <= keys
    assert all("." in k for k in keys)


def test_builtin_make_config_applies_the_trial_values_and_the_subset(study_dir: Path) -> None:
    spec = load_spec("demo", {"budget.subset": 0.3})
    task = get_task(spec.task)
    cfg = task.make_config(spec, {"optim.lr": 0.002, "model.num_heads": 8})
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 0.002 and cfg.model.num_heads == 8
    assert cfg.data.subset == 0.3
    assert cfg.eval.max_len == 32 and cfg.run.epochs == 8, "the spec's fixed values stay"
    with pytest.raises(ConfigError, match=r"optim\.nope"):
        task.make_config(spec, {"optim.nope": 1})


def test_builtin_fixed_and_promote_configs(study_dir: Path) -> None:
    spec = load_spec("demo", {"budget.subset": 0.3})
    task = get_task(spec.task)
    fixed = task.fixed_config(spec)
    assert fixed["data.subset"] == 0.3 and fixed["run.epochs"] == 8 and fixed["eval.max_len"] == 32
    assert set(fixed) == set(train_config_keys())
    cfg = task.promote_config(spec, {"optim.lr": 0.003}, epochs=None, seed=5)
    assert (cfg.optim.lr, cfg.data.subset, cfg.run.seed, cfg.run.epochs) == (0.003, 1.0, 5, 8)
    assert task.promote_config(spec, {}, epochs=2, seed=5).run.epochs == 2
    with pytest.raises(ConfigError) as info:
        task.promote_config(spec, {"optim.nope": 1}, epochs=None, seed=0)
    assert info.value.problems[0].where.startswith("trial params")


# ----------------------------------------------------------------------------------------------
# A plug-in's configs and hooks


def test_plugin_make_config_is_fixed_plus_suggested_values(plugin_spec: StudySpec) -> None:
    task = get_task(plugin_spec.task)
    cfg = task.make_config(plugin_spec, {"x": 0.7, "lr": 0.01})
    assert cfg == {
        "x": 0.7,  # the trial's value wins over the fixed one
        "lr": 0.01,
        "run.epochs": 4,
        "db_url": "postgresql+psycopg://u:secret@h/db",
        "data.subset": 0.25,
    }
    assert task.fixed_config(plugin_spec) == {**plugin_spec.fixed, "data.subset": 0.25}
    assert plugin_spec.fixed["x"] == 0.1, "the spec is not changed"


def test_plugin_promote_config(plugin_spec: StudySpec) -> None:
    task = get_task(plugin_spec.task)
    cfg = task.promote_config(plugin_spec, {"x": 0.3, "lr": 0.01}, epochs=None, seed=11)
    assert cfg["x"] == 0.9, "promote.overrides win over the trial's params"
    assert cfg["lr"] == 0.01 and cfg["run.amp"] is False
    assert cfg["data.subset"] == 1.0, "promotion trains on all the data"
    assert cfg["run.seed"] == 11 and cfg["run.epochs"] == 4
    assert task.promote_config(plugin_spec, {}, epochs=9, seed=0)["run.epochs"] == 9


def test_plugin_prepare_is_the_functions_optional_hook(plugin_spec: StudySpec, plugin: str) -> None:
    assert get_task(plugin_spec.task).prepare(plugin_spec) == {"clips": 12}
    assert get_task(f"{plugin}:bare").prepare(plugin_spec) == {}


def test_plugin_fit_counts_epochs_and_returns_numbers(plugin_spec: StudySpec, plugin: str, tmp_path: Path) -> None:
    task = get_task(plugin_spec.task)
    cfg = task.make_config(plugin_spec, {"x": 0.5})
    reports: list[tuple[int, dict[str, float]]] = []
    result = task.fit(cfg, lambda e, m: reports.append((e, m)), ctx_in(tmp_path, device="cuda:1"))
    assert reports == [(1, {"score": 0.5}), (2, {"score": 1.0}), (3, {"score": 1.5})]
    assert result == TaskResult(metrics={"score": 1.5}, epochs_run=3, device="cuda:1")
    (seen,) = sys.modules[plugin].CALLS
    assert seen == cfg


def run_fit(fn: Callable[..., Any], tmp_path: Path, cfg: dict[str, Any] | None = None) -> TaskResult:
    return PluginTask("mod:fn", fn).fit(cfg or {"x": 1}, lambda e, m: None, ctx_in(tmp_path))


def test_plugin_fit_passes_a_copy_of_the_config(tmp_path: Path) -> None:
    cfg = {"x": 1}

    def fn(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
        config["x"] = 99
        return {"score": 1}

    run_fit(fn, tmp_path, cfg)
    assert cfg == {"x": 1}


def test_plugin_fit_epochs_are_the_highest_reported(tmp_path: Path) -> None:
    def fn(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
        for epoch in (1, 4, 2):
            report(epoch, {"score": 0.0})
        return {"score": 1, "acc": 0.5}

    result = run_fit(fn, tmp_path)
    assert result.epochs_run == 4
    assert result.metrics == {"score": 1.0, "acc": 0.5} and all(type(v) is float for v in result.metrics.values())


def test_plugin_fit_may_return_a_task_result(tmp_path: Path) -> None:
    made = TaskResult(metrics={"score": 2.0}, epochs_run=7, n_params=10, attrs={"note": "x"})
    assert run_fit(lambda c, r, x: made, tmp_path) is made


@pytest.mark.parametrize(
    ("returned", "fragment"),
    [
        (None, "must return a dict of metric names to numbers"),
        ({}, "must return a dict of metric names to numbers"),
        ([("score", 1.0)], "must return a dict of metric names to numbers"),
        ({"score": "high"}, "non-numeric metrics"),
        ({"score": True}, "non-numeric metrics"),
    ],
)
def test_plugin_fit_refuses_what_is_not_a_dict_of_numbers(tmp_path: Path, returned: Any, fragment: str) -> None:
    with pytest.raises(TypeError, match=fragment) as info:
        run_fit(lambda c, r, x: returned, tmp_path)
    assert "task mod:fn" in str(info.value)


def test_plugin_fit_lets_errors_through(tmp_path: Path) -> None:
    def fn(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
        raise DataError("data/x.npy is truncated")

    with pytest.raises(DataError, match="truncated"):  # the objective records reason `data`
        run_fit(fn, tmp_path)


# ----------------------------------------------------------------------------------------------
# Shipping a plug-in's promoted winner


def ship(fn: Callable[..., Any], spec: StudySpec, tmp_path: Path) -> Any:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    best = Resume(epoch=3, tensors={"w": [1.0, 2.0]}, metrics={"score": 0.8})
    task = PluginTask(spec.task, fn)
    return task.ship(spec, task.make_config(spec, {"x": 0.4}), best, ctx_in(tmp_path), out)


def test_plugin_ship_writes_its_config_and_runs_its_test_hook(
    plugin_spec: StudySpec, plugin: str, tmp_path: Path
) -> None:
    def fn(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
        return {"score": 1.0}

    seen: dict[str, Any] = {}

    def test(config: dict[str, Any], tensors: dict[str, Any], ctx: TrialContext) -> dict[str, float]:
        seen.update(config=config, tensors=tensors)
        return {"test_score": 1, "test_loss": 0.25}

    fn.test = test  # type: ignore[attr-defined]
    shipped = ship(fn, plugin_spec, tmp_path)
    assert shipped.test == {"test_score": 1.0, "test_loss": 0.25}
    assert seen["tensors"] == {"w": [1.0, 2.0]} and seen["config"]["x"] == 0.4
    doc = json.loads((tmp_path / "out" / "config.json").read_text())
    assert doc["task"] == plugin_spec.task and doc["metric"] == "score" and doc["best_epoch"] == 3
    assert doc["config"]["x"] == 0.4
    assert doc["config"]["db_url"] == "postgresql+psycopg://u:***@h/db", "no password in a shipped model"

    # The real plug-in: no test hook, and its source file's hash goes into the provenance.
    real = get_task(plugin_spec.task)
    assert isinstance(real, PluginTask)
    shipped = ship(real.fn, plugin_spec, tmp_path)
    assert shipped.test == {}
    assert list(shipped.inputs) == [f"{plugin}.py"] and len(shipped.inputs[f"{plugin}.py"]) == 64


@pytest.mark.parametrize(
    ("hook", "fragment"),
    [
        (lambda c, t, x: 1 / 0, "raised ZeroDivisionError"),
        (lambda c, t, x: 0.9, "returned 0.9"),
        (lambda c, t, x: {"acc": "good"}, "returned {'acc': 'good'}"),
    ],
)
def test_a_broken_test_hook_is_a_study_error_naming_it(
    plugin_spec: StudySpec, tmp_path: Path, hook: Callable[..., Any], fragment: str
) -> None:
    def fn(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
        return {"score": 1.0}

    fn.test = hook  # type: ignore[attr-defined]
    with pytest.raises(StudyError) as info:
        ship(fn, plugin_spec, tmp_path)
    (problem,) = info.value.problems
    assert problem.where == f"task {plugin_spec.task}: test"
    assert fragment in problem.message and problem.fix


def test_a_test_hooks_own_signtune_error_passes_through(plugin_spec: StudySpec, tmp_path: Path) -> None:
    def fn(config: dict[str, Any], report: Any, ctx: Any) -> dict[str, float]:
        return {"score": 1.0}

    def test(config: dict[str, Any], tensors: dict[str, Any], ctx: TrialContext) -> dict[str, float]:
        raise DataError("test split missing")

    fn.test = test  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="test split missing"):
        ship(fn, plugin_spec, tmp_path)
