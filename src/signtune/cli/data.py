"""Commands about data: validate, data synth, data check, data pack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from signtune.cli.app import (
    StudyOpt,
    app,
    data_app,
    err,
    handle_errors,
    load,
    out,
)
from signtune.errors import ConfigError, Problem


@app.command()
@handle_errors
def validate(
    study: Annotated[str | None, typer.Argument(help="Study name, folder or study.yaml (default: demo).")] = None,
) -> None:
    """Check a study spec, its search space and its data (as `study data check`) without running anything."""
    spec, space, _ = load(study, {})
    if spec.task == "sign2text":
        from signtune.models import check_model_files

        # the pretrained model, tokenizer and sign encoder the spec names (files only, no weights)
        check_model_files(
            spec.base.model,
            tokenizer=spec.base.data.tokenizer,
            base_dir=spec.dir,
            max_frames=spec.base.data.max_frames,
        )
    out.print(
        f"[green]OK[/] {spec.path}: task {spec.task}, {len(space.params)} searched params, "
        f"{len(spec.enqueue)} enqueued configs, budget {spec.budget.trials} trials, subset {spec.budget.subset}"
    )
    if spec.task != "sign2text":
        return  # a plug-in reads its own data
    if spec.synthetic is not None and not spec.data_root.is_dir():
        out.print(f"data: synthetic, generated into {spec.data_root} on first use; nothing to check yet")
        return
    if _print_data_report(check_data_with_progress(spec)):
        raise typer.Exit(2)


@data_app.command("synth")
@handle_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write features/ and the manifests into.")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    n_train: Annotated[int, typer.Option(help="Train sentences.")] = 3000,
    n_val: Annotated[int, typer.Option(help="Validation sentences.")] = 300,
    n_test: Annotated[int, typer.Option(help="Test sentences.")] = 300,
    dim: Annotated[int, typer.Option(help="Feature dimension D.")] = 64,
) -> None:
    """Write How2Sign-style synthetic data: one (T, D) .npy per sentence and TSV manifests."""
    from signtune.data.synth import generate

    problems = [
        Problem(f"--{name}", f"must be >= {low}, but got {value}", f"pass --{name} {low} or more")
        for name, value, low in (("n-train", n_train, 1), ("n-val", n_val, 1), ("n-test", n_test, 0), ("dim", dim, 4))
        if value < low
    ]
    if problems:
        raise ConfigError(problems)
    summary = generate(out_dir, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, feature_dim=dim)
    out.print(f"Wrote synthetic sign data to {out_dir}: {summary}", highlight=False)


@data_app.command("check")
@handle_errors
def data_check(
    study: StudyOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every finding to this JSON file.")
    ] = None,
) -> None:
    """Check a study's manifests and feature files; list every problem at once (exit 2 on errors)."""
    import json as _json

    spec = _sign2text_spec(study, "study data check")
    report = check_data_with_progress(spec)
    if json_path is not None:
        json_path.write_text(_json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if _print_data_report(report):
        raise typer.Exit(2)


@data_app.command("pack")
@handle_errors
def data_pack(
    study: StudyOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the pack is current.")] = False,
) -> None:
    """Pack a study's feature files into one memory-mapped store (also done on first use)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from signtune.data.dataset import pack_features

    spec = _sign2text_spec(study, "study data pack")
    progress = Progress(
        TextColumn("packing features"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        bar = progress.add_task("pack", total=None)
        infos = pack_features(
            spec.base.data,
            spec.dir,
            spec.dir / ".cache",
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
            force=force,
        )
    for info in infos:  # one pack per features folder: several when the splits have their own
        verb = f"built in {info.seconds:.1f}s ({info.reason})" if info.built else "is current, reused"
        source = f" (from {_shown(info.features_dir)})" if len(infos) > 1 else ""
        out.print(
            f"pack {info.path}{source}: {info.clips} clips, {info.frames} frames of D={info.feature_dim}, "
            f"{info.bytes / 2**20:.1f} MiB; {verb}",
            highlight=False,
        )


def _sign2text_spec(study: str | None, command: str) -> Any:
    """A sign2text study's spec with its synthetic data generated when it has any."""
    from signtune.spec import load_spec

    spec = load_spec(study, {})
    if spec.task != "sign2text":
        raise ConfigError(
            Problem(
                f"{spec.path}: task",
                f"is the plug-in {spec.task!r}; {command} reads the data.* config of the sign2text task",
                "check and load a plug-in's data in its own prepare hook",
            )
        )
    if spec.synthetic is not None:
        from signtune.tasks import ensure_spec_data

        with err.status("Generating the synthetic data (first use only)..."):
            ensure_spec_data(spec)
    return spec


def check_data_with_progress(spec: Any) -> Any:
    """Run the data check of a sign2text study, with a progress bar per split (on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from signtune.data.check import check_data

    progress = Progress(
        TextColumn("checking {task.description} features"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    bars: dict[str, TaskID] = {}

    def on_file(split: str, done: int, total: int) -> None:
        if split not in bars:
            bars[split] = progress.add_task(split, total=total)
        progress.update(bars[split], completed=done)

    with progress:
        return check_data(
            spec.base.data, spec.dir, progress=on_file, max_len=_decode_limit(spec), cache_dir=spec.dir / ".cache"
        )


def _decode_limit(spec: Any) -> Any:
    """``eval.max_len`` as the study's trials decode with it: the smallest value the search space
    can give it, else the spec's fixed value, else the trainer default."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from signtune.data.check_stats import DecodeLimit
    from signtune.errors import SigntuneError
    from signtune.space import parse

    try:
        dist = parse(spec.search_space).distributions().get("eval.max_len")
    except SigntuneError:  # `study validate` reports a bad search space; the data check goes on
        dist = None
    if isinstance(dist, IntDistribution | FloatDistribution):
        return DecodeLimit(int(dist.low), "searched")
    if isinstance(dist, CategoricalDistribution):
        numbers = [int(c) for c in dist.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        if numbers:
            return DecodeLimit(min(numbers), "searched")
    return DecodeLimit(spec.base.eval.max_len, "fixed" if "eval.max_len" in spec.fixed else "default")


NARROW = 120  # below this many columns, findings are blocks instead of a table


def _shown(path: object, width: int | None = None) -> str:
    """A path relative to the working folder when it is inside it, cut from the left to ``width``."""
    text = str(path)
    if Path(text).is_absolute() and Path(text).resolve().is_relative_to(Path.cwd().resolve()):
        text = str(Path(text).resolve().relative_to(Path.cwd().resolve()))
    if width is not None and len(text) > width:
        text = "…" + text[len(text) - width + 1 :]
    return text


def _print_data_report(report: Any, shown: int = 3) -> bool:
    """Print a data check's splits and findings; True when there are errors.

    A terminal of ``NARROW`` columns or more gets one table; a narrower one gets one block per
    finding, so that ids and paths are not folded into narrow cells.
    """
    from signtune.storage import mask_url

    narrow = out.width < NARROW
    for s in report.splits:
        if narrow:
            frames = f", median {s.frames_median:g} frames (max {s.frames_max})" if s.frames_median is not None else ""
            words = f", {s.words_median:g} words" if s.words_median is not None else ""
            out.print(f"data {s.name}: {s.rows} clips, {s.clips} files read{frames}{words}", highlight=False)
            continue
        frames = f", frames median {s.frames_median:g} (max {s.frames_max})" if s.frames_median is not None else ""
        words = f", words median {s.words_median:g}" if s.words_median is not None else ""
        out.print(f"data {s.name}: {s.rows} clips, {s.clips} feature files read{frames}{words}", highlight=False)
    n_err = len(report.errors)
    if not report.findings:
        out.print(f"[green]OK[/] data in {report.root}: no findings")
        return False

    def first(items: tuple[Any, ...]) -> str:
        more = f" +{len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(map(str, items[:shown])) + more

    style = {"error": "bold red", "warning": "yellow", "info": "dim"}
    if narrow:
        _print_blocks(report, first, style)
    else:
        table = Table(title=f"data check of {report.root}: {_counts(report)}", show_lines=True, expand=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("split", no_wrap=True)
        table.add_column("rule", no_wrap=True, overflow="fold")
        table.add_column("rows / ids", overflow="fold", ratio=2)
        table.add_column("message", overflow="fold", ratio=4)
        table.add_column("fix", overflow="fold", ratio=2)
        for f in report.findings:
            rows = f"rows {first(f.rows)}" if f.rows else ""
            ids = f"ids {first(tuple(dict.fromkeys(f.ids)))}" if f.ids else ""
            table.add_row(
                f"[{style[f.severity]}]{f.severity}[/]",
                f.split,
                f.rule,
                Text("\n".join(x for x in (rows, ids) if x)),
                Text(f"{mask_url(f.where)}\n{mask_url(f.message)}"),
                Text(f.fix),
            )
        out.print(table)
    if n_err:
        out.print(
            f"[bold red]{n_err} data error{'s' if n_err != 1 else ''}[/]: "
            "`study run` refuses this data until they are fixed."
        )
    return n_err > 0


def _counts(report: Any) -> str:
    n_err, n_warn = len(report.errors), len(report.warnings)
    return f"{n_err} error{'s' if n_err != 1 else ''}, {n_warn} warning{'s' if n_warn != 1 else ''}"


def _print_blocks(report: Any, first: Any, style: dict[str, str]) -> None:
    """The findings of a narrow terminal: per finding a head line (severity, split, rule, how
    many rows), then its rows, ids, file (cut from the left), message and fix, each wrapped
    under its own label."""
    import re
    import textwrap

    from signtune.storage import mask_url

    width = max(out.width, 40)
    out.print(f"data check of {_shown(report.root, width - 40)}: {_counts(report)}", highlight=False)
    indent = " " * 7

    def field(label: str, text: str) -> None:
        # a `setting: value` to copy stays on one line: its spaces are no break points
        spans = re.sub(r"`[^`]*`", lambda m: m[0].replace(" ", "\u00a0"), text)
        lines = textwrap.wrap(
            spans, width=width - 1, initial_indent=f"  {label:<4} ", subsequent_indent=indent, break_on_hyphens=False
        )
        for line in lines:
            out.print(line.replace("\u00a0", " "), markup=False, highlight=False, soft_wrap=True)

    for f in report.findings:
        count = f" ({len(f.rows)} row{'s' if len(f.rows) != 1 else ''})" if f.rows else ""
        out.print()
        out.print(f"[{style[f.severity]}]{f.severity}[/] {f.split} [bold]{f.rule}[/]{count}", highlight=False)
        if f.rows:
            field("rows", first(f.rows))
        if f.ids:
            field("ids", first(tuple(dict.fromkeys(f.ids))))
        field("file", _shown(mask_url(f.where), width - 8))
        field("", mask_url(f.message))
        if f.fix:
            field("fix", f.fix)
