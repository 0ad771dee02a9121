"""The study spec (``studies/<name>/study.yaml``): the only YAML reader of the package.

``load_spec`` validates the whole file and reports every problem at once, each naming the
file, the key path, the rule, the value and the fix. CLI flags are applied last and win.

Size: past 400 lines because every section's dataclass sits beside the one loader that checks
them all in a single pass; split, the all-problems-at-once report would need a registry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from signtune.coerce import coerce
from signtune.config import TrainConfig, apply_overrides
from signtune.errors import ConfigError, Problem

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
DEFAULT_STUDIES_DIR = Path("studies")
BUILTIN_TASKS = ("sign2text",)


@dataclass(frozen=True)
class SynthSpec:
    """Parameters of the embedded synthetic data generator (``data.synthetic``)."""

    seed: int = 0
    n_train: int = 3000
    n_val: int = 300
    n_test: int = 300


@dataclass(frozen=True)
class ObjectiveSpec:
    metric: str = "val_bleu"
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass(frozen=True)
class SamplerSpec:
    # auto: chosen from the budget (signtune.study.resolve_strategy); gp: Optuna's GPSampler.
    name: Literal["auto", "tpe", "random", "gp"] = "auto"
    seed: int = 0
    n_startup_trials: int | None = None  # None: sized to budget.trials


@dataclass(frozen=True)
class PrunerSpec:
    # auto: chosen from the budget and epochs; sha: successive halving with rungs at
    # min_resource * reduction_factor**k epochs.
    name: Literal["auto", "median", "hyperband", "sha", "none"] = "auto"
    # What the pruner compares after each epoch: a metric the task reports, e.g. val_loss
    # (teacher-forced, informative from epoch 1) while the objective stays val_bleu. None: the
    # objective's metric.
    metric: str | None = None
    # The metric's better direction; None: the objective's for its own metric, else minimize
    # for names ending in "loss" and maximize otherwise.
    direction: Literal["maximize", "minimize"] | None = None
    n_startup_trials: int = 5
    n_warmup_steps: int = 2
    min_resource: int = 1
    reduction_factor: int = 3


@dataclass(frozen=True)
class BudgetSpec:
    trials: int = 30
    subset: float = 1.0
    timeout: float | None = None
    trial_timeout: float | None = None  # a trial silent this long is pruned (reason: timeout)


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None
    experiment: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class PromoteSpec:
    """``promote:``: how ``study promote-best`` retrains the study's best configs.

    Attributes:
        epochs: epochs per candidate (``--epochs`` wins); None: the trials' ``run.epochs``.
        patience: a candidate stops after this many epochs without a better
            ``objective.metric``; 0: it trains every epoch.
        beam_size: the beam of the winner's test-split decoding (the sign2text task).
        overrides: config values (dotted keys) set on top of each trial's, e.g.
            ``{run.amp: false}``.
    """

    epochs: int | None = None
    patience: int = 0
    beam_size: int = 5
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageSpec:
    """``lineage:``: where a refined study came from (written by ``study refine``).

    Attributes:
        parent_study: the parent study's name.
        parent_storage: its storage URL, password masked.
        parent_spec: its study.yaml, as ``study refine`` was given it.
        parent_trials: the parent's trials the child was derived from, best first.
        top_k: how many of them.
        metric: the parent's objective metric that ranked them.
        rules: each parent parameter -> the rule that made the child's entry.
        chain: the parent's own lineage entries (study, storage, trials), nearest first.
    """

    parent_study: str = ""
    parent_storage: str = ""
    parent_spec: str = ""
    parent_trials: list[int] = field(default_factory=list)
    top_k: int = 0
    metric: str = ""
    rules: dict[str, str] = field(default_factory=dict)
    chain: list[dict[str, Any]] = field(default_factory=list)

    def links(self) -> list[dict[str, Any]]:
        """The whole chain, nearest first: this study's parent, then its ancestors."""
        first = {"study": self.parent_study, "storage": self.parent_storage, "trials": list(self.parent_trials)}
        return [first, *self.chain]


@dataclass(frozen=True)
class StudySpec:
    """A validated study. ``base`` is the trainer config every trial starts from."""

    name: str
    path: Path
    task: str
    search_space: Path
    base: TrainConfig
    fixed: dict[str, Any]
    epochs: int
    synthetic: SynthSpec | None
    objective: ObjectiveSpec
    sampler: SamplerSpec
    pruner: PrunerSpec
    budget: BudgetSpec
    storage: str
    tracking: TrackingSpec
    enqueue: tuple[dict[str, Any], ...] = ()
    promote: PromoteSpec = field(default_factory=PromoteSpec)
    raw: dict[str, Any] = field(default_factory=dict)
    lineage: LineageSpec | None = None

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.dir / 'mlflow.db').as_posix()}"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def seed(self) -> int:
        return int(self.fixed.get("run.seed", self.base.run.seed))

    @property
    def device(self) -> str:
        return str(self.fixed.get("run.device", self.base.run.device))

    @property
    def data_root(self) -> Path:
        root = Path(self.base.data.root)
        return root if root.is_absolute() else self.dir / root

    def hash(self) -> str:
        """A short hash of the spec as loaded (CLI overrides included)."""
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


_TOP_KEYS = {
    "name",
    "task",
    "search_space",
    "data",
    "fixed",
    "objective",
    "sampler",
    "pruner",
    "budget",
    "storage",
    "tracking",
    "enqueue",
    "promote",
    "lineage",
    "stages",
}


# Spec keys the CLI can set, and the option that sets them (named in errors about their values).
_FLAGS = {
    "budget.trials": "--trials",
    "budget.subset": "--subset",
    "budget.timeout": "--timeout",
    "fixed.run.epochs": "--epochs",
    "storage": "--storage or SIGNTUNE_STORAGE",
    "tracking.uri": "--tracking-uri or MLFLOW_TRACKING_URI",
}


def resolve_study_path(study: str | None) -> Path:
    """``--study`` value (a name, a directory or a yaml file) -> path of its study.yaml."""
    if study is None:
        study = "demo"
    candidate = Path(study)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
    elif candidate.is_dir() and (candidate / "study.yaml").is_file():
        path = candidate / "study.yaml"
    else:
        path = DEFAULT_STUDIES_DIR / study / "study.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in DEFAULT_STUDIES_DIR.glob("*/study.yaml"))
        raise ConfigError(
            Problem(
                f"--study {study}",
                f"no study spec found at {path}",
                f"pass a study name under ./studies ({', '.join(known) or 'none found here'}) or "
                "a path to a study.yaml; run `study` from the project directory",
            )
        )
    return path


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names the same key twice (PyYAML would silently keep the last one)."""


class _StrictSafeLoader(yaml.SafeLoader):
    """``SafeLoader`` (no Python tags, nothing is constructed but plain data) that also refuses
    duplicate keys: a search space listing ``optim.lr`` twice must not drop one in silence."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            if first is not None:
                raise _DuplicateKey(
                    problem=f"duplicate key {key!r} (first on line {first})", problem_mark=key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Read a YAML file with ``safe_load`` semantics; errors become a ConfigError with the line.

    Only plain data is built: a ``!!python/...`` tag is refused, never constructed. A key
    given twice in one mapping is an error, not a silent override.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(Problem(str(path), f"cannot be read ({exc.strerror})", "check the path")) from None
    except UnicodeDecodeError:
        raise ConfigError(Problem(str(path), "is not UTF-8 text", "save the file as UTF-8")) from None
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, _DuplicateKey):
            raise ConfigError(Problem(where, f"has a {problem}", "keep one of the two entries")) from None
        fix = "fix the YAML syntax (indentation, colons, quotes)"
        if "python/" in str(problem):
            problem = f"{problem}; Python tags are refused: these files are read as plain data (yaml.safe_load)"
            fix = "remove the !!python tag and write the plain value"
        raise ConfigError(Problem(where, f"is not valid YAML ({problem})", fix)) from None


class _Reader:
    """Pulls typed values out of a mapping, collecting problems instead of raising."""

    def __init__(self, path: Path, overridden: set[str] | None = None) -> None:
        self.path = path
        self.overridden = overridden or set()
        self.problems: list[Problem] = []

    def add(self, key: str, message: str, fix: str) -> None:
        if key in self.overridden:  # the user will look for it in the file otherwise
            message += f" (given by {_FLAGS.get(key, 'a command-line option')}, not the file)"
        self.problems.append(Problem(f"{self.path}: {key}", message, fix))

    def section(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(
                key, f"must be a mapping, but got {value!r}", f"write `{key}:` followed by indented `name: value` lines"
            )
            return {}
        return value

    def dataclass_from(self, cls: type, raw: dict[str, Any], key: str) -> Any:
        import dataclasses
        import typing

        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        for unknown in sorted(set(raw) - set(names)):
            self.add(f"{key}.{unknown}", "is not a known key", f"use one of {names}")
        kwargs: dict[str, Any] = {}
        for name in names:
            if name not in raw:
                continue
            try:
                kwargs[name] = check_value(raw[name], hints[name])
            except ValueError as exc:
                self.add(f"{key}.{name}", str(exc), "correct the value")
        return cls(**kwargs)


def check_value(value: Any, tp: Any) -> Any:
    """Type-check one spec value (``signtune.coerce``); ``1e-5``-style strings get a pointed hint."""
    return coerce(value, tp)


def load_spec(study: str | Path | None = None, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Load and validate a study spec; CLI ``overrides`` win over the file.

    Args:
        study: a study name under ``./studies``, a directory holding ``study.yaml``, or a path
            to a yaml file. ``None`` means the demo study.
        overrides: CLI values by spec key path, e.g. ``{"budget.trials": 30, "budget.subset": 0.3,
            "fixed.run.epochs": 5, "storage": "sqlite:///x.db"}``.

    Raises:
        ConfigError: with every problem found in the file and the overrides.
    """
    path = resolve_study_path(str(study) if study is not None else None)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            Problem(
                str(path),
                f"must be a mapping of keys, but got {type(raw).__name__}",
                "see studies/demo/study.yaml for the layout",
            )
        )
    raw = _apply_spec_overrides(raw, overrides or {})
    r = _Reader(path, {k for k, v in (overrides or {}).items() if v is not None})
    for unknown in sorted(set(raw) - _TOP_KEYS):
        r.add(unknown, "is not a known key", f"use one of {sorted(_TOP_KEYS)}")

    name = raw.get("name", path.parent.name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        r.add("name", f"must be a non-empty name without spaces or slashes, but got {name!r}", "e.g. `name: demo`")
        name = path.parent.name

    task = raw.get("task", "sign2text")
    if not isinstance(task, str) or not task:
        r.add("task", f"must be a task name or `module:function`, but got {task!r}", "e.g. `task: sign2text`")
        task = "sign2text"

    space_raw = raw.get("search_space", "../../search_spaces/sign2text.yaml")
    search_space = path.parent / str(space_raw)
    if not search_space.is_file():
        r.add(
            "search_space",
            f"file {search_space} does not exist",
            "point it at a search space yaml, relative to this study.yaml",
        )

    data = dict(r.section(raw, "data"))
    synth_raw = data.pop("synthetic", None)
    synthetic: SynthSpec | None = None
    if isinstance(synth_raw, dict):
        synthetic = r.dataclass_from(SynthSpec, synth_raw, "data.synthetic")
    elif synth_raw not in (None, False):
        r.add("data.synthetic", f"must be a mapping or false, but got {synth_raw!r}", "e.g. `synthetic: {seed: 0}`")

    fixed = r.section(raw, "fixed")
    base = TrainConfig()
    if task in BUILTIN_TASKS:
        # The built-in task's config is typed: every data.* and fixed key is checked here.
        for prefix, values in (("", {f"data.{k}": v for k, v in data.items()}), ("fixed.", fixed)):
            try:
                base = apply_overrides(base, values)
            except ConfigError as exc:
                for p in exc.problems:
                    key = p.where.split(": ", 1)[-1]
                    r.add(prefix + key, p.message, p.fix)
        from signtune.data.layout import features_dir_problem

        bad_folder = features_dir_problem(base.data.features_dir)
        if bad_folder is not None:
            r.add("data.features_dir", *bad_folder)
    epochs = fixed.get("run.epochs", base.run.epochs)
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        if not any(p.where.endswith(": fixed.run.epochs") for p in r.problems):  # the typed check said so
            r.add("fixed.run.epochs", f"must be an integer, but got {epochs!r}", "e.g. --epochs 8")
        epochs = 1

    objective = r.dataclass_from(ObjectiveSpec, r.section(raw, "objective"), "objective")
    sampler = r.dataclass_from(SamplerSpec, r.section(raw, "sampler"), "sampler")
    pruner = r.dataclass_from(PrunerSpec, r.section(raw, "pruner"), "pruner")
    budget = r.dataclass_from(BudgetSpec, r.section(raw, "budget"), "budget")
    tracking = r.dataclass_from(TrackingSpec, r.section(raw, "tracking"), "tracking")

    if budget.trials < 1:
        r.add(
            "budget.trials",
            f"must be >= 1, but got {budget.trials}",
            "use a positive number of trials, e.g. --trials 30",
        )
    if not 0.0 < budget.subset <= 1.0:
        r.add(
            "budget.subset",
            f"must be in (0, 1], but got {budget.subset}",
            "e.g. --subset 0.3 trains each trial on 30% of the train split",
        )
    if budget.trial_timeout is not None and budget.trial_timeout <= 0:
        r.add("budget.trial_timeout", f"must be > 0 seconds, but got {budget.trial_timeout}", "omit it for none")
    if budget.timeout is not None and budget.timeout <= 0:
        r.add("budget.timeout", f"must be > 0 seconds, but got {budget.timeout}", "omit it for no time limit")
    if sampler.n_startup_trials is not None and sampler.n_startup_trials < 0:
        r.add(
            "sampler.n_startup_trials",
            f"must be >= 0, but got {sampler.n_startup_trials}",
            "omit it to size it to the budget",
        )
    if pruner.n_warmup_steps < 0 or pruner.n_startup_trials < 0:
        r.add("pruner", "n_warmup_steps and n_startup_trials must be >= 0", "use 0 or more")
    if pruner.reduction_factor < 2:
        r.add(
            "pruner.reduction_factor",
            f"must be >= 2, but got {pruner.reduction_factor}",
            "hyperband halves with 2, thirds with 3",
        )
    if epochs < 1:
        r.add("fixed.run.epochs", f"must be >= 1, but got {epochs}", "e.g. --epochs 8")

    if tracking.uri is not None:
        from signtune.tracking import check_tracking_uri

        problem = check_tracking_uri(tracking.uri)
        if problem:
            r.add("tracking.uri", problem[0], problem[1])

    storage = raw.get("storage") or f"sqlite:///{(path.parent / 'study.db').as_posix()}"
    if not isinstance(storage, str):
        r.add("storage", f"must be a URL string, but got {storage!r}", "e.g. sqlite:///studies/demo/study.db")
        storage = f"sqlite:///{(path.parent / 'study.db').as_posix()}"
    else:
        from signtune.storage import check_storage_url

        problem = check_storage_url(storage)
        if problem:
            r.add("storage", problem[0], problem[1])

    enqueue_raw = raw.get("enqueue") or []
    enqueue: list[dict[str, Any]] = []
    if not isinstance(enqueue_raw, list):
        r.add(
            "enqueue",
            f"must be a list of param mappings, but got {enqueue_raw!r}",
            "write `- {optim.lr: 1.0e-3, ...}` items",
        )
    else:
        for i, item in enumerate(enqueue_raw):
            if not isinstance(item, dict):
                r.add(
                    f"enqueue[{i}]",
                    f"must be a mapping of param names to values, but got {item!r}",
                    "e.g. `- {optim.lr: 1.0e-3}`",
                )
            else:
                enqueue.append(dict(item))

    promote = r.dataclass_from(PromoteSpec, r.section(raw, "promote"), "promote")
    for key, low, value, fix in (
        ("epochs", 1, promote.epochs, "omit it to train as many epochs as the trials (run.epochs)"),
        ("patience", 0, promote.patience, "0 trains every epoch; e.g. 3"),
        ("beam_size", 1, promote.beam_size, "1 is greedy decoding; e.g. 5"),
    ):
        if value is not None and value < low:
            r.add(f"promote.{key}", f"must be >= {low}, but got {value}", fix)
    if task in BUILTIN_TASKS:  # typed config: promote-best would refuse these keys after tuning
        try:
            apply_overrides(base, promote.overrides)
        except ConfigError as exc:
            for p in exc.problems:
                r.add("promote.overrides." + p.where.split(": ", 1)[-1], p.message, p.fix)

    lineage = _lineage(r, raw)

    if r.problems:
        raise ConfigError(r.problems)
    return StudySpec(
        name=name,
        path=path,
        task=task,
        search_space=search_space,
        base=base,
        fixed=dict(fixed),
        epochs=epochs,
        synthetic=synthetic,
        objective=objective,
        sampler=sampler,
        pruner=pruner,
        budget=budget,
        storage=storage,
        tracking=tracking,
        enqueue=tuple(enqueue),
        promote=promote,
        raw=raw,
        lineage=lineage,
    )


def _lineage(r: _Reader, raw: dict[str, Any]) -> LineageSpec | None:
    """``lineage:`` checked: a parent name, whole trial numbers, rules as text."""
    if raw.get("lineage") is None:
        return None
    section = r.section(raw, "lineage")
    lineage: LineageSpec = r.dataclass_from(LineageSpec, section, "lineage")
    fix = "restore it from the parent (`study refine --dry-run` prints it), or delete the lineage: block"
    if section.get("parent_study") in (None, ""):
        r.add("lineage.parent_study", "must name the parent study, but is missing or empty", fix)
    trials = section.get("parent_trials", [])
    if not isinstance(trials, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in trials):
        r.add("lineage.parent_trials", f"must be a list of trial numbers, but got {trials!r}", fix)
    rules = section.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, str) for v in rules.values()):
        r.add("lineage.rules", f"must map parameter names to rule text, but got {rules!r}", fix)
    chain = section.get("chain", [])
    if not isinstance(chain, list) or not all(isinstance(c, dict) for c in chain):
        r.add("lineage.chain", f"must be a list of mappings (study, storage, trials), but got {chain!r}", fix)
    return lineage


def _apply_spec_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set ``overrides`` (``"budget.trials": 5``, ``"fixed.run.epochs": 3``) on a copy of ``raw``."""
    out = json.loads(json.dumps(raw, default=str)) if overrides else raw
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("fixed."):
            if not isinstance(out.get("fixed"), dict):
                out["fixed"] = {}
            out["fixed"][key[len("fixed.") :]] = value
            continue
        section, _, leaf = key.partition(".")
        if not leaf:
            out[section] = value
            continue
        if not isinstance(out.get(section), dict):
            out[section] = {}
        out[section][leaf] = value
    return out


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3.0e-4", "model.dropout=0.2"]`` -> typed values (YAML scalars)."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(Problem(f"--set {item}", "must be KEY=VALUE", "e.g. --set optim.lr=3.0e-4"))
            continue
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            values[key.strip()] = text
    if problems:
        raise ConfigError(problems)
    return values
