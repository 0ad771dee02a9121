"""``study refine``: a child study whose search space is derived from a parent's best trials.

The derivation is ``signtune.refine``; this module checks the flags, renders the child's
``study.yaml`` and ``search_space.yaml`` (plain YAML with the rule of each range as a comment),
validates them as any study is validated, and then writes the folder and creates the study,
or with ``--dry-run`` prints both files and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from signtune.cli.app import app, handle_errors, load, out, quiet
from signtune.errors import ConfigError, Problem, StudyError

if TYPE_CHECKING:
    import optuna

    from signtune.refine import Refinement
    from signtune.spec import StudySpec
    from signtune.study import StudyDef


@app.command()
@handle_errors
def refine(
    from_: Annotated[
        str, typer.Option("--from", help="The parent study: a name under ./studies, a folder, or a study.yaml path.")
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="How many of the parent's best trials to refine around.")] = 3,
    trials: Annotated[int, typer.Option("--trials", "-n", help="The child study's budget of finished trials.")] = 20,
    subset: Annotated[float, typer.Option(help="Fraction of the train split the child's trials train on.")] = 1.0,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per child trial (default: what the parent's trials ran).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The child study's name and folder (default <parent>-refine).")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="The child's Optuna storage URL (default: the parent's storage).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse a child study that already exists.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the child's study.yaml and search space; write nothing.")
    ] = False,
) -> None:
    """Create a refined child study from a parent's top-k trials: narrowed ranges, widened crowded
    edges, cut choices, unimportant params fixed; the top-k configs are queued first."""
    from signtune.refine import param_importances, refine_space
    from signtune.storage import check_storage_url, mask_url
    from signtune.study import open_study, ranked_trials, stored_settings

    quiet()
    problems = [
        Problem(flag, f"must be >= 1, but got {value}", f"e.g. {flag} {example}")
        for flag, value, example in (("--top-k", top_k, 3), ("--trials", trials, 20), ("--epochs", epochs, 8))
        if value is not None and value < 1
    ]
    if not 0.0 < subset <= 1.0:
        problems.append(Problem("--subset", f"must be in (0, 1], but got {subset}", "e.g. --subset 1.0"))
    if name is not None and (not name or any(c in name for c in "/\\ ")):
        problems.append(
            Problem("--name", f"must be a name without spaces or slashes, but got {name!r}", "e.g. --name demo-refine")
        )
    if storage is not None and (bad := check_storage_url(storage)):
        problems.append(Problem("--storage", *bad))
    if problems:
        raise ConfigError(problems)

    parent, parent_space, _ = _load_parent(from_)
    from signtune.stages import has_stages

    if has_stages(parent):
        raise ConfigError(
            Problem(
                f"--from {from_}",
                f"is a staged study ({parent.path} has a `stages:` list), and refine derives a child "
                "from one study's trials, not from a chain of stages",
                "add a stage with the narrower params to its `stages:` list, or promote the last stage "
                f"with `study promote-best --study {from_}`",
            )
        )
    settled, _ = stored_settings(parent, {})
    parent_epochs = int(settled.get("fixed.run.epochs", parent.epochs))
    study = open_study(parent, create=False)
    child_name = name or f"{parent.name}-refine"
    child_dir = parent.dir.parent / child_name
    child_storage = storage or parent.storage
    if _exists(child_dir, child_storage, child_name, resume=resume):
        out.print(f"Reusing study {child_name} ({child_dir}); nothing written.", highlight=False)
        out.print(f"Next: study run --study {child_dir.as_posix()}", highlight=False)
        return

    ranked = ranked_trials(study, parent.objective.direction)
    where = f"--from {from_}: study {parent.name!r} in {mask_url(parent.storage)}"
    refinement = refine_space(parent_space, ranked, top_k, param_importances(study), where=where)
    file_storage = _file_storage(parent)
    writable = child_storage == file_storage or mask_url(child_storage) == child_storage
    yaml_text = render_study_yaml(
        parent,
        child_name,
        child_dir,
        refinement,
        trials=trials,
        subset=subset,
        epochs=epochs or parent_epochs,
        storage=child_storage if writable else None,
    )
    space_text = render_space_yaml(parent, child_name, child_dir, refinement)
    _validate(yaml_text, space_text, child_dir)
    run_cmd = f"study run --study {child_dir.as_posix()}" + (
        "" if writable else f" --storage {mask_url(child_storage)}"
    )
    if dry_run:
        out.print(f"# {child_dir / 'study.yaml'}", highlight=False, markup=False)
        out.print(yaml_text, highlight=False, markup=False, soft_wrap=True)
        out.print(f"# {child_dir / 'search_space.yaml'}", highlight=False, markup=False)
        out.print(space_text, highlight=False, markup=False, soft_wrap=True)
        out.print("# dry run: nothing written; the same command without --dry-run writes it", markup=False)
        return
    _write(child_dir, yaml_text, space_text, refinement, parent, child_storage)
    out.print(
        f"Refined [bold]{parent.name}[/] -> [bold]{child_name}[/] from trials {refinement.trials}: "
        f"{len(refinement.params)} searched, {len(refinement.fixed)} fixed, {len(refinement.dropped)} dropped; "
        f"{len(refinement.enqueue)} configs queued first.",
        highlight=False,
    )
    for param, rule in refinement.rules.items():
        out.print(f"  {param}: {rule}", highlight=False, markup=False, soft_wrap=True)
    if not writable:
        out.print(
            "The storage URL holds a password, so it is not written to study.yaml: pass it again "
            "(--storage or SIGNTUNE_STORAGE).",
            highlight=False,
        )
    out.print(f"Next: {run_cmd}", highlight=False, markup=False)


# --- reading the parent ------------------------------------------------------------------------


def _load_parent(from_: str) -> StudyDef:
    """The parent's spec, on SIGNTUNE_STORAGE when that is set (as every other command reads it)."""
    from signtune.spec import resolve_study_path

    try:
        path = resolve_study_path(from_)
    except ConfigError as exc:
        raise ConfigError(
            [Problem(p.where.replace("--study", "--from", 1), p.message, p.fix) for p in exc.problems]
        ) from None
    return load(str(path), {"storage": os.environ.get("SIGNTUNE_STORAGE") or None})


def _file_storage(spec: StudySpec) -> str:
    """The storage URL the parent's study.yaml itself names (or its default)."""
    from signtune.spec import read_yaml

    raw = read_yaml(spec.path) or {}
    return str(raw.get("storage") or f"sqlite:///{(spec.dir / 'study.db').as_posix()}")


def _exists(child_dir: Path, storage: str, name: str, *, resume: bool) -> bool:
    """Whether the child exists (to reuse with --resume); a child that exists without it is an error.

    Raises:
        ConfigError: the folder or the storage study exists and --resume was not given, or
            --resume was given but only the storage study exists (no folder to run).
    """
    from signtune.storage import mask_url

    folder = child_dir.exists()
    stored = _stored(storage, name)
    if not folder and not stored:
        return False
    where = f"--name {name}"
    if resume and folder:
        return True
    if resume:
        raise ConfigError(
            Problem(
                where,
                f"--resume reuses a child folder, but {child_dir} does not exist (the study is in {mask_url(storage)})",
                "pick another --name, or delete the study from the storage",
            )
        )
    what = " and ".join(
        x for x, there in ((f"folder {child_dir}", folder), (f"study {name!r} in {mask_url(storage)}", stored)) if there
    )
    raise ConfigError(
        Problem(
            where,
            f"a refined study must be new, but {what} already exists",
            f"add --resume to reuse it (`study run --study {child_dir.as_posix()}`), or pick another --name",
        )
    )


def _stored(storage: str, name: str) -> bool:
    """Whether ``storage`` holds a study named ``name``; a file storage that is absent holds none."""
    import optuna

    from signtune.storage import create_storage

    if storage.startswith(("sqlite:///", "journal:///")) and not Path(storage.split(":///", 1)[1]).exists():
        return False
    return name in optuna.get_all_study_names(create_storage(storage))


# --- the child's files -------------------------------------------------------------------------


def _yaml(value: Any, flow: bool = True) -> str:
    import yaml

    text: str = yaml.safe_dump(value, default_flow_style=flow, sort_keys=False, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").rstrip()


def _section(key: str, value: Any) -> str:
    return _yaml({key: value}, flow=False) + "\n"


def render_study_yaml(
    parent: StudySpec,
    child_name: str,
    child_dir: Path,
    r: Refinement,
    *,
    trials: int,
    subset: float,
    epochs: int,
    storage: str | None,
) -> str:
    """The child's study.yaml: the parent's, with its own name, space, fidelity, queue and lineage."""
    from signtune.spec import BUILTIN_TASKS
    from signtune.storage import mask_url

    raw = parent.raw
    data = dict(raw.get("data") or {})
    if parent.task in BUILTIN_TASKS or "root" in data:  # the parent's data, from the child's folder
        for key, default in (("root", "data"), ("tokenizer", "")):
            value = str(data.get(key, default))
            if value and not Path(value).is_absolute():  # both are relative to the study's folder
                data[key] = os.path.relpath(parent.dir / value, child_dir)
    budget = {**(raw.get("budget") or {}), "trials": trials, "subset": subset}
    tracking = {k: v for k, v in (raw.get("tracking") or {}).items() if k != "experiment"}
    lineage = {
        "parent_study": parent.name,
        "parent_storage": mask_url(parent.storage),
        "parent_spec": parent.path.as_posix(),
        "parent_trials": r.trials,
        "top_k": len(r.trials),
        "metric": parent.objective.metric,
        "rules": r.rules,
        "chain": parent.lineage.links() if parent.lineage else [],
    }
    used = ", ".join(str(t) for t in r.trials)
    parts = [
        f"# Refined from study {parent.name} (trials {used}: its top {len(r.trials)} by "
        f"{parent.objective.metric}) by `study refine`.\n",
        f"# Run it:   study run --study {child_dir.as_posix()}\n",
        "# The rule behind each range is beside it in search_space.yaml and under lineage.rules; edit freely.\n",
        _section("name", child_name),
        _section("task", parent.task),
        "search_space: search_space.yaml\n",
    ]
    if data:
        parts.append(_section("data", data))
    parts.append("fixed:\n")
    fixed = {**(raw.get("fixed") or {}), "run.epochs": epochs}
    for key, value in fixed.items():
        parts.append(f"  {key}: {_yaml(value)}\n")
    for key, value in r.fixed.items():
        parts.append(f"  {key}: {_yaml(value)}  # {r.rules[key]}\n")
    for key in ("objective", "sampler", "pruner"):
        if raw.get(key):
            parts.append(_section(key, raw[key]))
    parts.append(_section("budget", budget))
    if storage is not None:
        parts.append(_section("storage", storage))
    if tracking:
        parts.append(_section("tracking", tracking))
    if r.enqueue:
        parts.append(f"enqueue:                   # the parent's top {len(r.trials)}, tried first\n")
        for number, score, entry in zip(r.trials, r.values, r.enqueue, strict=False):
            parts.append(f"  - {_yaml(entry)}  # trial {number}: {parent.objective.metric} {score:.4g}\n")
    if raw.get("promote"):
        parts.append(_section("promote", raw["promote"]))
    parts.append(_section("lineage", lineage))
    return "".join(parts)


def render_space_yaml(parent: StudySpec, child_name: str, child_dir: Path, r: Refinement) -> str:
    """The child's search_space.yaml: one line per searched param, its rule as the comment."""
    lines = [
        f"# Search space of study {child_name}, refined from {parent.name} (trials "
        f"{', '.join(map(str, r.trials))}) by `study refine`.",
        f"# Run it:   study run --study {child_dir.as_posix()}",
        "# Each comment is the rule that made the range. Write YAML floats with a dot (1.0e-4).",
        "params:",
    ]
    lines += [f"  {name}: {_yaml(entry)}  # {r.rules[name]}" for name, entry in r.params.items()]
    for name in r.fixed:
        lines.append(f"# {name}: in study.yaml fixed: ({r.rules[name]})")
    for name in r.dropped:
        lines.append(f"# {name}: {r.rules[name]}")
    return "\n".join(lines) + "\n"


def _validate(yaml_text: str, space_text: str, child_dir: Path) -> None:
    """Load the child as any study is loaded, from a scratch folder outside the project.

    Raises:
        StudyError: the derived spec or space is refused (each problem, and how to see the files).
    """
    from signtune.study import load_def

    with tempfile.TemporaryDirectory(prefix="signtune-refine-") as tmp:
        (Path(tmp) / "study.yaml").write_text(yaml_text, encoding="utf-8")
        (Path(tmp) / "search_space.yaml").write_text(space_text, encoding="utf-8")
        try:
            load_def(str(Path(tmp) / "study.yaml"), {})
        except ConfigError as exc:
            raise StudyError(
                [
                    Problem(
                        f"refined {child_dir / p.where.split(tmp + '/', 1)[-1]}",
                        p.message,
                        "print the child with --dry-run, then write and edit it by hand; " + p.fix,
                    )
                    for p in exc.problems
                ]
            ) from None


def _write(child_dir: Path, yaml_text: str, space_text: str, r: Refinement, parent: StudySpec, storage: str) -> None:
    """Create the child study (lineage attrs, settings, queue), then swap its folder in whole."""
    from signtune.spec import load_spec
    from signtune.storage import mask_url
    from signtune.study import enqueue_defaults, open_study, record_settings

    child_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{child_dir.name}.tmp-", dir=child_dir.parent))
    tmp.chmod(0o755)
    study: optuna.Study | None = None
    try:
        (tmp / "study.yaml").write_text(yaml_text, encoding="utf-8")
        (tmp / "search_space.yaml").write_text(space_text, encoding="utf-8")
        spec = load_spec(tmp / "study.yaml", {"storage": storage})
        record_settings(spec)
        study = open_study(spec)
        for key, value in (
            ("parent_study", parent.name),
            ("parent_storage", mask_url(parent.storage)),
            ("parent_trials", r.trials),
            ("refine_rules", r.rules),
        ):
            study.set_user_attr(key, value)
        enqueue_defaults(study, spec)
        tmp.rename(child_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if study is not None:
            import optuna

            optuna.delete_study(study_name=study.study_name, storage=storage)
        raise
