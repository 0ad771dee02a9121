"""promote-best: retrain the top-k configs on full data, pick the winner, test it, ship it.

Each candidate (trial x seed) trains with checkpoints in ``promoted/candidates/<name>/``:
``last/`` after every epoch and ``best/`` whenever val BLEU improves, each holding
``model.safetensors`` and ``state.pt`` (optimizer, scheduler, RNG, history; read back with
``weights_only=True``). ``--resume`` continues a candidate from ``last/``. The winner by val
BLEU is evaluated on the test split with beam search and written to ``promoted/``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signtune.config import TrainConfig, apply_overrides
from signtune.errors import SigntuneError, StudyError
from signtune.faults import kill_after_epoch
from signtune.folders import commit_dir, recover_dir
from signtune.spec import StudySpec
from signtune.storage import mask_url
from signtune.tasks import Resume

WEIGHTS = "model.safetensors"
STATE = "state.pt"


@dataclass
class Candidate:
    trial: int
    seed: int
    subset_value: float
    value: float = float("nan")  # the promotion metric (val BLEU for sign2text) on full data
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
    metric: str = "val_bleu"  # what picked the winner


def candidate_config(spec: StudySpec, params: dict[str, Any], *, epochs: int | None, seed: int) -> TrainConfig:
    """Best params + fixed config + full data + the spec's ``promote.overrides``."""
    overrides = dict(spec.promote.overrides)
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
            "cuda_rng": state.cuda_rng,
            "history": state.history,
            "best": state.best,
        },
        tmp / STATE,
    )
    commit_dir(tmp, path)


def load_checkpoint(path: Path) -> Any:
    """Read a checkpoint back without unpickling arbitrary objects."""
    import torch
    from safetensors.torch import load_file

    from signtune.train.loop import TrainState

    try:
        meta = torch.load(path / STATE, map_location="cpu", weights_only=True)
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:
        raise StudyError(
            f"{path}: cannot be read safely ({type(exc).__name__}); delete the candidate folder to start over"
        ) from None
    return TrainState(
        epoch=int(meta["epoch"]),
        step=int(meta["step"]),
        model=weights,
        optimizer=meta["optimizer"],
        scheduler=meta["scheduler"],
        rng=meta["rng"],
        history=list(meta["history"]),
        best=dict(meta["best"]),
        cuda_rng=list(meta.get("cuda_rng", [])),  # absent in CPU-era checkpoints
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
    from signtune.data.dataset import load_task_data
    from signtune.runner import open_study
    from signtune.study import ranked_trials
    from signtune.train.loop import evaluate, fit

    study = open_study(spec, create=False, heartbeat=False)
    done = ranked_trials(study, spec.objective.direction)
    if not done:
        raise StudyError(f"study {spec.name!r} has no complete trial yet; run `study run --study {spec.name}` first")
    top = done[:top_k]
    out = spec.dir / "promoted"
    (out / "candidates").mkdir(parents=True, exist_ok=True)
    promote_epochs = epochs if epochs is not None else spec.promote.epochs
    patience = spec.promote.patience
    base_seed = spec.seed
    if spec.task != "sign2text":
        return _promote_plugin(
            spec,
            study,
            top,
            out,
            epochs=promote_epochs,
            seeds=seeds,
            resume=resume,
            patience=patience,
            on_epoch=on_epoch,
        )

    candidates: list[Candidate] = []
    for trial in top:
        for s in range(seeds):
            seed = base_seed + s
            cand = Candidate(trial.number, seed, float(trial.value or 0.0))
            cand.dir = out / "candidates" / f"trial-{trial.number}-seed-{seed}"
            cfg = candidate_config(spec, trial.params, epochs=promote_epochs, seed=seed)
            data = load_task_data(cfg.data, spec.dir, cache_dir=spec.dir / ".cache")
            state = None
            if resume:
                recover_dir(cand.dir / "best")
            if resume and (recover_dir(cand.dir / "last") / STATE).exists():
                state = load_checkpoint(cand.dir / "last")
            elif cand.dir.exists() and not resume:
                shutil.rmtree(cand.dir)
            if state is not None and state.epoch >= cfg.run.epochs:
                history, best = state.history, state.best
            else:
                # base_dir: relative model paths (a t5's model.pretrained) start at the study folder
                train = functools.partial(fit, base_dir=spec.dir)
                history, best = _train_candidate(cand, cfg, data, state, patience, train, on_epoch)
            cand.value = float(best.get("val_bleu", float("nan")))
            cand.epochs_run = len(history)
            candidates.append(cand)

    winner = max(candidates, key=lambda c: c.value)
    cfg = candidate_config(spec, study.trials[winner.trial].params, epochs=promote_epochs, seed=winner.seed)
    data = load_task_data(cfg.data, spec.dir, cache_dir=spec.dir / ".cache")
    if data.test is None:
        raise StudyError(f"study {spec.name!r} has no test split ({cfg.data.test_manifest}); add it to evaluate")
    from signtune.models import build_model
    from signtune.train.loop import resolve_device

    device = resolve_device(cfg.run.device)
    model = build_model(
        cfg.model, feature_dim=data.feature_dim, vocab_size=data.tokenizer.vocab_size, base_dir=spec.dir
    )
    model.load_state_dict(load_checkpoint(winner.dir / "best").model)
    model.to(device).eval()
    beam = spec.promote.beam_size
    scores, hyps = evaluate(
        model,
        data.test,
        data.tokenizer,
        cfg.eval,
        device,
        beam_size=beam,
        amp=cfg.run.amp,  # bf16 on CUDA, as the candidates were validated; nothing on CPU
        max_frames=cfg.data.max_frames,
    )
    test = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}
    test["beam_size"] = beam
    fidelity, note = _fidelity(candidates, seeds, _study_subset(spec, study))
    # the architecture of the model just tested (a t5's config, its sign encoder's shape), not
    # re-read from source folders that may have changed since training
    arch_fn: Any = getattr(model, "architecture", None)
    arch = arch_fn() if callable(arch_fn) else None
    _write_outputs(out, spec, study, winner, candidates, cfg, data, test, hyps, fidelity, note, arch)
    result = PromoteResult(out, winner, candidates, test, fidelity, note)
    if spec.tracking.enabled:
        from signtune.tracking import log_promotion

        log_promotion(spec, result)
    return result


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
        # best/ before last/: whenever last/ says epoch k, best/ holds the best of epochs 1..k.
        current = st.history[-1]["val_bleu"]
        if current > best_value[0]:
            best_value[0] = current
            stale[0] = 0
            save_checkpoint(cand.dir / "best", st)
        else:
            stale[0] += 1
        save_checkpoint(cand.dir / "last", st)
        if crash_after == st.epoch:  # test-only: a crash right after a checkpoint
            os.kill(os.getpid(), 9)

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


def _study_subset(spec: StudySpec, study: Any) -> float | None:
    """The train-split fraction the study's trials ran at, or ``None`` when it is not known.

    Read from the study's stored ``settings`` (``budget.subset``, recorded by ``study run``);
    for a study without them, the spec's ``budget.subset`` when the spec is loaded as the last
    run loaded it (same hash: no other ``--subset`` was given), else unknown.
    """
    attrs = dict(getattr(study, "user_attrs", {}) or {})
    settings = attrs.get("settings")
    value = settings.get("budget.subset") if isinstance(settings, dict) else None
    if value is None and attrs.get("spec_hash") == spec.hash():
        value = spec.budget.subset
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


MIN_FIDELITY_CONFIGS = 3  # a rank correlation of 2 points is +1 or -1 whatever the data


def _fidelity(candidates: list[Candidate], seeds: int, subset: float | None = None) -> tuple[float | None, str]:
    """Spearman rank correlation between the subset values and the full-data values.

    ``None`` (with a note saying why) when it cannot mean anything: fewer than
    ``MIN_FIDELITY_CONFIGS`` configs, or all values equal on either side. ``subset`` is the
    fraction of the train split the study's trials used (``None``: unknown): at 1.0 a larger
    subset cannot help, so the note does not advise one.
    """
    by_trial: dict[int, list[Candidate]] = {}
    for c in candidates:
        if math.isfinite(c.subset_value) and math.isfinite(c.value):  # a diverged run ranks nowhere
            by_trial.setdefault(c.trial, []).append(c)
    n = len(by_trial)
    if n < MIN_FIDELITY_CONFIGS:
        what = {0: "no promoted config has a finite value", 1: "one config promoted"}.get(n, f"{n} configs promoted")
        return None, (
            f"{what}: too few to compare rankings "
            f"(use --top-k {MIN_FIDELITY_CONFIGS} or more for a Spearman rank correlation)"
        )
    trials = list(by_trial)
    sub = [by_trial[t][0].subset_value for t in trials]
    full = [sum(c.value for c in by_trial[t]) / len(by_trial[t]) for t in trials]
    full_data = subset is not None and subset >= 1.0
    if subset is None:
        source = "the study's values"
    elif full_data:
        source = "the study's values (already on all training data)"
    else:
        source = f"--subset {subset:g}"
    rho = _spearman(sub, full)
    if rho is None:  # zero variance on one side: no ranking to compare
        tied = ", ".join(
            f"{name} values all {xs[0]:.2f}" for name, xs in (("study", sub), ("full-data", full)) if len(set(xs)) == 1
        )
        return None, (
            f"how {source} ranked the {n} configs cannot be judged: all values equal ({tied}); "
            "no Spearman rank correlation"
        )
    rho = round(rho, 4)
    if rho < 0.5:
        if full_data:
            advice = "promote more configs (--top-k) or seeds (--seeds): a larger subset cannot help"
        elif subset is None:
            advice = "tune on a larger subset if the trials used one, or promote more configs"
        else:
            advice = "tune on a larger subset, or promote more configs"
        note = f"{source} did not rank these configs the same way as full data (Spearman {rho:.2f}): {advice}"
    else:
        note = f"{source} ranked the configs like full data (Spearman {rho:.2f})"
    return rho, note


def _average_ranks(x: list[float]) -> list[float]:
    """0-based ranks of ``x``; tied values share the mean of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho with average ranks for ties; ``None`` when it is undefined (fewer than 2
    points, or every value on one side equal)."""
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} and {len(b)} values")
    ra, rb = _average_ranks(a), _average_ranks(b)
    n = len(a)
    if n < 2:
        return None
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    if va == 0.0 or vb == 0.0:
        return None
    return max(-1.0, min(1.0, cov / (va * vb)))


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
    architecture: dict[str, Any] | None,
) -> None:
    from signtune.inference import write_predictions, write_promoted

    shutil.copyfile(winner.dir / "best" / WEIGHTS, out / WEIGHTS)
    write_promoted(
        out,
        cfg,
        feature_dim=data.feature_dim,
        vocab_size=data.tokenizer.vocab_size,
        tokenizer=data.tokenizer,
        architecture=architecture,
    )
    metrics = {
        "winner": {
            "trial": winner.trial,
            "seed": winner.seed,
            "val_bleu": winner.value,
            "epochs": winner.epochs_run,
        },
        "test": test,
        "candidates": [
            {
                "trial": c.trial,
                "seed": c.seed,
                "subset_value": c.subset_value,
                "val_bleu": c.value,
                "epochs": c.epochs_run,
            }
            for c in candidates
        ],
        "fidelity_spearman": fidelity,
        "fidelity_note": note,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_predictions(out, data.test, hyps)
    root = spec.data_root
    hashes = {}
    for name in (cfg.data.train_manifest, cfg.data.val_manifest, cfg.data.test_manifest):
        path = root / name
        if path.exists():
            hashes[name] = _sha256(path)
    feats = root / cfg.data.features_dir
    listing = sorted(p.name for p in feats.iterdir()) if feats.is_dir() else []
    hashes["features_index"] = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    provenance = _provenance(spec, winner, candidates, hashes)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def _provenance(
    spec: StudySpec, winner: Candidate, candidates: list[Candidate], hashes: dict[str, str]
) -> dict[str, Any]:
    """Where a promoted model came from: study, trials, seeds, code and package versions, inputs."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("signtune", "torch", "optuna", "mlflow", "sacrebleu", "tokenizers", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return {
        "study": spec.name,
        "task": spec.task,
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


# --- plug-in tasks: promotion through the ``ctx.checkpoint`` hook ---------------------------


def save_tensors(path: Path, tensors: Mapping[str, Any], *, epoch: int, metrics: Mapping[str, float]) -> None:
    """A plug-in checkpoint: ``model.safetensors`` with the epoch and metrics as metadata; atomic."""
    import torch
    from safetensors.torch import save_file

    bad = sorted(k for k, v in tensors.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise TypeError(f"ctx.checkpoint got non-tensor values for {bad[:5]}; pass a flat {{name: tensor}} mapping")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"epoch": str(int(epoch)), "metrics": json.dumps({k: float(v) for k, v in metrics.items()})}
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS), meta)
    commit_dir(tmp, path)


def load_tensors(path: Path) -> Resume:
    """Read a plug-in checkpoint back (safetensors only: nothing is unpickled)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            meta = f.metadata() or {}
        return Resume(
            epoch=int(meta.get("epoch", 0)),
            tensors=dict(load_file(str(path / WEIGHTS))),
            metrics={k: float(v) for k, v in json.loads(meta.get("metrics", "{}")).items()},
        )
    except Exception as exc:
        raise StudyError(
            f"{path / WEIGHTS}: cannot be read ({type(exc).__name__}: {exc}); delete the candidate folder to start over"
        ) from None


class _Checkpointer:
    """``ctx.checkpoint`` during promote-best: ``last/`` every call, ``best/`` on improvement."""

    def __init__(self, cand_dir: Path, metric: str, maximize: bool, best: float | None) -> None:
        self.dir, self.metric, self.maximize = cand_dir, metric, maximize
        self.best = best
        self.calls = 0
        self.crash_after = kill_after_epoch()

    def better(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.maximize else value < self.best)

    def __call__(self, epoch: int, tensors: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            raise ValueError(
                f"ctx.checkpoint({epoch}, ...) got metrics {sorted(metrics)} but the objective is {self.metric!r}"
            )
        # best/ before last/: whenever last/ says epoch k, best/ holds the best of epochs 1..k.
        value = float(metrics[self.metric])
        if math.isfinite(value) and self.better(value):
            self.best = value
            save_tensors(self.dir / "best", tensors, epoch=epoch, metrics=metrics)
        save_tensors(self.dir / "last", tensors, epoch=epoch, metrics=metrics)
        self.calls += 1
        if self.crash_after == epoch:  # test-only: a crash right after a checkpoint
            os.kill(os.getpid(), 9)


def plugin_config(spec: StudySpec, params: dict[str, Any], *, epochs: int | None, seed: int) -> dict[str, Any]:
    """A plug-in's promotion config: fixed + best params + full data + ``promote.overrides``."""
    overrides = dict(spec.promote.overrides)
    config = {**spec.fixed, **params, "data.subset": 1.0, **overrides, "run.seed": seed}
    if epochs is not None:
        config["run.epochs"] = epochs
    return config


def _promote_plugin(
    spec: StudySpec,
    study: Any,
    top: list[Any],
    out: Path,
    *,
    epochs: int | None,
    seeds: int,
    resume: bool,
    patience: int,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None,
) -> PromoteResult:
    """Retrain a plug-in's top configs on full data, keeping the checkpoints it hands over.

    The plug-in is called exactly as in a trial, with ``ctx.checkpoint`` (and ``ctx.resume`` on
    ``--resume``) set. Its optional ``test(config, tensors, ctx) -> metrics`` attribute scores
    the winner's best checkpoint on held-out data.
    """
    from signtune.objective import resolve_device
    from signtune.tasks import PluginTask, TrialContext, get_task

    task = get_task(spec.task, where=f"{spec.path}: task")
    assert isinstance(task, PluginTask)
    metric, maximize = spec.objective.metric, spec.objective.direction == "maximize"
    device = resolve_device(spec.device)
    candidates: list[Candidate] = []
    configs: dict[str, dict[str, Any]] = {}
    for trial in top:
        for s in range(seeds):
            seed = spec.seed + s
            cand = Candidate(trial.number, seed, float(trial.value or 0.0))
            cand.dir = out / "candidates" / f"trial-{trial.number}-seed-{seed}"
            config = plugin_config(spec, dict(trial.params), epochs=epochs, seed=seed)
            configs[cand.dir.name] = config
            if resume:
                recover_dir(cand.dir / "best")
            last = recover_dir(cand.dir / "last")
            state = load_tensors(last) if resume and (last / WEIGHTS).is_file() else None
            if state is None and cand.dir.exists():
                shutil.rmtree(cand.dir)
            best = load_tensors(cand.dir / "best").metrics.get(metric) if state is not None else None
            hook = _Checkpointer(cand.dir, metric, maximize, best)
            ctx = TrialContext(
                device=device,
                seed=seed,
                subset=1.0,
                trial_number=trial.number,
                scratch_dir=cand.dir / "scratch",
                study_dir=spec.dir,
                checkpoint=hook,
                resume=state,
            )
            _run_plugin(spec, task, cand, config, ctx, hook, patience, on_epoch)
            if not (cand.dir / "best" / WEIGHTS).is_file():
                raise StudyError(
                    f"task {spec.task} saved no checkpoint while promoting trial {trial.number}: call "
                    "ctx.checkpoint(epoch, model.state_dict(), metrics) after each epoch when ctx.checkpoint is "
                    "set (README: Plug-in tasks)"
                )
            best_ckpt = load_tensors(cand.dir / "best")
            cand.value = float(best_ckpt.metrics[metric])
            cand.epochs_run = load_tensors(cand.dir / "last").epoch
            candidates.append(cand)

    winner = (max if maximize else min)(candidates, key=lambda c: c.value)
    config = configs[winner.dir.name]
    test = _plugin_test(spec, task, config, winner, device)
    fidelity, note = (
        _fidelity(candidates, seeds, _study_subset(spec, study))
        if maximize
        else (None, "fidelity is computed for maximised metrics")
    )
    shutil.copyfile(winner.dir / "best" / WEIGHTS, out / WEIGHTS)
    best_epoch = load_tensors(winner.dir / "best").epoch
    (out / "config.json").write_text(
        json.dumps(
            {
                "task": spec.task,
                "metric": metric,
                "best_epoch": best_epoch,
                "config": {k: mask_url(v) if isinstance(v, str) else v for k, v in config.items()},
            },
            indent=2,
        )
        + "\n"
    )
    metrics = {
        "metric": metric,
        "winner": {"trial": winner.trial, "seed": winner.seed, metric: winner.value, "epochs": winner.epochs_run},
        "test": test,
        "candidates": [
            {"trial": c.trial, "seed": c.seed, "subset_value": c.subset_value, metric: c.value, "epochs": c.epochs_run}
            for c in candidates
        ],
        "fidelity_spearman": fidelity,
        "fidelity_note": note,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    module = sys.modules.get(task.fn.__module__)
    source = Path(getattr(module, "__file__", "") or "")
    hashes = {source.name: _sha256(source)} if source.is_file() else {}
    (out / "provenance.json").write_text(json.dumps(_provenance(spec, winner, candidates, hashes), indent=2) + "\n")
    result = PromoteResult(out, winner, candidates, test, fidelity, note, metric=metric)
    if spec.tracking.enabled:
        from signtune.tracking import log_promotion

        log_promotion(spec, result)
    return result


def _run_plugin(
    spec: StudySpec,
    task: Any,
    cand: Candidate,
    config: dict[str, Any],
    ctx: Any,
    hook: _Checkpointer,
    patience: int,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None,
) -> None:
    """One candidate's training; ``report`` stops it after ``patience`` epochs without improvement."""
    from signtune.errors import StopTrial

    metric, maximize = spec.objective.metric, spec.objective.direction == "maximize"
    best: list[float | None] = [hook.best]
    stale = [0]

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(cand.dir.name, epoch, metrics)
        value = float(metrics.get(metric, float("nan")))
        if math.isfinite(value) and (best[0] is None or (value > best[0] if maximize else value < best[0])):
            best[0], stale[0] = value, 0
        else:
            stale[0] += 1
        if patience > 0 and stale[0] >= patience:
            raise StopTrial("early_stop", f"no better {metric} for {patience} epochs")

    try:
        task.fit(config, report, ctx)
    except StopTrial:
        return  # early stopping: the best checkpoint stands
    except SigntuneError:
        raise
    except Exception as exc:
        raise StudyError(
            f"task {spec.task} raised {type(exc).__name__}: {exc} while promoting trial {cand.trial} "
            f"(seed {cand.seed}); fix the plug-in, then run `study promote-best --resume`"
        ) from None


def _plugin_test(spec: StudySpec, task: Any, config: dict[str, Any], winner: Candidate, device: str) -> dict[str, Any]:
    """The plug-in's ``test`` hook on the winner's best checkpoint, or ``{}`` when it has none."""
    from signtune.tasks import TrialContext

    test_fn = getattr(task.fn, "test", None)
    if not callable(test_fn):
        return {}
    ctx = TrialContext(device, winner.seed, 1.0, winner.trial, winner.dir / "scratch", spec.dir)
    try:
        out = test_fn(dict(config), load_tensors(winner.dir / "best").tensors, ctx)
    except Exception as exc:
        raise StudyError(f"the test hook of task {spec.task} raised {type(exc).__name__}: {exc}; fix it") from None
    if not isinstance(out, dict) or any(isinstance(v, bool) or not isinstance(v, int | float) for v in out.values()):
        raise StudyError(
            f"the test hook of task {spec.task} returned {out!r}; return a dict of metric names to numbers"
        )
    return {k: float(v) for k, v in out.items()}
