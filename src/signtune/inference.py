"""The promoted-model folder (``studies/<name>/promoted``): write it, load it, translate with it.

The folder holds ``model.safetensors``, ``config.json`` (the model's shape, its test-time
decoding and run settings, the flat training config), the tokenizer (``tokenizer.json``, plus
``tokenizer_config.json`` for a Hugging Face one) and ``predictions.tsv``. Loading reads JSON
and safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signtune.config import EvalConfig, ModelConfig, RunConfig, TrainConfig, flatten
from signtune.errors import DataError, Problem, SigntuneError, StudyError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from signtune.data.types import Split, TextTokenizer
    from signtune.models import SignModel
    from signtune.spec import StudySpec
    from signtune.tasks import Shipped, TrialContext

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
PREDICTIONS = "predictions.tsv"


@dataclass(frozen=True)
class PromotedModel:
    """A promoted model read back for inference.

    Attributes:
        model: the model, in eval mode, on the CPU.
        tokenizer: the tokenizer it was trained with.
        config: ``config.json`` as written.
        eval: its decoding settings (``eval.*``).
        run: its run settings; ``run.amp`` gives bf16 decoding on CUDA, as in training.
        feature_dim: the size of one feature frame it reads.
        max_frames: the leading frames of a clip it reads, as in training.
    """

    model: SignModel
    tokenizer: TextTokenizer
    config: dict[str, Any]
    eval: EvalConfig
    run: RunConfig
    feature_dim: int
    max_frames: int


def write_promoted(
    out: Path,
    cfg: TrainConfig,
    *,
    feature_dim: int,
    vocab_size: int,
    tokenizer: object,
    architecture: dict[str, Any] | None,
) -> None:
    """Write ``config.json`` and the tokenizer of a model trained with ``cfg`` into ``out``
    (the weights are the caller's: ``model.safetensors``)."""
    from signtune.data.tokenizer import PretrainedTokenizer, Tokenizer

    if not isinstance(tokenizer, Tokenizer | PretrainedTokenizer):
        raise TypeError(f"cannot save a {type(tokenizer).__name__} into a promoted model folder")
    doc = {
        "family": cfg.model.family,
        # a t5's own config (and its sign encoder's shape): load_promoted rebuilds it from these alone
        "architecture": architecture,
        "feature_dim": feature_dim,
        "vocab_size": vocab_size,
        "model": dataclasses.asdict(cfg.model),
        "eval": dataclasses.asdict(cfg.eval),
        "data": {"max_frames": cfg.data.max_frames},
        "run": dataclasses.asdict(cfg.run),
        "config": flatten(cfg),
    }
    (out / CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    tokenizer.save(out / TOKENIZER)


def write_predictions(out: Path, split: Split, hyps: list[str]) -> None:
    """``predictions.tsv``: id, reference and hypothesis of every clip of ``split``."""
    with (out / PREDICTIONS).open("w", encoding="utf-8") as f:
        f.write("id\treference\thypothesis\n")
        for i, ref, hyp in zip(split.ids, split.texts, hyps, strict=True):
            f.write(f"{i}\t{ref}\t{hyp}\n")


def _run_config(meta: dict[str, Any]) -> RunConfig:
    """The ``run`` settings of ``config.json``; a folder promoted before that section existed
    has them in its flat ``config`` (``run.amp``...)."""
    run = meta.get("run")
    if not isinstance(run, dict):
        flat = meta.get("config") or {}
        run = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("run.")}
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in run.items() if k in names})


def load_promoted(model_dir: Path) -> PromotedModel:
    """Read a promoted model folder for inference (JSON and safetensors only).

    Raises:
        DataError: a file is missing, damaged or does not match the others.
    """
    from safetensors.torch import load_file

    from signtune.data.tokenizer import load_saved_tokenizer
    from signtune.models import build_model

    config_path, weights = model_dir / CONFIG, model_dir / WEIGHTS
    for path in (config_path, weights, model_dir / TOKENIZER):
        if not path.is_file():
            raise DataError(
                Problem(
                    str(path), "is missing", "point --model at a folder written by `study promote-best` (promoted/)"
                )
            )
    try:
        meta = json.loads(config_path.read_text())
        model = build_model(
            ModelConfig(**meta["model"]),
            feature_dim=int(meta["feature_dim"]),
            vocab_size=int(meta["vocab_size"]),
            architecture=meta.get("architecture"),
        )
        model.load_state_dict(load_file(str(weights)))
        promoted = PromotedModel(
            model=model.eval(),
            tokenizer=load_saved_tokenizer(model_dir / TOKENIZER),
            config=meta,
            eval=EvalConfig(**meta["eval"]),
            run=_run_config(meta),
            feature_dim=int(meta["feature_dim"]),
            max_frames=int(meta["data"]["max_frames"]),
        )
    except SigntuneError:
        raise
    except Exception as exc:  # a damaged or mismatched file (safetensors' errors included)
        raise DataError(
            Problem(
                str(model_dir),
                f"is not a readable promoted model ({type(exc).__name__}: {exc})",
                "re-run `study promote-best`",
            )
        ) from None
    return promoted


def translate(promoted: PromotedModel, clips: list[np.ndarray], *, beam_size: int, device: str = "auto") -> list[str]:
    """Translate ``(T, D)`` clips in batches, on ``device`` (auto, cpu, cuda...), with the
    model's own decoding and ``run.amp`` settings; the texts come back in input order."""
    import torch

    from signtune.device import resolve_device
    from signtune.train.loop import translate as decode

    dev = torch.device(resolve_device(device))
    promoted.model.to(dev)
    return decode(
        promoted.model,
        clips,
        promoted.tokenizer,
        promoted.eval,
        dev,
        beam_size=beam_size,
        amp=promoted.run.amp,  # bf16 on CUDA when it trained so; nothing on CPU
        max_frames=promoted.max_frames,
    )


def ship_sign2text(
    spec: StudySpec, cfg: TrainConfig, weights: dict[str, torch.Tensor], ctx: TrialContext, out: Path
) -> Shipped:
    """The built-in task's promote-best ending: beam-search the test split with ``weights`` and
    write the promoted folder (all but ``model.safetensors``) into ``out``.

    Raises:
        StudyError: the study has no test split.
    """
    import torch

    from signtune.data.dataset import load_task_data
    from signtune.models import build_model
    from signtune.tasks import Shipped
    from signtune.train.loop import evaluate

    data = load_task_data(cfg.data, ctx.study_dir, cache_dir=ctx.study_dir / ".cache")
    if data.test is None:
        raise StudyError(
            Problem(
                f"{spec.data_root / cfg.data.test_manifest}",
                "does not exist: promote-best scores the winner on the test split",
                "add the test split (data.test_manifest) to the study's data",
            )
        )
    device = torch.device(ctx.device)
    model = build_model(
        cfg.model, feature_dim=data.feature_dim, vocab_size=data.tokenizer.vocab_size, base_dir=ctx.study_dir
    )
    model.load_state_dict(weights)
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
    test: dict[str, float | str] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}
    test["beam_size"] = beam
    # the architecture of the model just tested (a t5's config, its sign encoder's shape), not
    # re-read from source folders that may have changed since training
    arch_fn = getattr(model, "architecture", None)
    write_promoted(
        out,
        cfg,
        feature_dim=data.feature_dim,
        vocab_size=data.tokenizer.vocab_size,
        tokenizer=data.tokenizer,
        architecture=arch_fn() if callable(arch_fn) else None,
    )
    write_predictions(out, data.test, hyps)
    return Shipped(test=test, inputs=_data_hashes(spec.data_root, cfg))


def _data_hashes(root: Path, cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the manifests, and of the sorted list of feature file names."""
    from signtune.data.layout import feature_listing
    from signtune.promote.provenance import sha256

    hashes = {}
    for name in (cfg.data.train_manifest, cfg.data.val_manifest, cfg.data.test_manifest):
        path = root / name
        if path.exists():
            hashes[name] = sha256(path)
    listing = feature_listing(root, cfg.data.features_dir)
    hashes["features_index"] = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    return hashes
