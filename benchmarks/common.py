"""What every benchmark shares: the demo data, the machine's description, interleaved timing.

Other people's jobs may share the machine, so A and B are never timed back to back in blocks:
``interleave`` runs A, B, A, B... and the figures are medians over the repeats. Each repeat
records wall time and the process's CPU time (both threads included).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The demo study's data (studies/demo/study.yaml: data.synthetic), so a copy of the demo study
# pointed at it finds it complete and generates nothing.
DEMO_SYNTH = {"seed": 0, "n_train": 3000, "n_val": 300, "n_test": 300, "feature_dim": 64}


def demo_data(root: Path | None = None, **sizes: int) -> Path:
    """The demo's synthetic data in ``root`` (a temp folder removed at exit if None); generated if missing.

    An existing synthetic dataset in ``root`` is used as it is, whatever its size; ``sizes``
    (``n_train``, ``n_val``, ``n_test``) override the demo's for a new one (the smoke test's).

    Returns:
        The data folder (manifests + ``features/``).
    """
    from signtune.data.synth import generate

    if root is None:
        import atexit
        import shutil

        tmp = tempfile.mkdtemp(prefix="signtune-bench-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        root = Path(tmp) / "data"
    if not (root / "synth.json").is_file():
        generate(root, **{**DEMO_SYNTH, **sizes})
    return root


def synth_params(root: Path) -> dict[str, Any]:
    """The generator's parameters of the dataset in ``root`` (its ``synth.json``)."""
    import json

    meta = json.loads((root / "synth.json").read_text(encoding="utf-8"))
    return {k: meta[k] for k in DEMO_SYNTH}


def n_train(root: Path) -> int:
    return int(synth_params(root)["n_train"])


def load_demo(root: Path, *, subset: float, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(TrainConfig, TaskData)`` of the demo data at ``root`` with ``subset`` of the train split.

    The config is the trainer's defaults plus the demo study's ``fixed`` values, on the CPU,
    with ``data.feature_dim`` the dataset's own (``synth.json``), plus ``overrides`` (dotted keys).
    """
    from signtune.config import TrainConfig, apply_overrides
    from signtune.data.dataset import load_task_data

    values = {"data.root": str(root), "data.subset": subset, "eval.max_len": 32, "run.device": "cpu"}
    if (root / "synth.json").is_file():
        values["data.feature_dim"] = synth_params(root)["feature_dim"]
    cfg = apply_overrides(TrainConfig(), {**values, **(overrides or {})})
    data = load_task_data(cfg.data, root.parent, cache_dir=root.parent / ".cache")
    return cfg, data


@dataclass
class Timing:
    """One variant's repeats: wall and CPU seconds, and whatever each run returned."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_s)


def interleave(variants: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Run the variants in turn (A, B, A, B...), ``warmup`` untimed rounds first.

    A variant may return ``{"exclude_s": x, ...}`` to take ``x`` seconds (e.g. validation that
    is not part of what is measured) out of its wall time.
    """
    out = {name: Timing() for name in variants}
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            w, c = time.perf_counter(), time.process_time()
            result = fn()
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            if isinstance(result, dict):
                wall -= float(result.get("exclude_s", 0.0))
                cpu -= float(result.get("exclude_cpu_s", 0.0))
            out[name].wall_s.append(wall)
            out[name].cpu_s.append(cpu)
            out[name].results.append(result)
    return out


@dataclass
class Finished:
    """What ``run_group`` saw of a command."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool


def run_group(
    cmd: list[str],
    *,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    grace_s: float = 10.0,
) -> Finished:
    """Run ``cmd`` in a process group of its own, so a time limit stops its children too.

    Past ``timeout_s`` the whole group gets SIGINT, as Ctrl-C in a terminal would send it
    (``study run`` then fails its running trials with reason ``interrupted`` and exits 130),
    and SIGKILL ``grace_s`` later if anything is still running. ``subprocess.run``'s own
    timeout would kill the parent alone and leave its worker processes training. When this
    process is itself interrupted while it waits (Ctrl-C, or SIGTERM turned into
    KeyboardInterrupt), the group is stopped the same way before the exception goes on, so
    nested time limits (the GPU check's parts, their ``study run``s) never leave orphans.
    """
    import signal

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            signal_group(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=grace_s)
            except subprocess.TimeoutExpired:
                signal_group(signal.SIGKILL)
                out, err = proc.communicate()
    except BaseException:  # this process is being stopped: its children go with it
        signal_group(signal.SIGINT)
        with contextlib.suppress(BaseException):
            proc.wait(timeout=min(grace_s, 5.0))
        signal_group(signal.SIGKILL)
        raise
    return Finished(proc.returncode, out, err, time.perf_counter() - t0, timed_out)


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def git_commit() -> str:
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

        dirty = " (working tree has uncommitted changes)" if git("status", "--porcelain") else ""
        return git("rev-parse", "--short", "HEAD") + dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, str]:
    """The facts RESULTS.md starts with."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "git commit": git_commit(),
        "nproc": str(os.cpu_count()),
        "CPU": _cpu_model(),
        "RAM": _ram_gib(),
        "GPU": gpu,
        "label": "GPU" if torch.cuda.is_available() else "CPU",
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "load average (1/5/15 min) at start": loadavg(),
    }


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def command(module: str, argv: list[str] | None) -> str:
    """The command line that reproduces a benchmark run."""
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m benchmarks." + module, *(shlex.quote(a) for a in args)])


def profile_call(fn: Callable[[], Any], *, rows: int = 12) -> tuple[Any, str]:
    """cProfile ``fn()``; return the ``pstats.Stats`` and its top ``rows`` frames by own time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(rows)
    text = buf.getvalue()
    return stats, (text[text.find("   ncalls") :].rstrip() if "   ncalls" in text else text.strip())


def stat_seconds(stats: Any, path_part: str, func: str, *, cumulative: bool = True) -> float:
    """The largest cumulative (or own) seconds of a profiled function matched by file and name.

    ``func`` is matched as a substring: C functions are named like ``<method 'item' of ...>``.
    """
    best = 0.0
    for (path, _line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():
        if path_part in path and func in name:
            best = max(best, ct if cumulative else tt)
    return best


def random_configs(space: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` param sets of ``space`` (a ``SearchSpace``), drawn by Optuna's RandomSampler with
    ``seed`` through the space's ``suggest``: the same sequence for the same seed."""
    import optuna

    from signtune.space import suggest

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, space))
        study.tell(trial, 0.0)
    return out
