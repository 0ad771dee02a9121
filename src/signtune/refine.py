"""Refining a study: a child search space derived from the parent's best trials, and the advice
that says when to refine.

``refine_space`` narrows each range around the top-k complete trials (in log space where the
parameter is log-scaled), widens a range past an edge the top-k crowd against, cuts categorical
choices to those the top-k used, fixes parameters of negligible importance at the best trial's
value and keeps conditional parameters consistent with all of that. Every child parameter
records the rule that made it. ``signtune.advice`` names the same findings without changing
anything.

Pure logic: no CLI and no files (``cli/refine.py`` writes the child's folder and study).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from signtune.errors import Problem, StudyError
from signtune.space import Param, SearchSpace

if TYPE_CHECKING:
    pass

# Thresholds of the rules, named so that a rule string can quote them.
EDGE_FRACTION = 0.10  # the top-k crowd an edge when all lie within this fraction of the (log) range of it
NARROW_PAD = 0.5  # a narrowed range pads the top-k's span by this fraction of the span on each side...
MIN_WIDTH = 0.2  # ...and keeps at least this fraction of the parent's (log) width, where the bounds allow
WIDEN_FRACTION = 0.25  # a crowded edge moves out by this fraction of the parent's (log) width
NEGLIGIBLE_IMPORTANCE = 0.02  # a parameter below this share of the importance is fixed at the best value
IMPORTANCE_MIN_TRIALS = 10  # fewer complete trials than this: importances are noise, nothing is fixed...
IMPORTANCE_TRIALS_PER_PARAM = 2  # ...nor fewer than this many per searched param (fANOVA's forest needs them)
MAX_FIXED_SHARE = 0.5  # importance fixes at most this share of the params, the least important first
SIGNIFICANT_DIGITS = 3  # narrowed float bounds are rounded outward to this many digits


@dataclass(frozen=True)
class Refinement:
    """The child's search space and what went into it.

    Attributes:
        params: the child's search-space entries (YAML-ready mappings, ``when`` included), in order.
        fixed: parameters the child no longer searches, at the best trial's value.
        dropped: conditional parameters whose condition can no longer hold.
        rules: every parent parameter -> the rule that made its child entry.
        enqueue: the top-k trials' params restricted to the child's searched params, best first.
        trials: the parent's top-k trial numbers, best first.
        values: the top-k trials' objective values, best first.
    """

    params: dict[str, dict[str, Any]]
    fixed: dict[str, Any]
    dropped: list[str]
    rules: dict[str, str]
    enqueue: list[dict[str, Any]]
    trials: list[int]
    values: list[float] = field(default_factory=list)


# --- importance --------------------------------------------------------------------------------


def param_importances(study: optuna.Study) -> dict[str, float] | None:
    """fANOVA importances (seeded), or None with fewer complete trials than ``IMPORTANCE_MIN_TRIALS``
    or than ``IMPORTANCE_TRIALS_PER_PARAM`` per param.

    Conditional parameters are absent: Optuna measures the params every complete trial has.
    """
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    n_params = len({name for t in complete for name in t.params})
    if len(complete) < max(IMPORTANCE_MIN_TRIALS, IMPORTANCE_TRIALS_PER_PARAM * n_params):
        return None
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # e.g. every trial scored the same
        return None


# --- numeric ranges ----------------------------------------------------------------------------


def _to_u(x: float, log: bool) -> float:
    return math.log(x) if log else float(x)


def _from_u(u: float, log: bool) -> float:
    return math.exp(u) if log else u


def crowded_edges(dist: FloatDistribution | IntDistribution, values: Sequence[float]) -> tuple[bool, bool]:
    """Whether all ``values`` lie within ``EDGE_FRACTION`` of the low / the high edge (log-aware)."""
    lo, hi = _to_u(dist.low, dist.log), _to_u(dist.high, dist.log)
    width = hi - lo
    if width <= 0 or not values:
        return False, False
    us = [_to_u(v, dist.log) for v in values]
    return all(u - lo <= EDGE_FRACTION * width for u in us), all(hi - u <= EDGE_FRACTION * width for u in us)


def _natural_limits(dist: FloatDistribution | IntDistribution) -> tuple[float, float]:
    """How far a widened range may go: a bound that was >= 0 (a rate, a count) stays so, a range
    inside [0, 1] (a ratio, a probability) stays inside it, an int range from >= 1 stays >= 1."""
    low_limit, high_limit = -math.inf, math.inf
    if dist.low >= 0:
        low_limit = 0.0
    if isinstance(dist, IntDistribution) and dist.low >= 1:
        low_limit = 1.0
    if dist.low >= 0 and dist.high <= 1 and isinstance(dist, FloatDistribution):
        high_limit = 1.0
    return low_limit, high_limit


def _round(x: float, up: bool) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(x))))
    v = round(x * scale, 6)  # 0.01 * 1e4 is 100.00000000000001: not a reason to round up
    return (math.ceil(v) if up else math.floor(v)) / scale


def _snap(x: float, anchor: float, step: float, up: bool) -> float:
    k = (x - anchor) / step
    k = math.ceil(k - 1e-9) if up else math.floor(k + 1e-9)
    return round(anchor + k * step, 10)


def fmt_number(x: float) -> str:
    return f"{x:.3g}"


def refine_range(
    dist: FloatDistribution | IntDistribution, values: Sequence[float], k: int
) -> tuple[dict[str, Any], str]:
    """The child's entry for a numeric parameter, from its top-k ``values``, and the rule.

    Narrowed around the values (log space where ``dist.log``), widened past a crowded edge
    within the natural limits, rounded outward: ints stay ints, step params on their grid.
    """
    log = dist.log
    lo, hi = _to_u(dist.low, log), _to_u(dist.high, log)
    width = hi - lo
    us = [_to_u(v, log) for v in values]
    a, b = min(us), max(us)
    pad = max(NARROW_PAD * (b - a), MIN_WIDTH * width / 2)
    new_lo, new_hi = max(lo, a - pad), min(hi, b + pad)
    at_low, at_high = crowded_edges(dist, values)
    low_limit, high_limit = _natural_limits(dist)
    rules: list[str] = []
    limit_lo, limit_hi = dist.low, dist.high  # how far rounding may go on each side
    grid = dist.step or (1 if isinstance(dist, IntDistribution) else None)  # a widened edge moves >= 1 step
    if at_low:
        target = _from_u(lo - WIDEN_FRACTION * width, log)
        target = max(low_limit, min(target, dist.low - grid) if grid else target)
        if target < dist.low:
            new_lo, limit_lo = _to_u(target, log), target
            rules.append(f"widened past low edge {fmt_number(dist.low)}")
    if at_high:
        target = _from_u(hi + WIDEN_FRACTION * width, log)
        target = min(high_limit, max(target, dist.high + grid) if grid else target)
        if target > dist.high:
            new_hi, limit_hi = _to_u(target, log), target
            rules.append(f"widened past high edge {fmt_number(dist.high)}")
    x_lo, x_hi = _from_u(new_lo, log), _from_u(new_hi, log)
    step = dist.step
    if isinstance(dist, IntDistribution):
        s = step or 1
        x_lo, x_hi = _snap(x_lo, dist.low, s, up=False), _snap(x_hi, dist.low, s, up=True)
        x_lo, x_hi = max(x_lo, _snap(limit_lo, dist.low, s, up=True)), min(x_hi, _snap(limit_hi, dist.low, s, up=False))
    elif step is not None:
        x_lo, x_hi = _snap(x_lo, dist.low, step, up=False), _snap(x_hi, dist.low, step, up=True)
        x_lo, x_hi = (
            max(x_lo, _snap(limit_lo, dist.low, step, up=True)),
            min(x_hi, _snap(limit_hi, dist.low, step, up=False)),
        )
    else:
        x_lo = max(_round(x_lo, up=False), _round(limit_lo, up=False))
        x_hi = min(_round(x_hi, up=True), _round(limit_hi, up=True))
    x_lo, x_hi = min(x_lo, *values), max(x_hi, *values)  # the top-k stay inside, whatever the rounding
    narrowed = x_lo > dist.low or x_hi < dist.high
    scale = "log" if log else "linear"
    if narrowed:
        rules.insert(0, f"narrowed around top-{k} ({scale})")
    elif not rules:
        rules.append(f"kept: top-{k} span its range")
    entry: dict[str, Any] = {"type": "int" if isinstance(dist, IntDistribution) else "float"}
    if isinstance(dist, IntDistribution):
        entry.update(low=int(x_lo), high=int(x_hi))
    else:
        entry.update(low=float(x_lo), high=float(x_hi))
    if log:
        entry["log"] = True
    if step is not None and not (isinstance(dist, IntDistribution) and step == 1):
        entry["step"] = step
    return entry, "; ".join(rules)


# --- categorical choices -----------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _beyond(end: Any, inner: Any, all_positive: bool) -> Any | None:
    """The next value past ``end``, one step of ``end - inner`` on; where that would cross zero
    among positive choices, half of ``end`` for an even int (64 -> 32 keeps the divisibility
    sizes such as d_model need), else geometric. Ints stay ints."""
    nxt = end + (end - inner)
    if all_positive and nxt <= 0:
        nxt = end // 2 if isinstance(end, int) and end % 2 == 0 else end * end / inner
    if isinstance(end, int) and isinstance(inner, int):
        nxt = round(nxt)
    if nxt == end or (all_positive and nxt <= 0):
        return None
    return nxt


def edge_neighbour(choices: Sequence[Any], used: Sequence[Any]) -> tuple[Any, str] | None:
    """For ordered numeric ``choices`` all of whose ``used`` values sit at one end: the value past
    that end and which end (``"low"``/``"high"``); None otherwise."""
    if len(choices) < 2 or not all(_is_number(c) for c in choices) or not used:
        return None
    ordered = sorted(choices)
    positive = all(c > 0 for c in ordered)
    if all(u == ordered[0] for u in used):
        nxt = _beyond(ordered[0], ordered[1], positive)
        return (nxt, "low") if nxt is not None else None
    if all(u == ordered[-1] for u in used):
        nxt = _beyond(ordered[-1], ordered[-2], positive)
        return (nxt, "high") if nxt is not None else None
    return None


def refine_choices(dist: CategoricalDistribution, values: Sequence[Any], k: int) -> tuple[list[Any], str]:
    """The child's choices from the top-k ``values`` and the rule; one choice means fixed."""
    used = [c for c in dist.choices if c in values]
    edge = edge_neighbour(dist.choices, values)
    if edge is not None:
        nxt, end = edge
        return sorted([*used, nxt]), f"cut to choices used by top-{k}, plus {nxt} past the {end} end"
    if len(used) == len(dist.choices):
        return used, f"kept: top-{k} used every choice"
    if len(used) == 1:
        return used, f"fixed: the only choice used by top-{k}"
    return used, f"cut to choices used by top-{k}"


# --- the child space ---------------------------------------------------------------------------


def top_trials(ranked: Sequence[FrozenTrial], top_k: int, where: str, fix: str) -> list[FrozenTrial]:
    """The first ``top_k`` of ``ranked`` (the parent's complete trials, best first).

    Raises:
        StudyError: fewer complete trials than ``top_k``.
    """
    if len(ranked) < top_k:
        raise StudyError(
            Problem(
                where,
                f"needs at least --top-k {top_k} complete trials to refine from, but has {len(ranked)}",
                fix,
            )
        )
    return list(ranked[:top_k])


def refine_space(
    space: SearchSpace,
    ranked: Sequence[FrozenTrial],
    top_k: int,
    importances: dict[str, float] | None = None,
    *,
    where: str = "parent study",
) -> Refinement:
    """The child's search space from the parent's ``space`` and its complete trials, best first.

    Raises:
        StudyError: fewer complete trials than ``top_k``.
    """
    top = top_trials(ranked, top_k, where, f"lower --top-k to {len(ranked)} or less, or run more trials first")
    best = top[0]
    k = len(top)
    params: dict[str, dict[str, Any]] = {}
    fixed: dict[str, Any] = {}
    dropped: list[str] = []
    rules: dict[str, str] = {}
    choices_left: dict[str, list[Any]] = {}  # searched categoricals -> their child choices
    negligible = sorted(
        (imp, name) for name, imp in (importances or {}).items() if imp < NEGLIGIBLE_IMPORTANCE and name in best.params
    )
    to_fix = {name: imp for imp, name in negligible[: int(MAX_FIXED_SHARE * len(space.params))]}
    for p in space.params:
        when, reason = _follow_condition(p, params, fixed, dropped, choices_left)
        if reason is not None:
            dropped.append(p.name)
            rules[p.name] = reason
            continue
        values = [t.params[p.name] for t in top if p.name in t.params]
        imp = to_fix.get(p.name)
        if imp is not None:
            fixed[p.name] = best.params[p.name]
            rules[p.name] = f"fixed: importance {imp:.3f} < {NEGLIGIBLE_IMPORTANCE}"
            continue
        if not values:
            params[p.name] = _entry(p.distribution)
            rules[p.name] = f"kept: no top-{k} trial used it"
        elif isinstance(p.distribution, CategoricalDistribution):
            choices, rule = refine_choices(p.distribution, values, k)
            rules[p.name] = rule
            if len(choices) == 1:
                fixed[p.name] = choices[0]
                continue
            params[p.name] = {"type": "categorical", "choices": choices}
            choices_left[p.name] = choices
        else:
            assert isinstance(p.distribution, FloatDistribution | IntDistribution)
            params[p.name], rules[p.name] = refine_range(p.distribution, values, k)
        if when:
            params[p.name]["when"] = {name: allowed[0] if len(allowed) == 1 else allowed for name, allowed in when}
            rules[p.name] += " (when " + ", ".join(f"{n} in {a}" for n, a in when) + ")"
    enqueue = [_enqueued(t, params) for t in top]
    return Refinement(
        params=params,
        fixed=fixed,
        dropped=dropped,
        rules=rules,
        enqueue=enqueue,
        trials=[t.number for t in top],
        values=[float(t.value) for t in top if t.value is not None],
    )


def _follow_condition(
    p: Param,
    params: dict[str, dict[str, Any]],
    fixed: dict[str, Any],
    dropped: list[str],
    choices_left: dict[str, list[Any]],
) -> tuple[list[tuple[str, list[Any]]], str | None]:
    """The child's ``when`` clauses for ``p``, or the reason ``p`` is dropped (its condition can no
    longer hold). A clause on a fixed parameter whose value satisfies it is always true: gone."""
    when: list[tuple[str, list[Any]]] = []
    for parent, allowed in p.when:
        if parent in dropped:
            return [], f"dropped: its condition's parameter {parent} was dropped"
        if parent in fixed:
            if fixed[parent] in allowed:
                continue
            return (
                [],
                f"dropped: {parent} is fixed at {fixed[parent]!r}, so `when: {parent} in {list(allowed)}` never holds",
            )
        left = [a for a in allowed if a in choices_left.get(parent, [])]
        if not left:
            return [], f"dropped: {parent} no longer offers {list(allowed)}"
        when.append((parent, left))
    return when, None


def _entry(dist: BaseDistribution) -> dict[str, Any]:
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    assert isinstance(dist, FloatDistribution | IntDistribution)
    entry: dict[str, Any] = {"type": "int" if isinstance(dist, IntDistribution) else "float"}
    entry.update(low=dist.low, high=dist.high)
    if dist.log:
        entry["log"] = True
    if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
        entry["step"] = dist.step
    return entry


def _enqueued(trial: FrozenTrial, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``trial``'s params the child searches and would ask for (its condition holds)."""
    entry: dict[str, Any] = {}
    for name, spec in params.items():
        if name not in trial.params:
            continue
        cond = spec.get("when") or {}
        if all(entry.get(n) in (a if isinstance(a, list) else [a]) for n, a in cond.items() if n in params):
            entry[name] = trial.params[name]
    return entry
