"""Search space YAML -> Optuna distributions, with conditional parameters.

Format (one entry per dotted config key)::

    params:
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.num_encoder_layers: {type: int, low: 1, high: 4}
      schedule.name: {type: categorical, choices: [cosine, linear]}
      schedule.min_lr_ratio: {type: float, low: 0.0, high: 0.2, when: {schedule.name: cosine}}

``when`` makes a parameter conditional on earlier ones: it is suggested only in trials where
every named parameter took one of the listed values.

Size: a little past 400 lines: the parser, the conditional-parameter rules and ``suggest``
share one table of parameter kinds and are tested as one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from signtune.coerce import dotted
from signtune.errors import ConfigError, Problem

TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}


@dataclass(frozen=True)
class Param:
    """One searched parameter: its dotted name, distribution and condition."""

    name: str
    distribution: BaseDistribution
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(name in values and values[name] in allowed for name, allowed in self.when)


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    params: tuple[Param, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution for p in self.params}

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def _number(value: Any, where: str, key: str, problems: list[Problem], *, integer: bool) -> float | None:
    if isinstance(value, str):
        try:
            float(value)
            hint = f"PyYAML reads {value!r} as a string: write it with a dot, e.g. {dotted(value)}"
        except ValueError:
            hint = "write a number"
        problems.append(Problem(f"{where}.{key}", f"must be a number, but got the string {value!r}", hint))
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(Problem(f"{where}.{key}", f"must be a finite number, but got {value!r}", "write a number"))
        return None
    if integer and int(value) != value:
        problems.append(
            Problem(
                f"{where}.{key}",
                f"must be an integer for type int, but got {value!r}",
                "use a whole number or type: float",
            )
        )
        return None
    return float(value)


def _choice_key(choice: Any) -> tuple[str, Any]:
    """Choices that are equal to Optuna (``32`` and ``32.0``) share a key; ``True`` is not ``1``."""
    if isinstance(choice, int | float) and not isinstance(choice, bool):
        return ("number", float(choice))
    return (type(choice).__name__, choice)


def _parse_param(name: str, spec: Any, where: str, problems: list[Problem]) -> BaseDistribution | None:
    if not isinstance(spec, dict):
        problems.append(
            Problem(
                where,
                f"must be a mapping like {{type: float, low: ..., high: ...}}, but got {spec!r}",
                "see search_spaces/sign2text.yaml",
            )
        )
        return None
    kind = spec.get("type")
    if kind not in TYPES:
        problems.append(
            Problem(
                f"{where}.type",
                f"must be one of {list(TYPES)}, but got {kind!r}",
                "set type: float, int or categorical",
            )
        )
        return None
    unknown = sorted(set(spec) - _KEYS[kind])
    for key in unknown:
        problems.append(Problem(f"{where}.{key}", f"is not a key of a {kind} parameter", f"use {sorted(_KEYS[kind])}"))
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(
                Problem(
                    f"{where}.choices", f"must be a non-empty list, but got {choices!r}", "e.g. choices: [16, 32, 64]"
                )
            )
            return None
        bad = [c for c in choices if not (c is None or isinstance(c, bool | int | float | str))]
        if bad:
            problems.append(
                Problem(
                    f"{where}.choices",
                    f"must hold numbers, strings or booleans, but got {bad!r}",
                    "flatten the choices",
                )
            )
            return None
        keys = [_choice_key(c) for c in choices]
        dups = [c for i, c in enumerate(choices) if keys[i] in keys[:i]]
        if dups:
            problems.append(
                Problem(f"{where}.choices", f"has duplicates {dups!r} in {choices!r}", "list each choice once")
            )
            return None
        return CategoricalDistribution(choices)
    integer = kind == "int"
    before = len(problems)
    if "low" not in spec or "high" not in spec:
        problems.append(Problem(where, "needs both low and high", f"e.g. {{type: {kind}, low: 1, high: 4}}"))
        return None
    low = _number(spec["low"], where, "low", problems, integer=integer)
    high = _number(spec["high"], where, "high", problems, integer=integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(Problem(f"{where}.log", f"must be true or false, but got {log!r}", "write log: true"))
        log = False
    step = None
    if "step" in spec and spec["step"] is not None:
        step = _number(spec["step"], where, "step", problems, integer=integer)
        if step is not None and step <= 0:
            problems.append(Problem(f"{where}.step", f"must be > 0, but got {spec['step']}", "use a positive step"))
    if len(problems) > before or low is None or high is None:
        return None
    if low > high:
        problems.append(
            Problem(where, f"low must be <= high, but got low={spec['low']} > high={spec['high']}", "swap low and high")
        )
        return None
    if log and low <= 0:
        problems.append(
            Problem(
                f"{where}.low",
                f"must be > 0 for log=True, but got low={spec['low']}",
                "raise low above 0 or set log: false",
            )
        )
        return None
    if log and step is not None:
        problems.append(Problem(where, "cannot have both log: true and a step", "drop one of them"))
        return None
    if integer:
        return IntDistribution(int(low), int(high), log=log, step=int(step) if step else 1)
    return FloatDistribution(low, high, log=log, step=step)


def parse(path: Path, *, known_keys: set[str] | None = None, where_prefix: str = "params") -> SearchSpace:
    """Read and validate a search space file; every problem is reported at once.

    Args:
        path: the YAML file.
        known_keys: the config keys a parameter may name (the task's); ``None`` skips the check.
        where_prefix: the top-level key holding the parameters.

    Raises:
        ConfigError: listing each problem with file, key path, rule, value and fix.
    """
    from signtune.spec import read_yaml

    raw = read_yaml(path)
    problems: list[Problem] = []
    if not isinstance(raw, dict) or not isinstance(raw.get(where_prefix), dict):
        raise ConfigError(
            Problem(
                str(path),
                f"must have a top-level `{where_prefix}:` mapping of dotted config keys",
                "see search_spaces/sign2text.yaml",
            )
        )
    for key in sorted(set(raw) - {where_prefix}):
        problems.append(
            Problem(f"{path}: {key}", "is not a known top-level key", f"put parameters under `{where_prefix}:`")
        )
    params: list[Param] = []
    seen: dict[str, BaseDistribution] = {}
    invalid: set[str] = set()  # params with a problem of their own, already reported
    key_types = _config_types() if known_keys is not None else {}
    for name, spec in raw[where_prefix].items():
        where = f"{path}: {where_prefix}.{name}"
        if known_keys is not None and name not in known_keys:
            section = str(name).split(".")[0]
            near = sorted(k for k in known_keys if k.startswith(section + "."))
            problems.append(
                Problem(where, "is not a config key of this task", f"use one of {near or sorted(known_keys)}")
            )
            continue
        dist = _parse_param(name, spec, where, problems)
        if dist is not None and name in key_types:
            type_problem = _check_type(name, dist, key_types[name], where)
            if type_problem is not None:
                problems.append(type_problem)
                dist = None
        if dist is None:
            invalid.add(name)
            continue
        when: list[tuple[str, tuple[Any, ...]]] = []
        cond = spec.get("when") if isinstance(spec, dict) else None
        if cond is not None:
            if not isinstance(cond, dict) or not cond:
                problems.append(
                    Problem(
                        f"{where}.when",
                        f"must map earlier parameter names to allowed values, but got {cond!r}",
                        "e.g. when: {schedule.name: cosine}",
                    )
                )
                continue
            for parent, allowed in cond.items():
                values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
                parent_dist = seen.get(parent)
                if parent in invalid:
                    continue  # its own problem is reported; a second one here would mislead
                if not isinstance(parent_dist, CategoricalDistribution):
                    problems.append(
                        Problem(
                            f"{where}.when.{parent}",
                            "must name a categorical parameter defined above this one",
                            "move the condition's parameter up, or make it categorical",
                        )
                    )
                    continue
                missing = [v for v in values if v not in parent_dist.choices]
                if missing:
                    problems.append(
                        Problem(
                            f"{where}.when.{parent}",
                            f"values {missing!r} are not among its choices {list(parent_dist.choices)!r}",
                            "use one of the parent's choices",
                        )
                    )
                    continue
                when.append((parent, values))
        seen[name] = dist
        params.append(Param(name, dist, tuple(when)))
    problems.extend(_check_heads(path, where_prefix, {p.name: p.distribution for p in params}))
    if problems:
        raise ConfigError(problems)
    return SearchSpace(path, tuple(params))


def _config_types() -> dict[str, Any]:
    from signtune.config import config_keys

    return config_keys()


def _check_type(name: str, dist: BaseDistribution, tp: Any, where: str) -> Problem | None:
    """A distribution whose values the config key cannot take fails every trial: say so now."""
    from signtune.config import TrainConfig, apply_overrides

    if isinstance(dist, CategoricalDistribution):
        bad: list[str] = []
        for choice in dist.choices:
            try:
                apply_overrides(TrainConfig(), {name: choice})
            except ConfigError as exc:
                bad.append(f"{choice!r} ({exc.problems[0].message})")
        if bad:
            return Problem(
                f"{where}.choices", f"has values the config key cannot take: {', '.join(bad)}", "drop or fix them"
            )
        return None
    if tp is int and isinstance(dist, FloatDistribution):
        whole = dist.step is not None and float(dist.step).is_integer() and float(dist.low).is_integer()
        if not whole:
            return Problem(
                f"{where}.type",
                f"must be int for {name}, which takes whole numbers, but got type: float",
                "write type: int",
            )
        return None
    if tp not in (int, float):
        return Problem(
            f"{where}.type",
            f"{'a float' if isinstance(dist, FloatDistribution) else 'an int'} range cannot set {name}, "
            "which is not a number",
            "write type: categorical with its allowed values",
        )
    return None


def _check_heads(path: Path, prefix: str, dists: dict[str, BaseDistribution]) -> list[Problem]:
    """Every searched d_model must be divisible by every searched head count."""
    d, h = dists.get("model.d_model"), dists.get("model.num_heads")
    if not isinstance(d, CategoricalDistribution) or not isinstance(h, CategoricalDistribution):
        return []
    bad = [
        (dm, nh)
        for dm, nh in itertools.product(d.choices, h.choices)
        if isinstance(dm, int) and isinstance(nh, int) and dm % nh
    ]
    if not bad:
        return []
    return [
        Problem(
            f"{path}: {prefix}.model.num_heads",
            f"every model.d_model choice must be divisible by every head count, but these pairs are not: {bad}",
            "pick head counts that divide all d_model choices (e.g. d_model multiples of 64 with heads 2, 4, 8)",
        )
    ]


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask ``trial`` for every active parameter through the public ``suggest_*`` API."""
    values: dict[str, Any] = {}
    for p in space.params:
        if not p.active(values):
            continue
        d = p.distribution
        if isinstance(d, FloatDistribution):
            values[p.name] = trial.suggest_float(p.name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            values[p.name] = trial.suggest_int(p.name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, CategoricalDistribution):
            values[p.name] = trial.suggest_categorical(p.name, d.choices)
    return values


def check_params(space: SearchSpace, params: Mapping[str, Any], where: str) -> list[Problem]:
    """Problems with a fixed param set (an ``enqueue`` entry): unknown names, out-of-range values."""
    problems: list[Problem] = []
    for name, value in params.items():
        param = next((p for p in space.params if p.name == name), None)
        decided = param is not None and all(parent in params for parent, _ in param.when)
        if param is not None and param.when and decided and not param.active(params):
            cond = ", ".join(f"{parent} in {list(allowed)!r}" for parent, allowed in param.when)
            problems.append(
                Problem(
                    f"{where}.{name}",
                    f"is only searched when {cond}, so this entry's value would be ignored",
                    f"drop {name} from this entry, or change its condition's value",
                )
            )
            continue
        try:
            dist = space[name].distribution
        except KeyError:
            problems.append(
                Problem(f"{where}.{name}", "is not a parameter of the search space", f"use one of {space.names}")
            )
            continue
        if isinstance(value, str) and not isinstance(dist, CategoricalDistribution):
            problems.append(
                Problem(
                    f"{where}.{name}",
                    f"must be a number, but got the string {value!r}",
                    f"write it with a dot, e.g. {dotted(value)}",
                )
            )
            continue
        ok = _contains(dist, value)
        if not ok:
            problems.append(
                Problem(
                    f"{where}.{name}",
                    f"value {value!r} is outside the search space {dist}",
                    "use a value inside the parameter's range or choices",
                )
            )
    return problems


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(dist, IntDistribution) and int(value) != value:
        return False
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    return bool(low <= value <= high)
