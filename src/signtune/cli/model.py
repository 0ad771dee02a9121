"""Commands that train and use models: train, promote-best, translate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from signtune.cli.app import (
    StorageOpt,
    StudyOpt,
    app,
    err,
    handle_errors,
    load,
    out,
    prepare,
    quiet,
)
from signtune.cli.staged import StageOpt, resolve
from signtune.errors import ConfigError, Problem


@app.command()
@handle_errors
def train(
    study: StudyOpt = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override KEY=VALUE (dotted key), repeatable.")
    ] = None,
    subset: Annotated[float | None, typer.Option(help="Fraction of the train split.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
) -> None:
    """Train one config of a study (no Optuna), e.g. to reproduce a trial."""
    from signtune.config import apply_overrides
    from signtune.device import resolve_device
    from signtune.spec import parse_sets
    from signtune.tasks import TrialContext

    spec, _, task = load(study, {"budget.subset": subset, "fixed.run.epochs": epochs})
    values = parse_sets(set_ or [])
    if spec.task == "sign2text":  # typed config: unknown keys and wrong types are named at once
        apply_overrides(spec.base, values, where="--set")
    cfg = task.make_config(spec, values)
    prepare(task, spec)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        out.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), highlight=False)

    ctx = TrialContext(resolve_device(spec.device), spec.seed, spec.budget.subset, -1, spec.dir / ".scratch", spec.dir)
    result = task.fit(cfg, report, ctx)
    out.print("best: " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()), highlight=False)


@app.command("promote-best")
@handle_errors
def promote_best_cmd(
    study: StudyOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="How many of the best configs to retrain.")] = 1,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the spec's promote.epochs or run.epochs).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per config.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue candidates from their last checkpoint.")] = False,
    storage: StorageOpt = None,
    stage: StageOpt = None,
) -> None:
    """Retrain the best config(s) on the full training split with checkpoints; test the winner.

    A staged study promotes from its last stage that has complete trials, or --stage NAME;
    provenance.json then records the earlier stages' studies, best trials and fixed values.
    """
    from signtune.promote import promote_best
    from signtune.study import open_study

    quiet()
    problems = [
        Problem(f"--{n}", f"must be >= 1, but got {v}", f"e.g. --{n} 1")
        for n, v in (("top-k", top_k), ("seeds", seeds), ("epochs", epochs if epochs is not None else 1))
        if v < 1
    ]
    if problems:
        raise ConfigError(problems)
    spec, space, task = load(study, {"storage": storage})
    spec, _ = resolve(spec, space, stage, {}, want="complete")
    prepare(task, spec)

    def on_epoch(name: str, epoch: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        err.print(f"{name} epoch {epoch}: {shown}", highlight=False)

    study_obj = open_study(spec, create=False)
    result = promote_best(
        spec, study_obj, task, top_k=top_k, epochs=epochs, seeds=seeds, resume=resume, on_epoch=on_epoch
    )
    t = result.test
    if spec.task != "sign2text":  # a plug-in: its own metrics, its optional test hook
        tested = ", ".join(f"{k} {v:.4g}" for k, v in t.items()) or "no test hook (define objective.test)"
        out.print(
            f"winner: trial {result.winner.trial} seed {result.winner.seed}, "
            f"{result.metric} {result.winner.value:.4g}\ntest: {tested}\n"
            f"{result.fidelity_note}\nmodel: {result.out_dir}",
            highlight=False,
        )
        return
    label = {"val_bleu": "val BLEU", "val_chrf": "val chrF"}.get(result.metric, result.metric)
    out.print(
        f"winner: trial {result.winner.trial} seed {result.winner.seed}, {label} {result.winner.value:.2f}\n"
        f"test (beam {t['beam_size']}): BLEU {t['bleu']:.2f} (1-4-gram precisions: {t['precision1']:.1f}/"
        f"{t['precision2']:.1f}/{t['precision3']:.1f}/{t['precision4']:.1f}), chrF {t['chrf']:.2f}\n"
        f"{t['bleu_signature']}\n{result.fidelity_note}\n"
        f"model: {result.out_dir}",
        highlight=False,
    )


@app.command()
@handle_errors
def translate(
    model: Annotated[Path, typer.Option("--model", help="A promoted model folder (studies/<name>/promoted).")],
    inputs: Annotated[list[Path] | None, typer.Argument(help="Feature files (.npy/.pt) or folders of them.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="A How2Sign-style TSV manifest instead of files.")] = None,
    features: Annotated[Path | None, typer.Option(help="Features folder for --manifest (default: beside it).")] = None,
    beam: Annotated[int, typer.Option(help="Beam size (1 = greedy).")] = 5,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write .tsv or .json here (default: TSV to stdout).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Translate sign clips with a promoted model (batched, CPU or GPU)."""
    import json as _json

    from signtune.data.features import load_feature, resolve_feature_path
    from signtune.inference import load_promoted
    from signtune.inference import translate as translate_clips

    if beam < 1:
        raise ConfigError(Problem("--beam", f"must be >= 1, but got {beam}", "e.g. --beam 5"))
    if not inputs and manifest is None:
        raise ConfigError(
            Problem(
                "study translate",
                "needs feature files, a folder or --manifest",
                "e.g. study translate --model studies/demo/promoted clip.npy",
            )
        )
    promoted = load_promoted(model)
    dim = promoted.feature_dim
    items: list[tuple[str, Path]] = []
    if manifest is not None:
        from signtune.data.layout import manifest_folder
        from signtune.data.manifest import read_manifest

        rows = read_manifest(manifest, format="how2sign", id_column="SENTENCE_NAME", text_column="SENTENCE")
        given = features or manifest.parent / "features"
        feats_dir, found = manifest_folder(given, manifest, [r.id for r in rows])
        if found:
            err.print(f"features: reading {feats_dir}, as {given} holds none of the manifest's clips", highlight=False)
        for row in rows:
            path = resolve_feature_path(feats_dir, row.id)
            if path is None:
                raise ConfigError(
                    Problem(
                        f"{manifest}: row {row.row}",
                        f"no feature file for id {row.id!r} in {feats_dir}",
                        "check --features",
                    )
                )
            items.append((row.id, path))
    for p in inputs or []:
        if p.is_dir():
            items += [(f.stem, f) for f in sorted(p.iterdir()) if f.suffix in (".npy", ".pt")]
        elif p.is_file():
            items.append((p.stem, p))
        else:
            raise ConfigError(Problem(str(p), "does not exist", "pass .npy/.pt files or a folder of them"))
    clips = [load_feature(path, feature_dim=dim) for _, path in items]
    hyps = translate_clips(promoted, clips, beam_size=beam, device=device)  # with the model's run.amp
    if out_file is not None and out_file.suffix == ".json":
        out_file.write_text(
            _json.dumps([{"id": i, "hypothesis": h} for (i, _), h in zip(items, hyps, strict=True)], indent=2)
        )
        err.print(f"wrote {len(hyps)} translation(s) to {out_file} (JSON)", highlight=False)
        return
    text = "id\thypothesis\n" + "".join(f"{i}\t{h}\n" for (i, _), h in zip(items, hyps, strict=True))
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {len(hyps)} translation(s) to {out_file} (tab-separated; .json gives JSON)", highlight=False)
    else:
        sys.stdout.write(text)
