"""Does `study refine` pay? Explore, refine, and the same wall budget of new trials with and without it.

    python -m benchmarks.refine_gain --budget 600          # about 20 minutes on 2 cores

The README's path on the demo, through the real CLI:

1. ``explore``: ``study run --trials 20 --subset 0.3 --epochs 4 --workers 2`` on a copy of the
   demo study (MLflow off, its data shared with the demo).
2. ``study refine --from explore --top-k 3 --subset 1.0``: the child ``explore-refine``.
3. The child's queue (the parent's top 3, now at subset 1.0) is trained first, on its own.
4. Two studies then get the same wall-clock budget of NEW trials, side by side, one worker and
   one torch thread each, at the same fidelity (subset 1.0, 4 epochs):

   - ``refined``: the child as ``study refine`` wrote it (narrowed space), after its queue;
   - ``unrefined``: the parent's own search space and strategy at subset 1.0 (what re-running
     the explore script on the full data gives), with nothing queued.

   Each arm's best is then the better of the parent's top 3 re-scored at subset 1.0 (common to
   both) and its own new trials. Trials that end after the budget do not count. Run it on an
   otherwise idle machine: the arms share its cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, demo_data, loadavg, synth_params

BEGIN = "<!-- refine-gain:begin (python -m benchmarks.refine_gain writes this section) -->"
END = "<!-- refine-gain:end -->"


def _study(*args: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "signtune", *args]
    print("$ study " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"refine_gain: `study {' '.join(args)}` exited {proc.returncode}")
    return proc


def write_explore(work: Path, data: Path) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "studies" / "demo" / "study.yaml").read_text(encoding="utf-8"))
    raw["name"] = "explore"
    raw["search_space"] = str(ROOT / "search_spaces" / "sign2text.yaml")
    raw["data"]["root"] = str(data)
    raw["data"]["synthetic"] = {k: v for k, v in synth_params(data).items() if k != "feature_dim"}
    raw["fixed"].update({"run.threads": 1, "run.device": "cpu"})
    raw["storage"] = f"sqlite:///{work / 'studies.db'}"
    raw["tracking"] = {"enabled": False}
    folder = work / "explore"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text("# python -m benchmarks.refine_gain\n" + yaml.safe_dump(raw, sort_keys=False))
    return folder


def write_unrefined(work: Path, explore: Path) -> Path:
    """The parent's spec (its space and strategy), as a new study with nothing queued."""
    import yaml

    raw = yaml.safe_load((explore / "study.yaml").read_text(encoding="utf-8"))
    raw["name"] = "unrefined"
    raw["enqueue"] = []
    folder = work / "unrefined"
    folder.mkdir()
    (folder / "study.yaml").write_text("# python -m benchmarks.refine_gain\n" + yaml.safe_dump(raw, sort_keys=False))
    return folder


def trials_of(storage: str, name: str) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    out = []
    for t in study.trials:
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "start": t.datetime_start.timestamp() if t.datetime_start else None,
                "end": t.datetime_complete.timestamp() if t.datetime_complete else None,
                "enqueued": bool(t.user_attrs.get("enqueued")) or "fixed_params" in t.system_attrs,
                "params": t.params,
            }
        )
    return out


def best_within(trials: list[dict[str, Any]], t0: float, budget: float) -> tuple[float | None, int]:
    done = [t for t in trials if t["state"] == "COMPLETE" and t["end"] is not None and t["end"] - t0 <= budget]
    return (max(t["value"] for t in done) if done else None), len(done)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.refine_gain", description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=600.0, help="wall seconds of new trials per arm")
    ap.add_argument("--explore-trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--data", default=str(ROOT / "studies" / "demo" / "data"))
    ap.add_argument("--into", default=None, help="splice the section into this RESULTS.md")
    args = ap.parse_args(argv)
    data = demo_data(Path(args.data).resolve())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="signtune-refine-gain-") as tmp:
        work = Path(tmp)
        storage = f"sqlite:///{work / 'studies.db'}"
        explore = write_explore(work, data)
        t = time.perf_counter()
        _study(
            "run",
            "--study",
            str(explore),
            "--trials",
            str(args.explore_trials),
            "--subset",
            "0.3",
            "--epochs",
            str(args.epochs),
            "--workers",
            "2",
            "--quiet",
        )
        explore_s = time.perf_counter() - t
        proc = _study("refine", "--from", str(explore), "--top-k", "3", "--subset", "1.0")
        child = work / "explore-refine"
        t = time.perf_counter()
        _study("run", "--study", str(child), "--trials", "3", "--workers", "2", "--quiet")  # the queue
        queue_s = time.perf_counter() - t
        unrefined = write_unrefined(work, explore)
        load = loadavg()
        arms: dict[str, subprocess.Popen[str]] = {}
        t0 = time.time()
        for name, folder in (("refined", child), ("unrefined", unrefined)):
            cmd = [
                sys.executable,
                "-m",
                "signtune",
                "run",
                "--study",
                str(folder),
                "--trials",
                "1000",
                "--subset",
                "1.0",
                "--epochs",
                str(args.epochs),
                "--timeout",
                str(args.budget),
                "--quiet",
            ]
            arms[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, p in arms.items():
            out, _ = p.communicate()
            if p.returncode != 0:
                sys.stderr.write(out[-3000:])
                raise SystemExit(f"refine_gain: the {name} arm exited {p.returncode}")
        parent = trials_of(storage, "explore")
        parent_best = max(t["value"] for t in parent if t["state"] == "COMPLETE")
        queued = [
            t["value"] for t in trials_of(storage, "explore-refine") if t["enqueued"] and t["state"] == "COMPLETE"
        ]
        rows = {}
        for name, study_name in (("refined", "explore-refine"), ("unrefined", "unrefined")):
            new = [t for t in trials_of(storage, study_name) if not t["enqueued"]]
            best_new, n_new = best_within(new, t0, args.budget)
            rows[name] = {
                "best": max(v for v in [*queued, best_new] if v is not None),
                "best_new": best_new,
                "new_complete": n_new,
                "pruned": sum(t["state"] == "PRUNED" and t["end"] and t["end"] - t0 <= args.budget for t in new),
                "new_values": sorted(
                    (t["value"] for t in new if t["state"] == "COMPLETE" and t["end"] - t0 <= args.budget), reverse=True
                ),
            }
        child_yaml = (child / "study.yaml").read_text(encoding="utf-8")
        space_yaml = (child / "search_space.yaml").read_text(encoding="utf-8")
    result = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "budget_s": args.budget,
        "epochs": args.epochs,
        "explore_trials": args.explore_trials,
        "explore_s": round(explore_s, 1),
        "parent_best_subset_0_3": parent_best,
        "queue_values_subset_1_0": queued,
        "queue_s": round(queue_s, 1),
        "arms": rows,
        "load_at_start": load,
        "wall_s": round(time.perf_counter() - started, 1),
        "refine_output": proc.stdout[-1500:],
        "child_search_space": space_yaml,
        "child_spec_head": child_yaml[:1500],
    }
    out = ROOT / "benchmarks" / "refine_gain.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    md = render(result)
    print(md)
    if args.into:
        from benchmarks.gpu.render import splice

        target = Path(args.into)
        target.write_text(splice(target.read_text(encoding="utf-8"), md, BEGIN, END), encoding="utf-8")
    return 0


def render(r: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    a, b = r["arms"]["refined"], r["arms"]["unrefined"]
    queue = ", ".join(f(v) for v in r["queue_values_subset_1_0"])
    lines = [
        "## 10. Explore, refine: `study refine` against the unrefined space",
        "",
        f"Command: `python -m benchmarks.refine_gain --budget {r['budget_s']:.0f}` "
        f"({r['wall_s'] / 60:.0f} min, **CPU**, "
        f"load at the arms' start {r['load_at_start']}). Explore: {r['explore_trials']} trials, subset 0.3, "
        f"{r['epochs']} epochs, 2 workers ({r['explore_s']:.0f} s); best val BLEU {r['parent_best_subset_0_3']:.1f} "
        f"at subset 0.3. `study refine --top-k 3 --subset 1.0`; the child's queue (the parent's top 3) at subset 1.0 "
        f"scored {queue} ({r['queue_s']:.0f} s). Then each arm got {r['budget_s']:.0f} wall s of new trials at "
        f"subset 1.0, {r['epochs']} epochs, side by side, one worker and one thread each.",
        "",
        "| arm | best new trial | new trials complete (pruned) | new trials' values | best, with the parent's top 3 |",
        "|---|---|---|---|---|",
    ]
    for name, arm in (("refined (child's space)", a), ("unrefined (parent's space)", b)):
        values = ", ".join(f(v) for v in arm["new_values"])
        lines.append(
            f"| {name} | {f(arm['best_new'])} | {arm['new_complete']} ({arm['pruned']}) | {values} | {f(arm['best'])} |"
        )
    lines += [
        "",
        "The child's search space as `study refine` wrote it:",
        "",
        "```yaml",
        r["child_search_space"].strip(),
        "```",
    ]
    return "\n".join(lines) + "\n"


def embedded_section() -> str:
    """The section between its markers, from ``refine_gain.json``, as the suite's RESULTS.md keeps it."""
    path = ROOT / "benchmarks" / "refine_gain.json"
    text = (
        render(json.loads(path.read_text(encoding="utf-8")))
        if path.is_file()
        else "## 10. Explore, refine\n\nPending.\n"
    )
    return f"{BEGIN}\n\n{text.strip()}\n\n{END}"


if __name__ == "__main__":
    sys.exit(main())
