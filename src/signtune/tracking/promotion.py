"""promote-best's MLflow run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from signtune.tracking.client import Tracker

if TYPE_CHECKING:
    from signtune.promote import PromoteResult
    from signtune.spec import StudySpec

# What a promoted folder may hold, logged as the run's ``model`` artifacts when present (a
# plug-in's promotion has no tokenizer or predictions).
PROMOTED_ARTIFACTS = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",  # a Hugging Face tokenizer's (a t5's) special tokens
    "metrics.json",
    "predictions.tsv",
    "provenance.json",
)


def log_promotion(spec: StudySpec, result: PromoteResult) -> str:
    """One MLflow run for the promotion: tags naming the source study and trials, test metrics,
    the promoted model as artifacts, and a model-registry version where the store has one."""
    import contextlib

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
    for key, value in result.test.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "beam_size":
            client.log_metric(run_id, key if key.startswith("test_") else f"test_{key}", float(value))
    client.log_metric(run_id, result.metric, result.winner.value)
    for name in PROMOTED_ARTIFACTS:
        if (result.out_dir / name).is_file():
            client.log_artifact(run_id, str(result.out_dir / name), artifact_path="model")
    client.set_terminated(run_id, status="FINISHED")
    name = f"signtune-{spec.name}"
    with contextlib.suppress(Exception):  # already registered
        client.create_registered_model(name)
    with contextlib.suppress(Exception):  # stores without a model registry skip this
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    return str(run_id)
