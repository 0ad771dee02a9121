"""What the GPU check's parts share: sizes, the run context, device facts, FLOPs, GPU sampling.

Two size sets: ``GPU`` for the real check and ``DRY`` for the CPU dry run that the test suite
runs (tiny, a minute at most), so the script cannot rot between GPU windows. Every figure a
part writes carries the context's ``label``: the GPU's name, or ``CPU dry run``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DRY_LABEL = "CPU dry run"

# Result files, one per part (plus summary.json, the rendered section and the log: 8 in all, the
# most a GPU session brings back from $OUT).
PART_FILES = {
    "trainer": "a_trainer.json",
    "workers": "b_workers.json",
    "oom": "c_oom.json",
    "bf16": "d_bf16.json",
    "t5": "e_t5.json",
}
SUMMARY_FILE = "summary.json"
SECTION_FILE = "gpu_section.md"
LOG_FILE = "check.log"
ALL_FILES = (SUMMARY_FILE, *PART_FILES.values(), SECTION_FILE, LOG_FILE)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched on the
# device name in this order; MFU is measured against these. Pass --peak-tflops for another GPU.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (``torch.cuda.get_device_name``), if known."""
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


@dataclass(frozen=True)
class Sizes:
    """How much each part does. ``GPU`` fits the 8-minute budget on one H100; ``DRY`` is tiny."""

    synth: dict[str, int]  # signtune.data.synth.generate's sizes (How2Sign feature size D = 768)
    budgets: dict[str, float]  # weights: each part gets this share of what the whole budget leaves
    total_budget_s: float
    # a. trainer throughput: ours against the naive loop, one epoch over `trainer_clips` clips
    trainer_clips: int
    trainer_batch: int
    trainer_configs: dict[str, dict[str, Any]]
    trainer_max_repeats: int
    # b. workers per GPU: the same enqueued demo configs at each workers-per-GPU count
    workers_configs: int
    workers_epochs: int
    workers_subset: float
    workers_counts: tuple[int, ...]
    # c. a CUDA OOM: the model ladder tried for a batch that cannot fit (GPU), or a tiny model (dry run);
    # then a CUDA error that breaks a worker's context, with `cuda_error_workers` workers
    oom_models: tuple[dict[str, Any], ...]
    oom_batch: int  # dry run only: the batch the injected OOM halves
    cuda_error_workers: int
    # d. bf16 against fp32: one config, a few epochs
    bf16_config: dict[str, Any]
    bf16_epochs: int
    bf16_subset: float
    # e. the T5 family: one trial with a tiny T5
    t5_epochs: int
    t5_subset: float


def _model(d: int, heads: int, enc: int, dec: int) -> dict[str, Any]:
    return {"model.d_model": d, "model.num_heads": heads, "model.num_encoder_layers": enc,
            "model.num_decoder_layers": dec}


GPU = Sizes(
    synth={"seed": 0, "n_train": 3000, "n_val": 300, "n_test": 100, "feature_dim": 768},
    budgets={"oom": 85.0, "t5": 35.0, "bf16": 70.0, "trainer": 105.0, "workers": 135.0},
    total_budget_s=440.0,
    trainer_clips=3000,
    trainer_batch=64,
    trainer_configs={"~10M": _model(256, 4, 5, 5), "~60M": _model(512, 8, 8, 8)},
    trainer_max_repeats=3,
    workers_configs=12,
    workers_epochs=2,
    workers_subset=0.3,
    workers_counts=(1, 2, 4),
    oom_models=(_model(1024, 16, 6, 6), _model(1536, 16, 6, 6), _model(2048, 16, 6, 6)),
    oom_batch=0,
    cuda_error_workers=2,
    bf16_config={**_model(256, 4, 3, 3), "optim.lr": 1.0e-3, "data.batch_size": 64},
    bf16_epochs=5,
    bf16_subset=1.0,
    t5_epochs=2,
    t5_subset=0.3,
)

DRY = Sizes(
    synth={"seed": 0, "n_train": 48, "n_val": 8, "n_test": 4, "feature_dim": 768},
    budgets={"oom": 70.0, "t5": 40.0, "bf16": 30.0, "trainer": 30.0, "workers": 80.0},
    total_budget_s=300.0,
    trainer_clips=16,
    trainer_batch=8,
    trainer_configs={"tiny A": _model(32, 2, 1, 1), "tiny B": _model(64, 2, 1, 1)},
    trainer_max_repeats=1,
    workers_configs=2,
    workers_epochs=1,
    workers_subset=0.5,
    workers_counts=(1, 2),
    oom_models=(_model(32, 2, 1, 1),),
    oom_batch=8,
    cuda_error_workers=2,
    bf16_config={**_model(32, 2, 1, 1), "optim.lr": 1.0e-3, "data.batch_size": 8},
    bf16_epochs=1,
    bf16_subset=0.5,
    t5_epochs=1,
    t5_subset=0.5,
)


@dataclass
class Context:
    """What the orchestrator hands each part (as JSON: each part runs in a process of its own)."""

    dry_run: bool
    out: str  # the results folder
    work: str  # scratch: data, studies, caches (never under `out`)
    data: str  # the generated data folder
    cache: str  # the shared .cache (packed features, tokenizer)
    device: str  # "cuda" or "cpu"
    label: str  # the GPU's name, or DRY_LABEL
    deadline: float  # time.time() by which the part must have finished
    peak_tflops: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> Sizes:
        return DRY if self.dry_run else GPU

    def left(self) -> float:
        """Seconds until the part's deadline."""
        return self.deadline - time.time()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Context:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------
# The machine


def _nvidia_smi(query: str) -> str | None:
    """One ``nvidia-smi --query-gpu`` field of GPU 0, or None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
                              capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip().splitlines()[0].strip() if proc.stdout.strip() else None


def device_facts(dry_run: bool) -> dict[str, Any]:
    """The facts every figure is labelled with: device, driver, torch, CUDA, date, commit."""
    import torch

    from benchmarks.common import _cpu_model, git_commit

    facts: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": os.environ.get("SIGNTUNE_COMMIT") or git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "CPU": f"{_cpu_model()} ({os.cpu_count()} cores)",
    }
    if dry_run or not torch.cuda.is_available():
        facts.update(device="cpu", label=DRY_LABEL, gpu="none (CPU dry run: these are not GPU figures)")
        return facts
    props = torch.cuda.get_device_properties(0)
    facts.update(
        device="cuda",
        label=torch.cuda.get_device_name(0),
        gpu=torch.cuda.get_device_name(0),
        gpus_visible=torch.cuda.device_count(),
        gpu_memory_gib=round(props.total_memory / 2**30, 1),
        compute_capability=f"{props.major}.{props.minor}",
        driver=_nvidia_smi("driver_version") or "unknown (no nvidia-smi)",
        cuda=torch.version.cuda,
        cudnn=str(torch.backends.cudnn.version()),
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
    )
    return facts


def package_versions() -> dict[str, str]:
    """Versions of what the check runs on (the wheels it brought and the node's own packages)."""
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "tokenizers", "sacrebleu", "numpy", "optuna", "sqlalchemy", "alembic",
                 "mlflow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


class GpuSampler:
    """GPU utilisation (%) and memory used (MiB) of GPU 0, every ``interval_s``, in a thread.

    Reads ``nvidia-smi``; without it, ``torch.cuda.utilization`` (NVML through pynvml). Samples
    carry ``time.time()`` so a summary can be cut to a study's trial window. Off (no samples)
    when ``enabled`` is False or neither source works.
    """

    def __init__(self, enabled: bool, interval_s: float = 0.5) -> None:
        self.enabled = enabled
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self.source = "off"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[float, float] | None:
        if self.source == "nvidia-smi":
            value = _nvidia_smi("utilization.gpu,memory.used")
            if value is None:
                return None
            util, mem = (float(x) for x in value.split(","))
            return util, mem
        import torch

        return float(torch.cuda.utilization(0)), float(torch.cuda.memory_usage(0))

    def __enter__(self) -> GpuSampler:
        if not self.enabled:
            return self
        self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "nvml"
        try:
            self._read()
        except Exception:
            self.source = "off"
            return self

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    value = self._read()
                except Exception:
                    value = None
                if value is not None:
                    self.samples.append((time.time(), *value))
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, Any] | None:
        """Mean and max utilisation and max memory over [start, end] (all samples if None)."""
        rows = [s for s in self.samples if (start is None or s[0] >= start) and (end is None or s[0] <= end)]
        if not rows:
            return None
        utils = [u for _, u, _ in rows]
        return {
            "util_mean_pct": round(sum(utils) / len(utils), 1),
            "util_max_pct": max(utils),
            "mem_max_mib": max(m for _, _, m in rows),
            "samples": len(rows),
            "source": self.source,
        }


# --------------------------------------------------------------------------------------------
# FLOPs


FLOPS_HOW = (
    "FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over one forward and backward pass of "
    "each batch shape the loop trained (B x frames x target tokens, padding included), on a copy of the model "
    "on the meta device, so nothing is computed: matmuls, linear layers and SDPA attention; norms, "
    "activations, the loss and the optimizer step are not counted. MFU = counted FLOPs / wall time of the "
    "epoch / the GPU's dense bf16 peak (both loops measured against the bf16 peak, though the naive loop "
    "runs fp32)."
)


def train_flops(model_overrides: dict[str, Any], *, feature_dim: int, vocab_size: int,
                shapes: Iterable[tuple[int, int, int]]) -> float:
    """Forward + backward FLOPs of one training step per ``(batch, frames, target tokens)`` shape, summed.

    See ``FLOPS_HOW``. Counting one pass takes about half a second for the ~60M model, and an
    epoch has dozens of shapes, so the count is taken at a few probe shapes of one clip and
    fitted: every counted op is a matmul or an attention product, so one clip's FLOPs are
    exactly ``a T + b L + c T^2 + d L^2 + e T L`` (T frames, L tokens), and a batch's are B times
    that. A seventh probe checks the fit; if it is off, each shape is counted directly.
    """
    import numpy as np

    shapes = list(shapes)
    coef = _flop_coefficients(json.dumps(model_overrides, sort_keys=True), feature_dim, vocab_size)
    if coef is not None:
        return float(sum(b * np.dot(coef, _terms(t, n)) for b, t, n in shapes))
    from collections import Counter

    count = _flop_counter(model_overrides, feature_dim=feature_dim, vocab_size=vocab_size)
    return float(sum(count(b, t, n) * k for (b, t, n), k in Counter(shapes).items()))


def _terms(t: int, n: int) -> list[float]:
    return [t, n, t * t, n * n, t * n]


@functools.lru_cache(maxsize=8)
def _flop_coefficients(model_json: str, feature_dim: int, vocab_size: int) -> Any:
    """The fitted ``(a, b, c, d, e)`` of ``train_flops`` for one model, or None when the check probe is off."""
    import numpy as np

    count = _flop_counter(json.loads(model_json), feature_dim=feature_dim, vocab_size=vocab_size)
    probes = [(8, 4), (16, 4), (8, 8), (32, 8), (16, 16), (32, 32)]
    coef = np.linalg.lstsq(np.array([_terms(t, n) for t, n in probes], dtype=np.float64),
                           np.array([count(1, t, n) for t, n in probes], dtype=np.float64), rcond=None)[0]
    fitted = float(np.dot(coef, _terms(24, 12)))
    return coef if abs(fitted - count(1, 24, 12)) <= 1e-6 * fitted else None


def _flop_counter(model_overrides: dict[str, Any], *, feature_dim: int,
                  vocab_size: int) -> Callable[[int, int, int], float]:
    """``count(B, T, L)``: FlopCounterMode's total for one forward + backward of the model (meta device)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from signtune.config import TrainConfig, apply_overrides
    from signtune.models import build_model

    cfg = apply_overrides(TrainConfig(), model_overrides).model
    with torch.device("meta"):
        model = build_model(cfg, feature_dim=feature_dim, vocab_size=vocab_size)
    model.train()

    def count(b: int, t: int, n: int) -> float:
        src = torch.zeros(b, t, feature_dim, device="meta")
        mask = torch.ones(b, t, dtype=torch.bool, device="meta")
        tgt = torch.zeros(b, n, dtype=torch.long, device="meta")
        with FlopCounterMode(display=False) as counter:
            logits = model(src, mask, tgt)
            F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten()).backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    return count


# --------------------------------------------------------------------------------------------
# Studies


def write_study(
    ctx: Context,
    name: str,
    *,
    fixed: dict[str, Any],
    space: dict[str, Any],
    enqueue: list[dict[str, Any]],
    data: dict[str, Any] | None = None,
    subset: float = 1.0,
    trials: int = 1,
    metric: str = "val_bleu",
    task: str = "sign2text",
) -> Path:
    """``<work>/studies/<name>/study.yaml`` on the shared data, tracking off; returns its path.

    The study's ``.cache`` is the shared one, so the packed features and the tokenizer are
    built once for the whole check. MLflow is off: it does not fit the wheel budget (README).
    A plug-in ``task`` (``module:function``) gets no ``data`` section.
    """
    folder = Path(ctx.work) / "studies" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump({"params": space}, sort_keys=False), encoding="utf-8")
    cache = folder / ".cache"
    if not cache.exists():
        cache.symlink_to(Path(ctx.cache).resolve(), target_is_directory=True)
    from benchmarks.common import synth_params

    spec: dict[str, Any] = {"name": name, "task": task, "search_space": "space.yaml"}
    if task == "sign2text":
        spec["data"] = {"root": str(Path(ctx.data).resolve()),
                        "feature_dim": synth_params(Path(ctx.data))["feature_dim"], **(data or {})}
    spec.update({
        "fixed": fixed,
        "objective": {"metric": metric, "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"trials": trials, "subset": subset},
        "tracking": {"enabled": False},
        "enqueue": enqueue,
    })
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def child_env(dry_run: bool, **extra: str) -> dict[str, str]:
    """The environment of ``study run`` and the parts: this tree's code first, offline, no MLflow URI;
    no GPU at all in the dry run."""
    from benchmarks.common import ROOT
    from benchmarks.startup import _env

    env = _env()
    paths = [str(ROOT / "src"), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="160")
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def study_cmd(study_yaml: Path, *args: str) -> list[str]:
    """The real ``study`` command, run with this interpreter (the node may have no console script)."""
    import sys

    return [sys.executable, "-m", "signtune.cli", *args, "--study", str(study_yaml)]


def trial_rows(study_yaml: Path, study_name: str) -> list[dict[str, Any]]:
    """Every trial of a finished study: number, state, value, and the user attrs the checks read."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{study_yaml.parent / 'study.db'}")
    keep = ("reason", "retry_of", "oom_retry", "oom_retry_config", "injected_fault", "device", "gpu", "epochs_run",
            "n_params", "wall_time_s", "error")
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = {k: t.user_attrs[k] for k in keep if k in t.user_attrs}
        if "error" in attrs:
            attrs["error"] = str(attrs["error"])[:400]
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, **attrs})
    return rows


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
