"""Scaling on one machine: trials per hour of ``study run --workers 1`` against ``--workers 2``.

    python -m benchmarks.scaling --trials 12 --epochs 4 --subset 0.3

The demo study (a temporary copy, demo data linked in) runs the same ``--trials`` configs in
every variant: they are drawn once from the demo search space by a seeded random sampler and
enqueued, and the pruner is off, so every variant trains exactly the same work and the trial
counts per hour compare like for like. (Run as a tuning study, the variants would not: TPE
proposes different configs when two workers ask in parallel, and config size dominates a
trial's time.) The variants run one after another, interleaved over ``--repeats``:

- ``1 worker x 2 threads``: ``study run --workers 1``, the default (torch uses both cores);
- ``2 workers x 1 thread``: ``study run --workers 2`` (each worker gets half the cores);
- ``1 worker x 1 thread``: ``--workers 1`` with ``run.threads: 1``, the single-thread
  baseline that says how well one worker already uses two cores (``--no-baseline`` skips it).

Trials per hour are counted over the trial window (first trial's start to last trial's end,
from storage) and over the process's whole wall time; CPU seconds are the children's
``getrusage`` (all cores). MLflow tracking is on, as in the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.6
VARIANTS = {
    "1 worker x 2 threads": {"workers": 1, "threads": 0},
    "2 workers x 1 thread": {"workers": 2, "threads": 0},
    "1 worker x 1 thread": {"workers": 1, "threads": 1},
}
BASELINE = "1 worker x 1 thread"


def draw_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` param sets of the demo search space, drawn by a seeded random sampler."""
    from benchmarks.common import ROOT, random_configs
    from signtune.space import parse

    return random_configs(parse(ROOT / "search_spaces" / "sign2text.yaml"), n, seed)


def write_spec(study_yaml: Path, configs: list[dict[str, Any]], *, epochs: int, threads: int) -> None:
    """Turn the project's demo spec into the benchmark's: these configs queued, no pruner."""
    import yaml

    spec = yaml.safe_load(study_yaml.read_text(encoding="utf-8"))
    spec["enqueue"] = configs
    spec["pruner"] = {"name": "none"}
    spec["budget"]["trials"] = len(configs)
    spec["fixed"]["run.epochs"] = epochs
    if threads:
        spec["fixed"]["run.threads"] = threads
    study_yaml.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def run_variant(name: str, data: Path, configs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """One ``study run`` of the variant in a fresh project; its timings from the process and storage."""
    v = VARIANTS[name]
    r = run_enqueued(data, configs, ["--workers", str(v["workers"])], epochs=args.epochs, subset=args.subset,
                     threads=v["threads"])
    if r["returncode"] != 0:
        raise RuntimeError(f"{name}: `study run` exited {r['returncode']}:\n{r['stderr_tail']}")
    return {"variant": name, "workers": v["workers"], **{k: r[k] for k in r if k not in ("returncode", "stderr_tail")}}


def run_enqueued(
    data: Path,
    configs: list[dict[str, Any]],
    cli_args: list[str],
    *,
    epochs: int,
    subset: float,
    threads: int = 0,
    cache: Path | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``study run --subset S <cli_args>`` on a fresh copy of the demo study with ``configs`` enqueued.

    The GPU check calls it with ``--gpus all --workers-per-gpu k`` and ``--no-tracking``.
    ``cache``: a ``.cache`` folder to share (the packed features and the tokenizer), so each
    run does not pack the data again. Past ``timeout_s`` the run is stopped like Ctrl-C
    (``benchmarks.common.run_group``) and the trials it finished still count.

    Returns:
        Wall and trial-window seconds, trials finished and failed, trials per hour, the children's
        CPU seconds, ``returncode``, ``timed_out``, ``running_left`` (trials still RUNNING in
        storage afterwards) and the last lines of stderr.
    """
    import optuna

    from benchmarks.common import loadavg, run_group
    from benchmarks.startup import _env, make_project

    with tempfile.TemporaryDirectory(prefix="signtune-scaling-") as tmp:
        study_yaml = make_project(data, Path(tmp))
        write_spec(study_yaml, configs, epochs=epochs, threads=threads)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            (study_yaml.parent / ".cache").symlink_to(cache.resolve(), target_is_directory=True)
        cmd = [sys.executable, "-m", "signtune.cli", "run", "--study", str(study_yaml), "--subset", str(subset),
               *cli_args]
        load_before = loadavg()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        done_proc = run_group(cmd, timeout_s=timeout_s, env={**_env(), **(env or {})}, cwd=tmp)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        study = optuna.load_study(study_name="demo", storage=f"sqlite:///{study_yaml.parent / 'study.db'}")
        trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    window = (max(ends) - min(starts)).total_seconds() if done else 0.0
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done
                 if t.datetime_complete and t.datetime_start]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    wall = done_proc.wall_s
    return {
        "returncode": done_proc.returncode,
        "timed_out": done_proc.timed_out,
        "finished": len(done),
        "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
        "running_left": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
        "started_at": started,
        "window_start": min(starts).timestamp() if done else None,
        "window_end": max(ends).timestamp() if done else None,
        "wall_s": wall,
        "window_s": window,
        "cpu_s": cpu,
        "cores_busy": cpu / wall,
        "trials_per_hour_window": 3600 * len(done) / window if window > 0 else 0.0,
        "trials_per_hour_wall": 3600 * len(done) / wall,
        "mean_trial_s": statistics.mean(durations) if durations else 0.0,
        "params": sorted(json.dumps(t.params, sort_keys=True) for t in done),
        "load_before": load_before,
        "load_after": loadavg(),
        "stderr_tail": done_proc.stderr[-3000:],
    }


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per variant and the ratios against ``--workers 1``."""
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in
               ("wall_s", "window_s", "cpu_s", "cores_busy", "trials_per_hour_window", "trials_per_hour_wall",
                "mean_trial_s")}
        for name, rs in runs.items()
    }
    one, two = med["1 worker x 2 threads"], med["2 workers x 1 thread"]
    out: dict[str, Any] = {
        "medians": med,
        "ratio_window": two["trials_per_hour_window"] / one["trials_per_hour_window"],
        "ratio_wall": two["trials_per_hour_wall"] / one["trials_per_hour_wall"],
    }
    if BASELINE in med:
        base = med[BASELINE]
        out["two_threads_speedup"] = one["trials_per_hour_window"] / base["trials_per_hour_window"]
        out["two_workers_speedup"] = two["trials_per_hour_window"] / base["trials_per_hour_window"]
    out["met"] = out["ratio_window"] >= TARGET_RATIO
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import datetime as dt

    from benchmarks.common import command, demo_data, git_commit, loadavg

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12, help="configs per variant (the same ones in every variant)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--subset", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all variants, interleaved")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random sampler that draws the configs")
    ap.add_argument("--no-baseline", action="store_true", help=f"skip the {BASELINE!r} variant")
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (generated when missing)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)

    data = demo_data(args.data)
    configs = draw_configs(args.trials, args.seed)
    names = [n for n in VARIANTS if not (args.no_baseline and n == BASELINE)]
    load_before = loadavg()
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for name in names:
            r = run_variant(name, data, configs, args)
            runs[name].append(r)
            print(f"[scaling] repeat {rep + 1}/{args.repeats} {name}: {r['finished']} trials, "
                  f"window {r['window_s']:.0f} s, {r['trials_per_hour_window']:.0f} trials/h, "
                  f"{r['cores_busy']:.2f} cores busy", file=sys.stderr, flush=True)
    same = len({tuple(r["params"]) for rs in runs.values() for r in rs}) == 1
    for rs in runs.values():
        for r in rs:
            del r["params"]
    result = {
        "command": command("scaling", argv),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "trials": args.trials,
        "epochs": args.epochs,
        "subset": args.subset,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "target": TARGET_RATIO,
        "same_configs": same,
        "runs": runs,
        "load_before": load_before,
        "load_after": loadavg(),
        **summarize(runs),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("ratio_window", "ratio_wall", "met", "same_configs")}, indent=2))
    return result


if __name__ == "__main__":
    main()
