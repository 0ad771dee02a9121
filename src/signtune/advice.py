"""Search-space advice and lineage: what a study's top-k say about its ranges, and where a
refined study came from.

``advise`` names the parameters whose top-k crowd an edge of their range (log-aware), the
categorical choices no top-k trial used and the parameters of no measurable importance, each
with the ``study refine`` command that acts on it; ``study status``, ``study export``
(``advice.md``) and the report show it. The rules and thresholds are ``signtune.refine``'s.
``pruning_signal`` checks the pruner's premise on the study's own trials: that the value it
compares at its first epoch ranks the configs as their final objective does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from signtune.refine import NEGLIGIBLE_IMPORTANCE, crowded_edges, edge_neighbour, fmt_number, param_importances
from signtune.space import SearchSpace
from signtune.storage import mask_url

if TYPE_CHECKING:
    from signtune.spec import StudySpec


@dataclass(frozen=True)
class Advice:
    """One finding about a study's search space and the command that acts on it."""

    param: str
    finding: str
    fix: str


# --- advice ------------------------------------------------------------------------------------


def advise(
    space: SearchSpace,
    ranked: Sequence[FrozenTrial],
    importances: dict[str, float] | None,
    study_ref: str,
    top_k: int = 3,
) -> list[Advice]:
    """What the top-k of a study say about its search space, each with the command that follows.

    Names parameters whose top-k crowd an edge (log-aware), categorical choices no top-k trial
    used, and parameters of no measurable importance. Empty with fewer than ``top_k`` trials.
    """
    if len(ranked) < top_k or top_k < 1:
        return []
    top = list(ranked[:top_k])
    cmd = f"study refine --from {study_ref} --top-k {top_k}"
    found: list[Advice] = []
    for p in space.params:
        values = [t.params[p.name] for t in top if p.name in t.params]
        dist = p.distribution
        if not values:
            continue
        if isinstance(dist, CategoricalDistribution):
            unused = [c for c in dist.choices if c not in values]
            edge = edge_neighbour(dist.choices, values)
            if edge is not None:
                found.append(
                    Advice(
                        p.name,
                        f"top-{top_k} all use {values[0]!r}, the {edge[1]} end of {list(dist.choices)}",
                        f"`{cmd}` adds {edge[0]!r} past it",
                    )
                )
            elif unused:
                found.append(Advice(p.name, f"top-{top_k} never use {unused}", f"`{cmd}` drops them"))
        elif isinstance(dist, FloatDistribution | IntDistribution):
            at_low, at_high = crowded_edges(dist, values)
            for crowded, side, bound in ((at_low, "low", dist.low), (at_high, "high", dist.high)):
                if crowded:
                    span = f"{fmt_number(min(values))}..{fmt_number(max(values))}"
                    found.append(
                        Advice(
                            p.name,
                            f"top-{top_k} ({span}) crowd the {side} edge {fmt_number(bound)}"
                            + (" (log)" if dist.log else ""),
                            f"`{cmd}` widens the range past {fmt_number(bound)}",
                        )
                    )
    for name, imp in (importances or {}).items():
        if imp < NEGLIGIBLE_IMPORTANCE:
            found.append(
                Advice(name, f"no measurable importance ({imp:.3f} < {NEGLIGIBLE_IMPORTANCE})", f"`{cmd}` fixes it")
            )
    return found


def advice_lines(advice: Sequence[Advice]) -> list[str]:
    """One short line per finding: ``param: finding -> fix``."""
    return [f"{a.param}: {a.finding} -> {a.fix}" for a in advice]


def advice_markdown(study_name: str, advice: Sequence[Advice], top_k: int = 3) -> str:
    """``advice.md``: the findings of ``advise`` as a short Markdown list."""
    head = f"# Search-space advice for `{study_name}` (top {top_k})\n\n"
    if not advice:
        return head + "Nothing to report: no edge is crowded, every choice is used, every parameter matters.\n"
    return head + "".join(f"- **{a.param}**: {a.finding}. Fix: {a.fix}.\n" for a in advice)


# --- lineage -----------------------------------------------------------------------------------


def lineage_of(study: optuna.Study, spec: StudySpec) -> list[dict[str, Any]]:
    """The study's chain of parents, nearest first (``study``, ``storage`` masked, ``trials``).

    From the spec's ``lineage:`` where it has one, else from the study's user attrs.
    """
    if spec.lineage is not None:
        return spec.lineage.links()
    attrs = study.user_attrs
    if not attrs.get("parent_study"):
        return []
    return [
        {
            "study": attrs["parent_study"],
            "storage": mask_url(str(attrs.get("parent_storage", ""))),
            "trials": list(attrs.get("parent_trials", [])),
        }
    ]


def lineage_line(links: Sequence[dict[str, Any]]) -> str:
    """``refined from demo (trials 12, 4, 7)``, then ``<- its own parent`` for each ancestor."""
    return " <- ".join(
        f"refined from {link.get('study')} (trials {', '.join(str(t) for t in link.get('trials', []))})"
        for link in links
    )


def study_ref(spec: StudySpec) -> str:
    """How a command names ``spec``: its name when ``./studies/<name>`` is it, else its folder."""
    default = Path("studies") / spec.name / "study.yaml"
    return spec.name if default.is_file() and default.resolve() == spec.path.resolve() else spec.dir.as_posix()


def study_advice(study: optuna.Study, spec: StudySpec, space: SearchSpace, top_k: int = 3) -> list[Advice]:
    """The pruning-signal check (first: ``study status`` shows the first few findings), then
    ``advise`` on a stored study (its ranking, importances and command name)."""
    from signtune.study import ranked_trials

    ranked = ranked_trials(study, spec.objective.direction)
    found = [] if len(ranked) < top_k else advise(space, ranked, param_importances(study), study_ref(spec), top_k)
    return pruning_signal(study.get_trials(deepcopy=False), spec) + found


SIGNAL_MIN_TRIALS = 8  # complete trials before the pruning signal is judged
WEAK_SIGNAL = 0.3  # Spearman below this: the first epoch's value does not rank the final objective


def pruning_signal(trials: Sequence[FrozenTrial], spec: StudySpec) -> list[Advice]:
    """A finding when the pruner's first-epoch value ranks the complete trials' objective
    values with Spearman below ``WEAK_SIGNAL`` (at least ``SIGNAL_MIN_TRIALS`` of them).

    Complete trials are the ones the pruner let through, a narrower set than all configs, so
    their correlation understates the signal: only a clearly weak one is reported.
    """
    from signtune.promote.fidelity import spearman
    from signtune.study import pruning_metric, resolve_strategy

    resolved = resolve_strategy(spec)
    if resolved.pruner.name == "none":
        return []
    rungs = resolved.pruner.name in ("sha", "hyperband")
    step = resolved.pruner.min_resource if rungs else max(1, resolved.pruner.n_warmup_steps)
    pairs = [
        (t.intermediate_values[step], t.value)
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and step in t.intermediate_values
    ]
    if len(pairs) < SIGNAL_MIN_TRIALS:
        return []
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    if rho is None or rho >= WEAK_SIGNAL:
        return []
    metric = pruning_metric(spec)[0]
    return [
        Advice(
            "pruner",
            f"{metric} at epoch {step} ranks the final {spec.objective.metric} with Spearman {rho:.2f} "
            f"over {len(pairs)} complete trials ({resolved.pruner.name} prunes on it from epoch {step})",
            f"prune later or more gently: `pruner: {{name: median, n_warmup_steps: {max(2, step + 1)}}}`, or a "
            "`pruner.metric` that tracks the objective early",
        )
    ]
