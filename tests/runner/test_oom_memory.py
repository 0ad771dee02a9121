"""An out-of-memory trial's tensors are released before its retry starts (in-process runner)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import optuna
from tests.runner.conftest import fast_spec

from signtune.config import TrainConfig
from signtune.objective import halve_batch

# A plug-in whose first trial holds a "model" in its frame when it runs out of memory. The
# retry records which earlier models are still alive when it starts.
OOMPLUG = """
import weakref

MODELS = []
ALIVE_AT_RETRY = []


class Model:
    def __init__(self):
        self.weights = bytearray(8 << 20)
        self.me = self  # a reference cycle, like a module's parent links


def objective(config, report, ctx):
    if config.get("data.batch_size") == 32 and not MODELS:  # the first trial only
        model = Model()
        MODELS.append(weakref.ref(model))
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    ALIVE_AT_RETRY.append(sum(ref() is not None for ref in MODELS))
    report(1, {"score": config["x"]})
    return {"score": config["x"]}
"""


def test_the_oom_retry_starts_after_the_failed_trial_is_freed(fast_project: Path) -> None:
    from signtune.runner import run_study
    from signtune.space import parse
    from signtune.spec import load_spec
    from signtune.tasks import get_task

    (fast_project / "oomplug.py").write_text(OOMPLUG)
    text = fast_spec(trials=2, storage="sqlite:///studies/fast/study.db").replace(
        "fastplug:objective", "oomplug:objective"
    )
    text = text.replace("fixed: {", "fixed: {data.batch_size: 32, ")
    spec_path = fast_project / "studies" / "fast" / "study.yaml"
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    task = get_task(spec.task)
    space = parse(spec.search_space, known_keys=task.config_keys())
    task.prepare(spec)
    # Only the runner's own collection may free the cycle; and no log record may keep the
    # failed trial's traceback (pytest's log capture would hold Optuna's warning and its frames).
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    gc.disable()
    try:
        summary = run_study(spec, space, task)
    finally:
        gc.enable()
        optuna.logging.set_verbosity(verbosity)
    plug = sys.modules["oomplug"]
    assert summary.finished == 2
    assert len(plug.MODELS) == 1, "one trial ran out of memory, then its retry ran at half batch"
    assert plug.ALIVE_AT_RETRY[0] == 0, "the failed trial's model was still alive when its retry started"


def test_halve_batch_also_halves_the_validation_batch() -> None:
    cfg = TrainConfig()
    half = halve_batch(cfg)
    assert half.data.batch_size == cfg.data.batch_size // 2
    assert half.optim.grad_accum == 2 * cfg.optim.grad_accum
    assert half.eval.batch_size == cfg.eval.batch_size // 2
    assert halve_batch({"data.batch_size": 1, "eval.batch_size": 1}) == {
        "data.batch_size": 1,
        "optim.grad_accum": 2,
        "eval.batch_size": 1,
    }
