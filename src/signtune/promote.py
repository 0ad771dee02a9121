"""promote-best: retrain the top-k configs on full data, pick the winner, test it, ship it.

Each candidate (trial x seed) trains with checkpoints in ``promoted/candidates/<name>/``:
``last/`` after every epoch and ``best/`` whenever val BLEU improves, each holding
``model.safetensors`` and ``state.pt`` (optimizer, scheduler, RNG, history; read back with
``weights_only=True``). ``--resume`` continues a candidate from ``last/``. The winner by val
BLEU is evaluated on the test split with beam search and written to ``promoted/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signtune.config import TrainConfig, apply_overrides, flatten
from signtune.errors import ConfigError, Problem, StudyError
from signtune.faults import kill_after_epoch
from signtune.spec import StudySpec
from signtune.storage import mask_url

WEIGHTS = "model.safetensors"
STATE = "state.pt"


@dataclass
class Candidate:
    trial: int
    seed: int
    subset_value: float
    val_bleu: float = float("nan")
    epochs_run: int = 0
    dir: Path = Path()


@dataclass
class PromoteResult:
    out_dir: Path
    winner: Candidate
    candidates: list[Candidate]
    test: dict[str, Any]
    fidelity: float | None
    fidelity_note: str


def candidate_config(spec: StudySpec, params: dict[str, Any], *, epochs: int | None, seed: int) -> TrainConfig:
    """Best params + fixed config + full data + the spec's ``promote.overrides``."""
    overrides = dict(spec.promote.get("overrides", {}) or {})
    cfg = apply_overrides(spec.base, {**params, "data.subset": 1.0}, where="trial params")
    cfg = apply_overrides(cfg, overrides, where=f"{spec.path}: promote.overrides")
    values: dict[str, Any] = {"run.seed": seed}
    if epochs is not None:
        values["run.epochs"] = epochs
    return apply_overrides(cfg, values, where="promote-best flags")


def save_checkpoint(path: Path, state: Any) -> None:
    """Weights as safetensors, the rest as a tensors-and-plain-types ``state.pt``; atomic."""
    import torch
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # clone(): tied weights share memory, which safetensors refuses to store twice.
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.model.items()}, str(tmp / WEIGHTS))
    torch.save(
        {
            "epoch": state.epoch,
            "step": state.step,
            "optimizer": state.optimizer,
            "scheduler": state.scheduler,
            "rng": state.rng,
            "history": state.history,
            "best": state.best,
        },
        tmp / STATE,
    )
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_checkpoint(path: Path) -> Any:
    """Read a checkpoint back without unpickling arbitrary objects."""
    import torch
    from safetensors.torch import load_file

    from signtune.train.loop import TrainState

    try:
        meta = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StudyError(
            f"{path / STATE}: cannot be read safely ({type(exc).__name__}); delete the candidate folder to start over"
        ) from None
    return TrainState(
        epoch=int(meta["epoch"]),
        step=int(meta["step"]),
        model=load_file(str(path / WEIGHTS)),
        optimizer=meta["optimizer"],
        scheduler=meta["scheduler"],
        rng=meta["rng"],
        history=list(meta["history"]),
        best=dict(meta["best"]),
    )


def promote_best(
    spec: StudySpec,
    *,
    top_k: int = 1,
    epochs: int | None = None,
    seeds: int = 1,
    resume: bool = False,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
) -> PromoteResult:
    """Retrain the study's top-k configs on the full training split and ship the winner."""
    from optuna.trial import TrialState

    from signtune.data.dataset import load_task_data
    from signtune.runner import open_study
    from signtune.train.loop import evaluate, fit

    if spec.task != "sign2text":
        raise ConfigError(
            Problem(
                f"{spec.path}: task",
                f"promote-best trains the built-in sign2text task, not {spec.task!r}",
                "train a plug-in's best params with its own code (export/best_params.json)",
            )
        )
    study = open_study(spec, create=False, heartbeat=False)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise StudyError(f"study {spec.name!r} has no complete trial yet; run `study run --study {spec.name}` first")
    done.sort(key=lambda t: t.value or 0.0, reverse=spec.objective.direction == "maximize")
    top = done[:top_k]
    out = spec.dir / "promoted"
    (out / "candidates").mkdir(parents=True, exist_ok=True)
    promote_epochs = epochs if epochs is not None else spec.promote.get("epochs")
    patience = int(spec.promote.get("patience", 0) or 0)
    base_seed = spec.seed

    candidates: list[Candidate] = []
    for trial in top:
        for s in range(seeds):
            seed = base_seed + s
            cand = Candidate(trial.number, seed, float(trial.value or 0.0))
            cand.dir = out / "candidates" / f"trial-{trial.number}-seed-{seed}"
            cfg = candidate_config(spec, trial.params, epochs=promote_epochs, seed=seed)
            data = load_task_data(cfg.data, spec.dir, cache_dir=spec.dir / ".cache")
            state = None
            if resume and (cand.dir / "last" / STATE).exists():
                state = load_checkpoint(cand.dir / "last")
            elif cand.dir.exists() and not resume:
                shutil.rmtree(cand.dir)
            if state is not None and state.epoch >= cfg.run.epochs:
                history, best = state.history, state.best
            else:
                history, best = _train_candidate(cand, cfg, data, state, patience, fit, on_epoch)
            cand.val_bleu = float(best.get("val_bleu", float("nan")))
            cand.epochs_run = len(history)
            candidates.append(cand)

    winner = max(candidates, key=lambda c: c.val_bleu)
    cfg = candidate_config(spec, study.trials[winner.trial].params, epochs=promote_epochs, seed=winner.seed)
    data = load_task_data(cfg.data, spec.dir, cache_dir=spec.dir / ".cache")
    if data.test is None:
        raise StudyError(f"study {spec.name!r} has no test split ({cfg.data.test_manifest}); add it to evaluate")
    from signtune.models import build_model
    from signtune.train.loop import resolve_device

    device = resolve_device(cfg.run.device)
    model = build_model(cfg.model, feature_dim=data.feature_dim, vocab_size=data.tokenizer.vocab_size)
    model.load_state_dict(load_checkpoint(winner.dir / "best").model)
    model.to(device).eval()
    beam = int(spec.promote.get("beam_size", 5))
    scores, hyps = evaluate(
        model, data.test, data.tokenizer, cfg.eval, device, beam_size=beam, max_frames=cfg.data.max_frames
    )
    test = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}
    test["beam_size"] = beam
    fidelity, note = _fidelity(candidates, seeds)
    _write_outputs(out, spec, study, winner, candidates, cfg, data, test, hyps, fidelity, note)
    result = PromoteResult(out, winner, candidates, test, fidelity, note)
    if spec.tracking.enabled:
        log_promotion(spec, result)
    return result


def log_promotion(spec: StudySpec, result: PromoteResult) -> str:
    """One MLflow run for the promotion: tags naming the source study and trials, test metrics,
    the promoted model as artifacts, and a model-registry version where the store has one."""
    from signtune.tracking import Tracker

    tracker = Tracker(spec.tracking_uri, spec.experiment, artifact_dir=spec.dir / "mlartifacts")
    client = tracker.client
    trials = sorted({c.trial for c in result.candidates})
    run = client.create_run(
        tracker.experiment_id(),
        run_name=f"promote-trial-{result.winner.trial}",
        tags={
            "signtune.role": "promote",
            "signtune.study": spec.name,
            "signtune.source_trials": ",".join(map(str, trials)),
            "signtune.winner_trial": str(result.winner.trial),
            "signtune.winner_seed": str(result.winner.seed),
            "signtune.bleu_signature": str(result.test.get("bleu_signature", "")),
        },
    )
    run_id = run.info.run_id
    for key in ("bleu", "bleu1", "bleu2", "bleu3", "bleu4", "chrf"):
        if isinstance(result.test.get(key), int | float):
            client.log_metric(run_id, f"test_{key}", float(result.test[key]))
    client.log_metric(run_id, "val_bleu", result.winner.val_bleu)
    for name in (WEIGHTS, "config.json", "tokenizer.json", "metrics.json", "predictions.tsv", "provenance.json"):
        client.log_artifact(run_id, str(result.out_dir / name), artifact_path="model")
    client.set_terminated(run_id, status="FINISHED")
    name = f"signtune-{spec.name}"
    with contextlib.suppress(Exception):  # already registered
        client.create_registered_model(name)
    with contextlib.suppress(Exception):  # stores without a model registry skip this
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    return str(run_id)


def _train_candidate(
    cand: Candidate,
    cfg: TrainConfig,
    data: Any,
    state: Any,
    patience: int,
    fit: Callable[..., Any],
    on_epoch: Callable[[str, int, dict[str, float]], None] | None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    name = cand.dir.name
    best_value = [state.best.get("val_bleu", -1.0) if state is not None else -1.0]
    stale = [0]

    crash_after = kill_after_epoch()

    def checkpoint(st: Any) -> None:
        save_checkpoint(cand.dir / "last", st)
        if crash_after == st.epoch:  # test-only: a crash right after a checkpoint
            os.kill(os.getpid(), 9)
        current = st.history[-1]["val_bleu"]
        if current > best_value[0]:
            best_value[0] = current
            stale[0] = 0
            save_checkpoint(cand.dir / "best", st)
        else:
            stale[0] += 1

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(name, epoch, metrics)

    result = fit(
        cfg,
        data,
        report=report,
        resume=state,
        on_epoch_end=checkpoint,
        should_stop=(lambda: patience > 0 and stale[0] >= patience),
    )
    return result.history, result.best


def _fidelity(candidates: list[Candidate], seeds: int) -> tuple[float | None, str]:
    """Spearman rank correlation between the subset values and the full-data values."""
    by_trial: dict[int, list[Candidate]] = {}
    for c in candidates:
        by_trial.setdefault(c.trial, []).append(c)
    if len(by_trial) < 2:
        return None, "one config promoted: no ranking to compare (use --top-k 3 or more)"
    trials = list(by_trial)
    sub = [by_trial[t][0].subset_value for t in trials]
    full = [sum(c.val_bleu for c in by_trial[t]) / len(by_trial[t]) for t in trials]
    rho = _spearman(sub, full)
    if rho < 0.5:
        note = (
            f"--subset did not rank these configs the same way as full data (Spearman {rho:.2f}): "
            "tune on a larger subset, or promote more configs"
        )
    else:
        note = f"--subset ranked the configs like full data (Spearman {rho:.2f})"
    return rho, note


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except Exception:
        return ""


def _write_outputs(
    out: Path,
    spec: StudySpec,
    study: Any,
    winner: Candidate,
    candidates: list[Candidate],
    cfg: TrainConfig,
    data: Any,
    test: dict[str, Any],
    hyps: list[str],
    fidelity: float | None,
    note: str,
) -> None:
    import importlib.metadata as md

    shutil.copyfile(winner.dir / "best" / WEIGHTS, out / WEIGHTS)
    model_cfg = {
        "family": cfg.model.family,
        "feature_dim": data.feature_dim,
        "vocab_size": data.tokenizer.vocab_size,
        "model": dataclasses.asdict(cfg.model),
        "eval": dataclasses.asdict(cfg.eval),
        "data": {"max_frames": cfg.data.max_frames},
        "config": flatten(cfg),
    }
    (out / "config.json").write_text(json.dumps(model_cfg, indent=2) + "\n")
    data.tokenizer.save(out / "tokenizer.json")
    metrics = {
        "winner": {
            "trial": winner.trial,
            "seed": winner.seed,
            "val_bleu": winner.val_bleu,
            "epochs": winner.epochs_run,
        },
        "test": test,
        "candidates": [
            {
                "trial": c.trial,
                "seed": c.seed,
                "subset_value": c.subset_value,
                "val_bleu": c.val_bleu,
                "epochs": c.epochs_run,
            }
            for c in candidates
        ],
        "fidelity_spearman": fidelity,
        "fidelity_note": note,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / "predictions.tsv").open("w", encoding="utf-8") as f:
        f.write("id\treference\thypothesis\n")
        for i, ref, hyp in zip(data.test.ids, data.test.texts, hyps, strict=True):
            f.write(f"{i}\t{ref}\t{hyp}\n")
    root = spec.data_root
    hashes = {}
    for name in (cfg.data.train_manifest, cfg.data.val_manifest, cfg.data.test_manifest):
        path = root / name
        if path.exists():
            hashes[name] = _sha256(path)
    feats = root / cfg.data.features_dir
    listing = sorted(p.name for p in feats.iterdir()) if feats.is_dir() else []
    hashes["features_index"] = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    versions = {}
    for pkg in ("signtune", "torch", "optuna", "mlflow", "sacrebleu", "tokenizers", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    provenance = {
        "study": spec.name,
        "storage": mask_url(spec.storage),
        "trials": sorted({c.trial for c in candidates}),
        "winner_trial": winner.trial,
        "seeds": sorted({c.seed for c in candidates}),
        "git_commit": _git_commit(),
        "versions": versions,
        "python": platform.python_version(),
        "hashes": hashes,
        "command": mask_url(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "pid": os.getpid(),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def load_promoted(model_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A promoted model for inference: (model in eval mode, tokenizer, config.json).

    Only ``config.json``, ``tokenizer.json`` and safetensors weights are read: nothing is
    unpickled.
    """
    from safetensors.torch import load_file

    from signtune.config import ModelConfig
    from signtune.data.tokenizer import Tokenizer
    from signtune.errors import DataError
    from signtune.models import build_model

    config_path, weights = model_dir / "config.json", model_dir / WEIGHTS
    for path in (config_path, weights, model_dir / "tokenizer.json"):
        if not path.is_file():
            raise DataError(
                Problem(
                    str(path), "is missing", "point --model at a folder written by `study promote-best` (promoted/)"
                )
            )
    try:
        meta = json.loads(config_path.read_text())
        model_cfg = ModelConfig(**meta["model"])
        model = build_model(model_cfg, feature_dim=int(meta["feature_dim"]), vocab_size=int(meta["vocab_size"]))
        model.load_state_dict(load_file(str(weights)))
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise DataError(
            Problem(
                str(model_dir),
                f"is not a readable promoted model ({type(exc).__name__}: {exc})",
                "re-run `study promote-best`",
            )
        ) from None
    return model.eval(), Tokenizer.load(model_dir / "tokenizer.json"), meta
