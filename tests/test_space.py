from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from signtune.config import config_keys
from signtune.errors import ConfigError
from signtune.space import check_params, parse, suggest

ROOT = Path(__file__).resolve().parents[1]
KEYS = set(config_keys())

VALID = [
    (
        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
        "optim.lr",
        FloatDistribution(1e-4, 1e-2, log=True),
    ),
    (
        "model.dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}",
        "model.dropout",
        FloatDistribution(0.0, 0.5, step=0.1),
    ),
    ("model.num_encoder_layers: {type: int, low: 1, high: 4}", "model.num_encoder_layers", IntDistribution(1, 4)),
    (
        "data.batch_size: {type: int, low: 16, high: 128, log: true}",
        "data.batch_size",
        IntDistribution(16, 128, log=True),
    ),
    ("model.d_model: {type: categorical, choices: [64, 128]}", "model.d_model", CategoricalDistribution([64, 128])),
    (
        "schedule.name: {type: categorical, choices: [cosine, linear]}",
        "schedule.name",
        CategoricalDistribution(["cosine", "linear"]),
    ),
]

INVALID = [
    ("optim.lr: {type: float, low: 1.0e-2, high: 1.0e-4}", "low must be <= high"),
    ("optim.lr: {type: float, low: 1e-5, high: 1.0e-2, log: true}", "write it with a dot, e.g. 1.0e-5"),
    ("optim.lr: {type: float, low: 0.0, high: 1.0e-2, log: true}", "must be > 0 for log=True"),
    ("optim.lr: {type: double, low: 0.1, high: 1.0}", "must be one of ['float', 'int', 'categorical']"),
    ("optim.lr: {type: float, low: 0.1, high: 1.0, scale: 2}", "is not a key of a float parameter"),
    ("optim.lr: {type: float, high: 1.0}", "needs both low and high"),
    ("optim.learning_rate: {type: float, low: 0.1, high: 1.0}", "is not a config key of this task"),
    ("model.num_encoder_layers: {type: int, low: 1.5, high: 4}", "must be an integer for type int"),
    ("model.d_model: {type: categorical, choices: []}", "must be a non-empty list"),
    ("model.d_model: {type: categorical, choices: [64, 64]}", "has duplicates"),
    ("optim.lr: {type: float, low: 0.1, high: 1.0, log: true, step: 0.1}", "cannot have both log: true and a step"),
    ("optim.lr: 0.001", "must be a mapping like"),
    (
        "model.d_model: {type: categorical, choices: [64, 96]}\n  model.num_heads: {type: categorical, choices: [2, 64]}",
        "must be divisible by every head count",
    ),
    (
        "model.dropout: {type: float, low: 0.0, high: 0.5, when: {schedule.name: cosine}}",
        "must name a categorical parameter defined above",
    ),
    (
        "schedule.name: {type: categorical, choices: [cosine]}\n  schedule.min_lr_ratio: {type: float, low: 0.0, high: 0.1, when: {schedule.name: linear}}",
        "are not among its choices",
    ),
]


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  " + body + "\n")
    return path


@pytest.mark.parametrize(("body", "name", "expected"), VALID)
def test_parse_valid(tmp_path: Path, body: str, name: str, expected: object) -> None:
    space = parse(_write(tmp_path, body), known_keys=KEYS)
    assert space[name].distribution == expected


@pytest.mark.parametrize(("body", "fragment"), INVALID)
def test_parse_invalid(tmp_path: Path, body: str, fragment: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        parse(path, known_keys=KEYS)
    text = str(info.value)
    assert fragment in text
    assert str(path) in text  # every problem names the file


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    body = "optim.lr: {type: float, low: 1.0, high: 0.1}\n  model.dropout: {type: float, low: 1e-1, high: 0.5}\n  model.d_model: {type: categorical, choices: []}"
    with pytest.raises(ConfigError) as info:
        parse(_write(tmp_path, body), known_keys=KEYS)
    assert len(info.value.problems) == 3


def test_shipped_search_spaces_parse() -> None:
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        space = parse(path, known_keys=KEYS)
        assert space.params
        assert path.read_text().lstrip().startswith("#"), f"{path} must start with the command that runs it"


def test_conditional_param_only_suggested_when_active(tmp_path: Path) -> None:
    body = (
        "schedule.name: {type: categorical, choices: [cosine, linear]}\n"
        "  schedule.min_lr_ratio: {type: float, low: 0.0, high: 0.1, when: {schedule.name: cosine}}"
    )
    space = parse(_write(tmp_path, body), known_keys=KEYS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"cosine": 0, "linear": 0}
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, space)
        seen[values["schedule.name"]] += 1
        assert ("schedule.min_lr_ratio" in values) == (values["schedule.name"] == "cosine")
        study.tell(trial, 0.0)
    assert seen["cosine"] and seen["linear"]


def test_check_params_flags_unknown_and_out_of_range() -> None:
    space = parse(ROOT / "search_spaces" / "sign2text.yaml", known_keys=KEYS)
    problems = check_params(space, {"optim.lr": 5.0, "optim.nope": 1, "model.d_model": 100}, "enqueue[0]")
    text = "\n".join(str(p) for p in problems)
    assert "enqueue[0].optim.lr" in text and "outside the search space" in text
    assert "enqueue[0].optim.nope" in text and "not a parameter" in text
    assert "enqueue[0].model.d_model" in text
    assert check_params(space, {"optim.lr": 1e-3, "model.d_model": 128}, "x") == []
