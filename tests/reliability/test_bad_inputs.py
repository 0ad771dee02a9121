"""A corpus of bad inputs through the real `study` command.

Every row is one mistake a user can make in a study spec, a search space, a manifest, a feature
file, a CLI flag, a storage URL or a tracking URI. Each must end with exit code 2 and one clear
message (the expected fragment), never a traceback, never the password ``hunter2``, and without
writing anything: no study.db, journal, mlflow.db or export appears in the project.

Data rows run on tiny generated data (``study data synth``, once per module), copied per row.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.reliability.helpers import SECRET, TouchOnUnpickle, edit, make_project, snapshot, study

SPEC = Path("studies/t/study.yaml")
SPACE = Path("search_spaces/t.yaml")
DATA = Path("studies/t/data")
TRAIN = DATA / "how2sign_realigned_train.csv"
VAL = DATA / "how2sign_realigned_val.csv"
FEATURES = DATA / "features"
RUN = ("run", "--study", "t")
TRAIN_CMD = ("train", "--study", "t")
PG_UNREACHABLE = f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/x"


@dataclass(frozen=True)
class Row:
    """One bad input: how to make it, the command, and what the message must contain."""

    args: tuple[str, ...]
    expect: tuple[str, ...]
    spec: tuple[str, str] | None = None  # (old, new) in study.yaml
    space: tuple[str, str] | None = None  # (old, new) in the search space
    prep: Callable[[Path], None] | None = None  # any other change to the project
    env: dict[str, str] = field(default_factory=dict)


# --- edits of the project -----------------------------------------------------------------------


def _write(rel: Path, text: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_text(text)


def _lines(rel: Path, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def prep(root: Path) -> None:
        path = root / rel
        path.write_text("".join(change(path.read_text().splitlines(keepends=True))))

    return prep


def _set_field(line: str, column: int, value: str) -> str:
    cells = line.rstrip("\n").split("\t")
    cells[column] = value
    return "\t".join(cells) + "\n"


def _set_first_id(value: str) -> Callable[[Path], None]:
    return _lines(TRAIN, lambda ls: [ls[0], _set_field(ls[1], 3, value), *ls[2:]])


def _first_feature(root: Path) -> Path:
    clip_id = (root / TRAIN).read_text().splitlines()[1].split("\t")[3]
    return root / FEATURES / f"{clip_id}.npy"


def _change_feature(change: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda root: change(_first_feature(root))


def _nan(path: Path) -> None:
    arr = np.load(path)
    arr[3, 2] = np.nan
    np.save(path, arr)


def _pickled_pt(path: Path) -> None:
    path.unlink()
    torch.save({"features": TouchOnUnpickle(path.parents[4] / "PWNED")}, path.with_suffix(".pt"))


def _object_npy(path: Path) -> None:
    arr = np.array([TouchOnUnpickle(path.parents[4] / "PWNED"), 1], dtype=object)
    np.save(path, arr, allow_pickle=True)


def _escaping_id(root: Path) -> None:
    np.save(root / "studies" / "x.npy", np.zeros((5, 16), np.float32))  # what ../../x would reach
    _set_first_id("../../x")(root)


def _symlink_out(root: Path) -> None:
    path = _first_feature(root)
    outside = root / "outside.npy"
    os.replace(path, outside)
    path.symlink_to(outside)


def _three_problems(root: Path) -> None:
    edit(root / SPEC, "name: tpe", "name: grid")
    edit(root / SPEC, "trials: 1", "trials: 0")
    edit(root / SPEC, "run.epochs: 1", "run.epochs: 1\n  optim.lr: 1e-3")


def _many_rows_one_id(lines: list[str]) -> list[str]:
    return [*lines, *[lines[1]] * 40]


def _comma_separated(lines: list[str]) -> list[str]:
    return [line.replace("\t", ",") for line in lines]


# --- the corpus -----------------------------------------------------------------------------------

L_LR = "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
ENQ = "  - {optim.lr: 1.0e-3, model.d_model: 32}"
BUDGET = "budget: {trials: 1, subset: 1.0}"
SAMPLER = "sampler: {name: tpe, seed: 0}"

CASES: dict[str, Row] = {
    # Study specs ----------------------------------------------------------------------------------
    "spec-malformed-yaml": Row(RUN, ("study.yaml: line", "is not valid YAML"), spec=(BUDGET, "budget: {trials: 1")),
    "spec-not-a-mapping": Row(RUN, ("must be a mapping of keys, but got list",), prep=_write(SPEC, "- a\n- b\n")),
    "spec-duplicate-key": Row(
        RUN, ("has a duplicate key 'budget'", "keep one of the two"), spec=(BUDGET, f"{BUDGET}\nbudget: {{trials: 5}}")
    ),
    "spec-unknown-top-key": Row(RUN, ("samplr: is not a known key",), spec=(SAMPLER, f"{SAMPLER}\nsamplr: {{x: 1}}")),
    "spec-unknown-sampler-key": Row(
        RUN,
        ("sampler.sed: is not a known key", "use one of ['name', 'seed'"),
        spec=(SAMPLER, SAMPLER[:-1] + ", sed: 1}"),
    ),
    "spec-unknown-synthetic-key": Row(
        RUN, ("data.synthetic.n_trian: is not a known key",), spec=("synthetic: false", "synthetic: {n_trian: 3}")
    ),
    "spec-unknown-data-key": Row(RUN, ("data.feature_dm: is not a config key",), spec=("feature_dim:", "feature_dm:")),
    "spec-unknown-fixed-key": Row(
        RUN,
        ("fixed.optim.lrate: is not a config key", "optim.lr"),
        spec=("run.epochs: 1", "run.epochs: 1\n  optim.lrate: 0.1"),
    ),
    "spec-trials-not-an-int": Row(
        RUN, ("budget.trials: must be an integer, but got 'ten'",), spec=(BUDGET, "budget: {trials: ten}")
    ),
    "spec-seed-float": Row(
        RUN, ("sampler.seed: must be an integer, but got 0.5",), spec=(SAMPLER, SAMPLER.replace("0}", "0.5}"))
    ),
    "spec-synthetic-not-a-mapping": Row(
        RUN, ("data.synthetic: must be a mapping or false",), spec=("synthetic: false", "synthetic: yes")
    ),
    "spec-fixed-string-float": Row(
        RUN,
        ("fixed.optim.lr: must be a number, but got the string '1e-5'", "write 1.0e-5"),
        spec=("run.epochs: 1", "run.epochs: 1\n  optim.lr: 1e-5"),
    ),
    "spec-budget-string-float": Row(
        RUN,
        ("budget.timeout: must be a number, but got the string '1e3'", "write 1.0e3"),
        spec=(BUDGET, "budget: {trials: 1, timeout: 1e3}"),
    ),
    "spec-fixed-wrong-type-with-password": Row(
        RUN,
        ("fixed.model.d_model: must be an integer", "u:***@h"),
        spec=("run.epochs: 1", f"run.epochs: 1\n  model.d_model: 'postgresql+psycopg://u:{SECRET}@h/db'"),
    ),
    "spec-bad-sampler": Row(
        RUN, ("sampler.name: must be one of ['auto', 'tpe', 'random', 'gp'], but got 'tpee'",), spec=("name: tpe", "name: tpee")
    ),
    "spec-bad-pruner": Row(
        RUN,
        ("pruner.name: must be one of ['auto', 'median', 'hyperband', 'sha', 'none'], but got 'asha'",),
        spec=("name: median", "name: asha"),
    ),
    "spec-bad-direction": Row(
        RUN,
        ("objective.direction: must be one of ['maximize', 'minimize'], but got 'up'",),
        spec=("direction: maximize", "direction: up"),
    ),
    "spec-budget-trials-zero": Row(
        RUN, ("budget.trials: must be >= 1, but got 0",), spec=(BUDGET, "budget: {trials: 0}")
    ),
    "spec-budget-subset-zero": Row(
        RUN, ("budget.subset: must be in (0, 1], but got 0.0",), spec=(BUDGET, "budget: {trials: 1, subset: 0.0}")
    ),
    "spec-budget-timeout-negative": Row(
        RUN, ("budget.timeout: must be > 0 seconds",), spec=(BUDGET, "budget: {trials: 1, timeout: -1.0}")
    ),
    "spec-pruner-reduction-factor": Row(
        RUN, ("pruner.reduction_factor: must be >= 2, but got 1",), spec=("reduction_factor: 3", "reduction_factor: 1")
    ),
    "spec-name-with-space": Row(
        RUN, ("name: must be a non-empty name without spaces",), spec=("name: t\n", "name: a b\n")
    ),
    "spec-every-problem-at-once": Row(
        RUN,
        ("(3 problems)", "sampler.name: must be one of", "budget.trials: must be >= 1", "fixed.optim.lr: must be a"),
        prep=_three_problems,
    ),
    "spec-enqueue-not-a-list": Row(
        RUN, ("enqueue: must be a list of param mappings",), spec=(ENQ, "  optim.lr: 1.0e-3")
    ),
    "spec-enqueue-item-not-a-mapping": Row(RUN, ("enqueue[0]: must be a mapping of param names",), spec=(ENQ, "  - 3")),
    "spec-enqueue-outside-range": Row(
        RUN, ("enqueue[0].optim.lr: value 1.0 is outside the search space",), spec=(ENQ, "  - {optim.lr: 1.0}")
    ),
    "spec-enqueue-outside-choices": Row(
        RUN, ("enqueue[0].model.d_model: value 48 is outside the search space",), spec=(ENQ, "  - {model.d_model: 48}")
    ),
    "spec-enqueue-unknown-param": Row(
        RUN,
        ("enqueue[0].optim.lrate: is not a parameter of the search space",),
        spec=(ENQ, "  - {optim.lrate: 1.0e-3}"),
    ),
    "spec-enqueue-string-float": Row(
        RUN,
        ("enqueue[0].optim.lr: must be a number, but got the string '1e-3'", "1.0e-3"),
        spec=(ENQ, "  - {optim.lr: 1e-3}"),
    ),
    "spec-enqueue-inactive-conditional": Row(
        RUN,
        ("enqueue[0].schedule.min_lr_ratio: is only searched when schedule.name in ['cosine']",),
        spec=(ENQ, "  - {schedule.name: linear, schedule.min_lr_ratio: 0.05}"),
    ),
    "spec-missing-search-space": Row(
        RUN,
        ("search_space: file", "nope.yaml does not exist"),
        spec=("search_spaces/t.yaml", "search_spaces/nope.yaml"),
    ),
    "spec-unknown-task": Row(
        RUN, ("task: unknown task 'sign2txt'", "use one of ['sign2text']"), spec=("task: sign2text", "task: sign2txt")
    ),
    "spec-plugin-module-not-found": Row(
        RUN, ("cannot import module 'nosuchmod_xyz'", "PYTHONPATH"), spec=("task: sign2text", "task: nosuchmod_xyz:fn")
    ),
    "spec-plugin-no-such-function": Row(
        RUN, ("module 'okplug' has no callable 'nosuch'",), spec=("task: sign2text", "task: okplug:nosuch")
    ),
    "spec-plugin-import-raises": Row(
        RUN,
        ("importing 'boomplug'", "raised RuntimeError: boom at import"),
        spec=("task: sign2text", "task: boomplug:objective"),
    ),
    "spec-python-tag": Row(
        RUN, ("Python tags are refused",), spec=("name: t\n", "name: !!python/object/apply:os.system ['touch PWNED']\n")
    ),
    "spec-missing-study": Row(("run", "--study", "nosuch"), ("no study spec found", "(t)")),
    # Search spaces --------------------------------------------------------------------------------
    "space-low-above-high": Row(
        RUN,
        ("params.optim.lr: low must be <= high", "swap low and high"),
        space=(L_LR, "  optim.lr: {type: float, low: 1.0e-2, high: 1.0e-4}"),
    ),
    "space-log-low-zero": Row(
        RUN,
        ("params.optim.lr.low: must be > 0 for log=True",),
        space=(L_LR, "  optim.lr: {type: float, low: 0.0, high: 1.0e-2, log: true}"),
    ),
    "space-string-float": Row(
        RUN,
        ("params.optim.lr.low: must be a number, but got the string '1e-4'", "1.0e-4"),
        space=(L_LR, "  optim.lr: {type: float, low: 1e-4, high: 1.0e-2}"),
    ),
    "space-unknown-config-key": Row(
        RUN,
        ("params.optim.lrate: is not a config key of this task", "optim.lr"),
        space=(L_LR, "  optim.lrate: {type: float, low: 1.0e-4, high: 1.0e-2}"),
    ),
    "space-unknown-param-field": Row(
        RUN,
        ("params.optim.lr.lo: is not a key of a float parameter",),
        space=(L_LR, "  optim.lr: {type: float, lo: 1.0e-4, high: 1.0e-2}"),
    ),
    "space-unknown-type": Row(
        RUN,
        ("params.optim.lr.type: must be one of ['float', 'int', 'categorical'], but got 'real'",),
        space=(L_LR, "  optim.lr: {type: real, low: 1.0e-4, high: 1.0e-2}"),
    ),
    "space-int-with-fraction": Row(
        RUN,
        ("model.num_encoder_layers.low: must be an integer for type int",),
        space=(L_LR, f"{L_LR}\n  model.num_encoder_layers: {{type: int, low: 1.5, high: 4}}"),
    ),
    "space-float-for-int-key": Row(
        RUN,
        ("model.num_encoder_layers.type: must be int",),
        space=(L_LR, f"{L_LR}\n  model.num_encoder_layers: {{type: float, low: 1.0, high: 4.0}}"),
    ),
    "space-choice-the-config-refuses": Row(
        RUN,
        ("params.schedule.name.choices: has values the config key cannot take: 'exponential'",),
        space=("choices: [cosine, linear]", "choices: [cosine, linear, exponential]"),
    ),
    "space-when-unknown-parent": Row(
        RUN,
        ("when.schedule.nam: must name a categorical parameter defined above",),
        space=("when: {schedule.name: cosine}", "when: {schedule.nam: cosine}"),
    ),
    "space-when-value-not-a-choice": Row(
        RUN,
        ("when.schedule.name: values ['cosin'] are not among its choices",),
        space=("when: {schedule.name: cosine}", "when: {schedule.name: cosin}"),
    ),
    "space-when-not-a-mapping": Row(
        RUN,
        ("params.schedule.min_lr_ratio.when: must map earlier parameter names",),
        space=("when: {schedule.name: cosine}", "when: cosine"),
    ),
    "space-when-on-float-param": Row(
        RUN,
        ("when.optim.lr: must name a categorical parameter",),
        space=("when: {schedule.name: cosine}", "when: {optim.lr: 0.001}"),
    ),
    "space-duplicate-choices": Row(
        RUN,
        ("(1 problem)", "params.schedule.name.choices: has duplicates ['cosine']"),
        space=("choices: [cosine, linear]", "choices: [cosine, cosine]"),
    ),
    "space-duplicate-numeric-choices": Row(
        RUN,
        ("params.model.d_model.choices: has duplicates [32.0]",),
        space=("choices: [32, 64]", "choices: [32, 32.0]"),
    ),
    "space-duplicate-param": Row(RUN, ("has a duplicate key 'optim.lr'",), space=(L_LR, f"{L_LR}\n{L_LR}")),
    "space-heads-do-not-divide-d-model": Row(
        RUN,
        ("params.model.num_heads: every model.d_model choice must be divisible", "(32, 3)"),
        space=("choices: [2, 4]", "choices: [2, 3]"),
    ),
    "space-no-params-mapping": Row(
        RUN, ("must have a top-level `params:` mapping",), prep=_write(SPACE, "parms:\n  optim.lr: {type: float}\n")
    ),
    # Manifests ------------------------------------------------------------------------------------
    "manifest-missing-column": Row(
        RUN,
        ("how2sign_realigned_train.csv: header: lacks the column ['SENTENCE']",),
        prep=_lines(TRAIN, lambda ls: [ls[0].replace("\tSENTENCE\n", "\tTEXT\n"), *ls[1:]]),
    ),
    "manifest-comma-separated": Row(
        RUN, ("looks comma-separated", "tab-separated"), prep=_lines(TRAIN, _comma_separated)
    ),
    "manifest-duplicate-id": Row(
        RUN, ("row 22: SENTENCE_NAME", "is a duplicate of row 2"), prep=_lines(TRAIN, lambda ls: [*ls, ls[1]])
    ),
    "manifest-many-rows-one-id": Row(
        RUN,
        ("(1 problem)", "is a duplicate of row 2, repeated in 40 rows (22, 23,", "...)"),
        prep=_lines(TRAIN, _many_rows_one_id),
    ),
    "manifest-empty-text": Row(
        RUN,
        ("row 3: SENTENCE is empty for id",),
        prep=_lines(TRAIN, lambda ls: [ls[0], ls[1], _set_field(ls[2], 6, " "), *ls[3:]]),
    ),
    "manifest-short-row": Row(
        RUN, ("row 22: has 2 fields but the header has 7",), prep=_lines(TRAIN, lambda ls: [*ls, "abc\tdef\n"])
    ),
    "manifest-row-without-feature-file": Row(
        RUN,
        ("1 of 20 rows have no usable feature file", "row 2: no feature file for id"),
        prep=lambda root: _first_feature(root).unlink(),
    ),
    "manifest-missing": Row(
        RUN, ("how2sign_realigned_val.csv: the manifest does not exist",), prep=lambda r: (r / VAL).unlink()
    ),
    "manifest-header-only": Row(RUN, ("the val manifest has no rows",), prep=_lines(VAL, lambda ls: ls[:1])),
    # Feature files --------------------------------------------------------------------------------
    "feature-wrong-dim": Row(
        RUN,
        (
            "(1 problem)",
            "20 of 20 feature files",
            "have 16 features per frame, but data.feature_dim is 17",
            "set data.feature_dim to 16",
        ),
        spec=("feature_dim: 16", "feature_dim: 17"),
    ),
    "feature-nan": Row(RUN, ("holds NaN or infinite values in 1 of",), prep=_change_feature(_nan)),
    "feature-pt-pickled-object": Row(
        RUN, ("holds a pickled Python object (posix.system)", "never run code"), prep=_change_feature(_pickled_pt)
    ),
    "feature-npy-object-array": Row(
        RUN, ("holds Python objects (dtype=object), which are refused",), prep=_change_feature(_object_npy)
    ),
    "feature-id-escapes-with-dotdot": Row(RUN, ("id '../../x' contains a path separator",), prep=_escaping_id),
    "feature-id-absolute-path": Row(
        RUN, ("id '/etc/passwd' contains a path separator",), prep=_set_first_id("/etc/passwd")
    ),
    "feature-symlink-out-of-features": Row(RUN, ("outside the features directory",), prep=_symlink_out),
    "feature-not-an-npy-file": Row(
        RUN, ("it is not a .npy file (no NUMPY header)",), prep=_change_feature(lambda p: p.write_bytes(b"hello"))
    ),
    "feature-zero-frames": Row(
        RUN, ("has 0 frames",), prep=_change_feature(lambda p: np.save(p, np.zeros((0, 16), np.float32)))
    ),
    # CLI flags ------------------------------------------------------------------------------------
    "flag-trials-zero": Row((*RUN, "--trials", "0"), ("budget.trials: must be >= 1, but got 0 (given by --trials",)),
    "flag-trials-not-a-number": Row((*RUN, "--trials", "abc"), ("Invalid value for '--trials'",)),
    "flag-subset-above-one": Row((*RUN, "--subset", "1.5"), ("budget.subset: must be in (0, 1], but got 1.5",)),
    "flag-epochs-zero": Row((*RUN, "--epochs", "0"), ("fixed.run.epochs: must be >= 1, but got 0",)),
    "flag-workers-zero": Row((*RUN, "--workers", "0"), ("--workers: must be >= 1, but got 0",)),
    "flag-workers-per-gpu-zero": Row((*RUN, "--workers-per-gpu", "0"), ("--workers-per-gpu: must be >= 1",)),
    "flag-gpus-not-a-list": Row((*RUN, "--gpus", "x"), ("--gpus: must be 'all' or a comma-separated list",)),
    "flag-gpus-negative": Row((*RUN, "--gpus", "-1"), ("--gpus: must list GPU ids >= 0",)),
    "flag-gpus-all-without-cuda": Row((*RUN, "--gpus", "all"), ("--gpus all: no CUDA GPU is visible",)),
    "flag-gpus-past-the-visible-ones": Row((*RUN, "--gpus", "0,7"), ("--gpus 0,7: asks for GPU 7, but",)),
    "flag-gpus-with-workers": Row(
        (*RUN, "--gpus", "0", "--workers", "2"),
        ("--workers: counts CPU workers, but --gpus was given", "--workers-per-gpu 2"),
    ),
    "flag-set-not-key-value": Row((*TRAIN_CMD, "--set", "optim.lr"), ("--set optim.lr: must be KEY=VALUE",)),
    "flag-set-unknown-key": Row((*TRAIN_CMD, "--set", "optim.lrate=0.1"), ("--set: optim.lrate: is not a config key",)),
    "flag-set-wrong-type-with-password": Row(
        (*TRAIN_CMD, "--set", f"model.d_model=postgresql+psycopg://u:{SECRET}@h/db"),
        ("--set: model.d_model: must be an integer", "u:***@h"),
    ),
    "flag-data-synth-dim": Row(("data", "synth", "--out", "o", "--dim", "2"), ("--dim: must be >= 4, but got 2",)),
    # Storage URLs ---------------------------------------------------------------------------------
    "storage-unknown-scheme": Row(
        (*RUN, "--storage", f"redis://u:{SECRET}@h/0"), ("storage: must start with one of", "'redis://u:***@h/0'")
    ),
    "storage-plain-postgresql": Row(
        (*RUN, "--storage", f"postgresql://u:{SECRET}@h/db"), ("plain postgresql:// scheme", "postgresql+psycopg://")
    ),
    "storage-sqlite-two-slashes": Row(
        (*RUN, "--storage", "sqlite://study.db"), ("must be sqlite:/// followed by a file path",)
    ),
    "storage-journal-without-path": Row((*RUN, "--storage", "journal:///"), ("has no file path", "journal.log")),
    "storage-env-query-password": Row(
        RUN,
        ("storage: must start with one of", "password=***", "(given by --storage or SIGNTUNE_STORAGE"),
        env={"SIGNTUNE_STORAGE": f"mysql://u@h/db?password={SECRET}"},
    ),
    "storage-in-spec-not-a-string": Row(
        RUN, ("storage: must be a URL string, but got 5",), spec=(BUDGET, f"{BUDGET}\nstorage: 5")
    ),
    "storage-postgres-unreachable": Row(
        (*RUN, "--storage", PG_UNREACHABLE), ("storage: cannot open postgresql+psycopg://user:***@127.0.0.1:1/x",)
    ),
    # Tracking URIs --------------------------------------------------------------------------------
    "tracking-flag-bad-scheme": Row((*RUN, "--tracking-uri", "ftp://x"), ("--tracking-uri: must start with one of",)),
    "tracking-env-bad-scheme": Row(
        RUN,
        ("MLFLOW_TRACKING_URI: must start with one of", "gopher://u:***@h/x"),
        env={"MLFLOW_TRACKING_URI": f"gopher://u:{SECRET}@h/x"},
    ),
    "tracking-spec-bad-scheme": Row(
        RUN,
        ("study.yaml: tracking.uri: must start with one of", "ftp://u:***@x/y"),
        spec=("tracking: {enabled: true}", f"tracking: {{uri: 'ftp://u:{SECRET}@x/y'}}"),
    ),
    "tracking-mlflow-ui-bad-scheme": Row(
        ("mlflow-ui", "--study", "t", "--tracking-uri", "ftp://x"), ("--tracking-uri: must start with one of",)
    ),
    # Study state ----------------------------------------------------------------------------------
    "status-of-a-study-never-run": Row(("status", "--study", "t"), ("no study named 't'",)),
}

MARKS: dict[str, list[pytest.MarkDecorator]] = {
    # Connection refused is retried for ~8 s (a PostgreSQL server may be restarting).
    "storage-postgres-unreachable": [pytest.mark.slow],
    "flag-gpus-all-without-cuda": [
        pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: --gpus all is valid here")
    ],
}


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny How2Sign-style data made by the real command, once for the whole corpus."""
    out = tmp_path_factory.mktemp("synth") / "data"
    res = study(
        "data",
        "synth",
        "--out",
        str(out),
        "--n-train",
        "20",
        "--n-val",
        "5",
        "--n-test",
        "2",
        "--dim",
        "16",
        cwd=out.parent,
    )
    assert res.returncode == 0, res.stderr
    return out


@dataclass(frozen=True)
class Outcome:
    project: Path
    before: set[Path]  # the project's files just before the command ran
    result: subprocess.CompletedProcess[str]


def _prepare(root: Path, row: Row, data: Path) -> Path:
    project = make_project(root, data)
    if row.spec:
        edit(project / SPEC, *row.spec)
    if row.space:
        edit(project / SPACE, *row.space)
    if row.prep:
        row.prep(project)
    return project


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synth_data: Path
) -> dict[str, Outcome]:
    """Every selected row, each in its own project, run side by side (one process per core).

    Rows are independent processes; running them concurrently keeps the corpus near the cost of
    its slowest row instead of the sum of them all.
    """
    names = [
        item.callspec.id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_bad_input" and item.module is request.module
    ]
    prepared = {}
    for name in names:
        project = _prepare(tmp_path_factory.mktemp(name), CASES[name], synth_data)
        prepared[name] = (project, snapshot(project))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {
            name: pool.submit(study, *CASES[name].args, cwd=project, env=CASES[name].env)
            for name, (project, _) in prepared.items()
        }
        return {name: Outcome(prepared[name][0], prepared[name][1], f.result()) for name, f in futures.items()}


def test_the_tiny_project_is_valid(tmp_path: Path, synth_data: Path) -> None:
    """The baseline every row edits passes validation, so each row fails for its own reason."""
    res = study("validate", "t", cwd=make_project(tmp_path, synth_data))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


@pytest.mark.parametrize("name", [pytest.param(name, id=name, marks=MARKS.get(name, [])) for name in CASES])
def test_bad_input(outcomes: dict[str, Outcome], name: str) -> None:
    row, outcome = CASES[name], outcomes[name]
    res, project = outcome.result, outcome.project

    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    for fragment in row.expect:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    assert "Traceback" not in output
    assert SECRET not in output
    # The tokenizer cache (.cache) is data preparation, not a study: a run that gets as far as the
    # storage may leave it. Anything else new (study.db, a journal, mlflow.db, export/) is a write.
    written = {p for p in snapshot(project) - outcome.before if ".cache" not in p.parts}
    assert written == set(), "a rejected input must write nothing (storage, MLflow, exports)"
    assert not (project / "PWNED").exists(), "no code from the input may run"


def test_corpus_covers_every_category() -> None:
    prefixes = {name.split("-")[0] for name in CASES}
    assert {"spec", "space", "manifest", "feature", "flag", "storage", "tracking"} <= prefixes
    assert len(CASES) >= 35


def test_train_set_accepts_a_plugin_key(tmp_path: Path) -> None:
    """The counterpart of flag-set-unknown-key: a key the plug-in task does take is accepted."""
    project = make_project(tmp_path, None)
    edit(project / SPEC, "task: sign2text", "task: okplug:objective")
    edit(project / SPEC, "objective: {metric: val_bleu", "objective: {metric: score")
    (project / SPACE).write_text("# study run --study t\nparams:\n  x: {type: float, low: 0.0, high: 1.0}\n")
    edit(project / SPEC, "  - {optim.lr: 1.0e-3, model.d_model: 32}", "  - {x: 0.5}")
    res = study(*TRAIN_CMD, "--set", "x=0.5", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
