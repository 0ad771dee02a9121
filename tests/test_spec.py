from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from signtune.errors import ConfigError
from signtune.spec import load_spec, parse_sets

ROOT = Path(__file__).resolve().parents[1]


def _edit(study_dir: Path, change: dict) -> Path:
    path = study_dir / "study.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in change.items():
        node = raw
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_spec_loads(study_dir: Path) -> None:
    spec = load_spec("demo")
    assert spec.name == "demo"
    assert spec.storage == "sqlite:///studies/demo/study.db"
    assert spec.tracking_uri == "sqlite:///studies/demo/mlflow.db"
    assert spec.base.run.epochs == 8
    assert spec.synthetic is not None
    assert len(spec.enqueue) >= 1


def test_cli_overrides_win(study_dir: Path) -> None:
    spec = load_spec(
        "demo", {"budget.trials": 5, "budget.subset": 0.3, "fixed.run.epochs": 2, "storage": "journal:///x.log"}
    )
    assert (spec.budget.trials, spec.budget.subset, spec.base.run.epochs, spec.storage) == (
        5,
        0.3,
        2,
        "journal:///x.log",
    )


INVALID = [
    ({"samplr": {"name": "tpe"}}, "samplr", "is not a known key"),
    ({"sampler/name": "tpee"}, "sampler.name", "must be one of ['auto', 'tpe', 'random', 'gp']"),
    ({"pruner/name": "asha"}, "pruner.name", "must be one of ['auto', 'median', 'hyperband', 'sha', 'none']"),
    ({"budget/trials": 0}, "budget.trials", "must be >= 1"),
    ({"budget/subset": 1.5}, "budget.subset", "must be in (0, 1]"),
    ({"fixed/optim.lr": "1e-5"}, "fixed.optim.lr", "write 1.0e-5"),
    ({"fixed/optim.lrate": 0.1}, "fixed.optim.lrate", "is not a config key"),
    ({"data/feature_dm": 64}, "data.feature_dm", "is not a config key"),
    ({"storage": "mysql://x"}, "storage", "must start with one of"),
    ({"storage": "postgresql://u:secret@h/db"}, "storage", "postgresql+psycopg://"),
    ({"search_space": "nope.yaml"}, "search_space", "does not exist"),
    ({"enqueue": {"optim.lr": 1.0}}, "enqueue", "must be a list"),
    ({"objective/direction": "up"}, "objective.direction", "must be one of"),
    ({"promote/patiense": 3}, "promote.patiense", "is not a known key"),
    ({"promote/epochs": 0}, "promote.epochs", "must be >= 1, but got 0"),
    ({"promote/beam_size": "5"}, "promote.beam_size", "must be an integer, but got '5'"),
    ({"promote/overrides": ["run.amp"]}, "promote.overrides", "must be a mapping"),
    ({"promote/overrides": {"optim.lrate": 0.1}}, "promote.overrides.optim.lrate", "is not a config key"),
    ({"promote/overrides": {"run.amp": "no"}}, "promote.overrides.run.amp", "must be"),
]


@pytest.mark.parametrize(("change", "key", "fragment"), INVALID)
def test_invalid_spec(study_dir: Path, change: dict, key: str, fragment: str) -> None:
    _edit(study_dir, change)
    with pytest.raises(ConfigError) as info:
        load_spec("demo")
    text = str(info.value)
    assert f"studies/demo/study.yaml: {key}" in text  # file and key path
    assert fragment in text
    assert "secret" not in text


def test_promote_section_is_typed_with_defaults(study_dir: Path) -> None:
    from signtune.spec import PromoteSpec

    spec = load_spec("demo")
    assert spec.promote == PromoteSpec(epochs=12, patience=3, beam_size=5)
    _edit(study_dir, {"promote": {"overrides": {"run.amp": False}}})
    spec = load_spec("demo")
    assert spec.promote == PromoteSpec(overrides={"run.amp": False})
    assert (spec.promote.epochs, spec.promote.patience, spec.promote.beam_size) == (None, 0, 5)


def test_every_problem_at_once(study_dir: Path) -> None:
    _edit(study_dir, {"budget/trials": 0, "sampler/name": "grid", "fixed/optim.lr": "1e-3"})
    with pytest.raises(ConfigError) as info:
        load_spec("demo")
    assert len(info.value.problems) == 3


def test_malformed_yaml_names_line(study_dir: Path) -> None:
    (study_dir / "study.yaml").write_text("name: demo\nbudget:\n  trials: 3\n   subset: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_spec("demo")
    assert "line 4" in str(info.value) and "not valid YAML" in str(info.value)


def test_missing_study_lists_known(study_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec("nosuch")
    assert "demo" in str(info.value)


def test_parse_sets_types_values() -> None:
    assert parse_sets(["optim.lr=3.0e-4", "model.d_model=128", "schedule.name=linear"]) == {
        "optim.lr": 3e-4,
        "model.d_model": 128,
        "schedule.name": "linear",
    }
    with pytest.raises(ConfigError):
        parse_sets(["optim.lr"])


def test_shipped_study_specs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "studies").glob("*/study.yaml")):
        spec = load_spec(str(path))
        assert spec.name == path.parent.name
        assert path.read_text().lstrip().startswith("#"), f"{path} must start with the command that runs it"
