"""Start-up: from launching ``study run`` to the first optimizer step, phase by phase.

    python -m benchmarks.startup --repeats 3

The project is a temporary copy of the demo study and search space whose ``data/`` already
holds the generated demo data (nothing else cached: no tokenizer, no study.db, no mlflow.db).
The trainer is not instrumented; instead each phase that ``study run`` goes through before its
first step is timed in a fresh process, in the order ``study run`` runs them:

1. process start + ``import signtune.cli``: ``python -c "import signtune.cli"`` (subprocess);
2. spec, search space and task loaded and checked (what ``study run`` does first);
3. data: ``task.prepare`` (imports numpy/torch/tokenizers, finds the generated data, trains the
   tokenizer, reads every feature file: ``load_task_data`` cold); and ``load_task_data`` again
   (warm: the in-process cache, what later trials in the worker pay);
4. Optuna study created on SQLite, the enqueued configs queued, the first trial asked for;
5. MLflow: its import, then the study's parent run and the first trial's run created in a new
   SQLite store;
6. the trainer's imports; the model, the optimizer, the batches and the scheduler built; the
   first step taken, mirroring ``fit`` up to its first ``optimizer.step()`` (the trial's config:
   the enqueued one, on the demo spec's whole train split, 3000 clips). A second step is timed
   for scale.

Each child process runs 2-6 once; ``--repeats`` children, medians per phase. The headline
figure is measured, not summed: the real ``study run --trials 1`` is launched ``--repeats``
times and stopped at its first ``optimizer.step()`` by a global torch.optim hook (median of the
runs). MLflow's runs are created after the first epoch, so phase 5 is off that path. For
reference, the whole ``study run --trials 1 --epochs 1 --subset 0.1`` (first step, one epoch,
validation, export) is timed end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 5.0
PHASES = [
    "spec + space + task",
    "data (cold)",
    "optuna study + first trial",
    "mlflow import",
    "mlflow store + runs",
    "trainer imports",
    "model",
    "optimizer",
    "batches + scheduler",
    "first step",
]


def _child(study_yaml: Path) -> dict[str, float]:
    """Run phases 2-6 in this (fresh) process and return their seconds."""
    t: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        t[name] = now - mark
        mark = now

    import signtune.cli  # noqa: F401

    lap("import signtune.cli (in process)")
    import optuna

    from signtune.space import check_params, parse
    from signtune.spec import load_spec
    from signtune.tasks import get_task

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = load_spec(str(study_yaml), {"budget.trials": 1, "fixed.run.epochs": 1})
    task = get_task(spec.task)
    space = parse(spec.search_space, known_keys=task.config_keys())
    for i, params in enumerate(spec.enqueue):
        check_params(space, params, f"enqueue[{i}]")
    lap("spec + space + task")
    task.prepare(spec)
    lap("data (cold)")
    from signtune.data.dataset import load_task_data

    cfg0 = task.make_config(spec, {})
    data = load_task_data(cfg0.data, spec.dir, cache_dir=spec.dir / ".cache")
    lap("data (warm)")

    from signtune.space import suggest
    from signtune.study import enqueue_defaults, open_study
    from signtune.tracking import make_tracker

    study = open_study(spec)
    enqueue_defaults(study, spec)
    trial = study.ask()
    values = suggest(trial, space)
    cfg = task.make_config(spec, values)
    lap("optuna study + first trial")

    from mlflow.tracking import MlflowClient  # noqa: F401  (what the tracker imports on first use)

    lap("mlflow import")
    tracker = make_tracker(spec)
    tracker.start_study(study_name=spec.name, storage=spec.storage, params=task.fixed_config(spec), tags={})
    run_id = tracker.start_trial(trial.number, params=values, tags={})
    lap("mlflow store + runs")

    import torch
    import torch.nn.functional as F

    from signtune.data.batching import make_batches
    from signtune.data.types import PAD_ID
    from signtune.models import build_model
    from signtune.train.loop import seed_everything
    from signtune.train.optim import build_optimizer
    from signtune.train.schedule import build_scheduler

    lap("trainer imports")
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, feature_dim=data.feature_dim, vocab_size=data.tokenizer.vocab_size)
    lap("model")
    optimizer = build_optimizer(model.named_groups(), cfg.optim, "cpu")
    lap("optimizer")
    batches = make_batches(data.train, cfg.data.batch_size, shuffle=True, seed=cfg.run.seed + 1,
                           max_frames=cfg.data.max_frames)
    scheduler = build_scheduler(optimizer, total_steps=cfg.run.epochs * len(batches),
                                warmup_ratio=cfg.schedule.warmup_ratio, name=cfg.schedule.name,
                                min_lr_ratio=cfg.schedule.min_lr_ratio)
    lap("batches + scheduler")
    b = batches[0]
    logits = model(b.src, b.src_mask, b.tgt_in)
    loss = F.cross_entropy(logits.float().flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD_ID,
                           label_smoothing=cfg.loss.label_smoothing)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, foreach=True)
    optimizer.step()
    scheduler.step()
    lap("first step")
    # A second step: what a step costs once torch's one-time set-up is paid (not in the sum).
    b = batches[1 % len(batches)]
    logits = model(b.src, b.src_mask, b.tgt_in)
    F.cross_entropy(logits.float().flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD_ID).backward()
    optimizer.step()
    lap("second step")

    tracker.end_trial(run_id, state="complete")
    tracker.end_study(best_value=None, best_params={}, export_dir=None)
    study.tell(trial, 0.0)
    return t


# Runs the real `study run` in this process and stops it at its first optimizer step: a global
# torch.optim post-step hook prints the seconds since the parent launched the process, then
# exits at once (the temporary project is thrown away). torch is imported up front to install
# the hook; `study run` imports it before its first step anyway, so the sum is the same.
FIRST_STEP_CODE = """
import os, sys, time
t0 = float(os.environ["SIGNTUNE_BENCH_T0"])
import torch.optim.optimizer as _opt

def _first_step(optimizer, args, kwargs):
    print(f"FIRST_STEP {time.time() - t0:.4f}", file=sys.stderr, flush=True)
    os._exit(0)

_opt.register_optimizer_step_post_hook(_first_step)
from signtune.cli import app
sys.argv = ["study", "run", "--study", sys.argv[1], "--trials", "1"]
app()
"""


def first_step_e2e(study_yaml: Path) -> float:
    """Seconds from launching the real ``study run`` to its first ``optimizer.step()``."""
    _fresh(study_yaml)
    env = {**_env(), "SIGNTUNE_BENCH_T0": repr(time.time())}
    proc = subprocess.run([sys.executable, "-c", FIRST_STEP_CODE, str(study_yaml)], capture_output=True, text=True,
                          env=env, cwd=study_yaml.parent.parent.parent, check=False)
    found = re.search(r"FIRST_STEP ([0-9.]+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"`study run` never reached a first step (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(found[1])


def make_project(data_root: Path, where: Path) -> Path:
    """A temp project: studies/demo/study.yaml, search_spaces/sign2text.yaml, data linked in.

    The copy's ``data.synthetic`` and ``data.feature_dim`` are set to the linked data's own
    parameters (the demo's, unless the smoke test made a smaller set or the GPU check a D = 768
    one), so ``study run`` finds it complete and generates nothing.
    """
    from benchmarks.common import ROOT, synth_params

    study_dir = where / "studies" / "demo"
    study_dir.mkdir(parents=True)
    (where / "search_spaces").mkdir()
    text = (ROOT / "studies" / "demo" / "study.yaml").read_text(encoding="utf-8")
    params = synth_params(data_root)
    for key in ("seed", "n_train", "n_val", "n_test"):
        text = re.sub(rf"(\n    {key}: )\d+", rf"\g<1>{params[key]}", text, count=1)
    text = re.sub(r"(\n  feature_dim: )\d+", rf"\g<1>{params['feature_dim']}", text, count=1)
    (study_dir / "study.yaml").write_text(text, encoding="utf-8")
    shutil.copy(ROOT / "search_spaces" / "sign2text.yaml", where / "search_spaces" / "sign2text.yaml")
    (study_dir / "data").symlink_to(data_root.resolve(), target_is_directory=True)
    return study_dir / "study.yaml"


def _fresh(study_yaml: Path) -> None:
    """Remove what a run leaves (study.db, mlflow.db, artifacts, tokenizer cache, exports)."""
    d = study_yaml.parent
    for p in d.iterdir():
        if p.name not in ("study.yaml", "data"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _env() -> dict[str, str]:
    from benchmarks.common import ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SIGNTUNE_STORAGE", None)
    return env


def import_profile(rows: int = 12) -> str:
    """``python -X importtime -c "import signtune.cli"`` plus what ``study run`` imports next:
    the slowest top-level packages by cumulative import time."""
    code = ("import signtune.cli, signtune.runner, signtune.data.dataset, signtune.train.loop; "
            "from mlflow.tracking import MlflowClient")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=_env(), check=False)
    found: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:") or "cumulative" in parts[1]:
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:  # top-level imports only (the package's direct imports)
            found[name.strip()] = max(found.get(name.strip(), 0), int(parts[1]))
    top = sorted(found.items(), key=lambda kv: -kv[1])[:rows]
    lines = [f"{us / 1e6:8.3f} s  {name}" for name, us in top]
    return "python -X importtime, cumulative seconds of the slowest top-level imports on the way to the first step:\n" \
        + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (generated when missing)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end `study run` reference")
    ap.add_argument("--profile", action="store_true", help="also print the import-time profile")
    ap.add_argument("--no-profile", action="store_true", help="no import-time profile even when the target is missed")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print("PHASES " + json.dumps(_child(args.child)), flush=True)
        return {}

    from benchmarks.common import command, demo_data, loadavg

    data_root = demo_data(args.data)
    result: dict[str, Any] = {"command": command("startup", argv), "load_before": loadavg()}
    imports: list[float] = []
    children: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="signtune-startup-") as tmp:
        study_yaml = make_project(data_root, Path(tmp))
        measured: list[float] = []
        for _ in range(args.repeats):  # interleaved: real run, import, child, real run, import, child...
            measured.append(first_step_e2e(study_yaml))
            w = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import signtune.cli"], check=True, env=_env())
            imports.append(time.perf_counter() - w)
            _fresh(study_yaml)
            proc = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--child", str(study_yaml)],
                                  capture_output=True, text=True, env=_env(), check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("PHASES ")), None)
            if line is None:
                raise RuntimeError(f"startup child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            children.append(json.loads(line[len("PHASES "):]))
        if not args.no_e2e:
            _fresh(study_yaml)
            cmd = [str(Path(sys.executable).with_name("study")), "run", "--study", str(study_yaml), "--trials", "1",
                   "--epochs", "1", "--subset", "0.1"]
            w = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp, check=False)
            result["e2e"] = {"command": "study run --study <copy of demo> --trials 1 --epochs 1 --subset 0.1",
                             "wall_s": time.perf_counter() - w, "exit": proc.returncode}
            if proc.returncode != 0:
                result["e2e"]["stderr"] = proc.stderr[-1500:]
    phases = {"process start + import signtune.cli": statistics.median(imports)}
    for name in PHASES:
        phases[name] = statistics.median(c[name] for c in children)
    result["phases"] = phases
    result["data_warm_s"] = statistics.median(c["data (warm)"] for c in children)
    result["second_step_s"] = statistics.median(c["second step"] for c in children)
    result["runs"] = {"import": [round(x, 2) for x in imports],
                      **{n: [round(c[n], 2) for c in children] for n in PHASES}}
    # MLflow's runs are created after the first epoch (the tracker defers them), so its phases
    # are shown for scale but are not on the way to the first step.
    result["phases_sum_s"] = sum(v for k, v in phases.items() if not k.startswith("mlflow"))
    result["measured_runs"] = [round(x, 2) for x in measured]
    result["total_s"] = statistics.median(measured)
    result["load_after"] = loadavg()
    result["target"] = f"time to first step <= {TARGET_S:g} s"
    result["met"] = result["total_s"] <= TARGET_S
    for name, s in phases.items():
        print(f"{name:40s} {s:6.2f} s   runs {result['runs'].get(name, result['runs']['import'])}")
    print(f"{'data (warm, later trials)':40s} {result['data_warm_s']:6.2f} s")
    print(f"{'second step (for scale)':40s} {result['second_step_s']:6.2f} s")
    print(f"{'phases on the path (sum, no MLflow)':40s} {result['phases_sum_s']:6.2f} s")
    print(f"{'time to first step (real study run)':40s} {result['total_s']:6.2f} s   runs {result['measured_runs']}"
          f"   target <= {TARGET_S:g} s")
    if "e2e" in result:
        print(f"end to end: {result['e2e']['command']}: {result['e2e']['wall_s']:.1f} s (exit {result['e2e']['exit']})")
    if args.profile or (not result["met"] and not args.no_profile):
        result["profile"] = import_profile()
        if args.profile:
            print(result["profile"])
    return result


if __name__ == "__main__":
    main()
