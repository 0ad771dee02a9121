"""The demo's learning-curve table: real training curves of many configs, for the replay benchmark.

    python -m benchmarks.lc_table --configs 200 --workers 2            # build or extend it (resumable)
    python -m benchmarks.lc_table --summary                            # what the table holds

Each config of the demo's search space (``search_spaces/sign2text.yaml``) is trained with the
real trainer (``signtune.train.loop.fit``) on the demo's data at the demo's fidelity: subset 0.3
(900 training clips), 8 epochs, ``eval.max_len`` 32, seed 0, one torch thread, CPU. After every
epoch the table records val BLEU-4 (sacrebleu corpus BLEU on the whole 300-clip val split,
greedy), the teacher-forced val loss (token NLL, no label smoothing), the train loss, and the
epoch's wall and CPU seconds (training + validation).

The configs: ``enqueued`` (the demo's enqueued config), ``recipe`` (SSVP-SLT's published T5
recipe mapped onto the space: lr 5e-4, label smoothing 0.2, dropout 0.3, 2 of 8 epochs of
warm-up), then ``r000``, ``r001``, ... drawn uniformly (log-uniformly where the space says
``log``) by Optuna's ``RandomSampler`` with seed 0, so ``--configs 300`` later extends the same
sequence. Configs whose training diverges keep their epochs up to the divergence.

One JSON object per line is appended as each config finishes, so Ctrl-C loses only the configs
in progress and the same command goes on. Run it on an otherwise idle machine: epoch CPU
seconds are what the replay's clock uses (one thread, so other jobs barely move them); wall
seconds are kept for reference and include any pause of the builder (SIGSTOP).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

TABLE = ROOT / "benchmarks" / "data" / "lc_demo.jsonl"
SUBSET = 0.3
EPOCHS = 8
# SSVP-SLT's T5 fine-tuning recipe (lr 5e-4, label smoothing 0.2, dropout 0.3, 2 warm-up
# epochs), mapped onto the demo's space; the keys it does not set keep the enqueued values.
RECIPE = {
    "optim.lr": 5.0e-4,
    "model.dropout": 0.3,
    "loss.label_smoothing": 0.2,
    "schedule.warmup_ratio": 2 / EPOCHS,
}


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def demo_spec(data: Path) -> Any:
    """The demo spec at the table's fidelity, reading ``data``, one thread, CPU."""
    from benchmarks.common import synth_params
    from signtune.spec import load_spec

    return load_spec(
        ROOT / "studies" / "demo" / "study.yaml",
        overrides={
            "data.root": str(data),
            "data.synthetic": {k: v for k, v in synth_params(data).items() if k != "feature_dim"},
            "fixed.run.epochs": EPOCHS,
            "fixed.run.threads": 1,
            "fixed.run.device": "cpu",
            "budget.subset": SUBSET,
        },
    )


def configs(n_random: int) -> list[tuple[str, dict[str, Any]]]:
    """The table's configs in order: enqueued, recipe, then ``n_random`` seeded random draws."""
    from benchmarks.common import random_configs
    from signtune.space import parse

    enqueued = demo_enqueued()
    out: list[tuple[str, dict[str, Any]]] = [("enqueued", enqueued), ("recipe", {**enqueued, **RECIPE})]
    space = parse(ROOT / "search_spaces" / "sign2text.yaml")
    out += [(f"r{i:03d}", params) for i, params in enumerate(random_configs(space, n_random, seed=0))]
    return out


def demo_enqueued() -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load((ROOT / "studies" / "demo" / "study.yaml").read_text(encoding="utf-8"))
    return dict(raw["enqueue"][0])


def done_ids(table: Path) -> set[str]:
    if not table.is_file():
        return set()
    ids = set()
    for line in table.read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids.add(json.loads(line)["id"])
    return ids


def read_table(table: Path = TABLE) -> list[dict[str, Any]]:
    """The table's rows (one per config), in the order they were written."""
    return [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines() if line.strip()]


_SPEC: Any = None


def _init_worker(data: str) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    global _SPEC
    from signtune.tasks import Sign2TextTask

    _SPEC = demo_spec(Path(data))
    Sign2TextTask().prepare(_SPEC)  # tokenizer and feature caches, once


def train_one(item: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """Train one config at the table's fidelity; its row."""
    import torch

    from signtune.data.dataset import load_task_data
    from signtune.errors import Diverged
    from signtune.tasks import Sign2TextTask
    from signtune.train.loop import fit

    cid, params = item
    spec = _SPEC
    cfg = Sign2TextTask().make_config(spec, params)
    data = load_task_data(cfg.data, spec.dir, cache_dir=spec.dir / ".cache")
    epochs: list[dict[str, float]] = []
    mark = [time.perf_counter(), time.process_time()]

    def report(epoch: int, m: dict[str, float]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        epochs.append(
            {
                "val_bleu": _round(m["val_bleu"]),
                "val_loss": _round(m["val_loss"]),
                "train_loss": _round(m["train_loss"]),
                "wall_s": _round(wall - mark[0], 3),
                "cpu_s": _round(cpu - mark[1], 3),
            }
        )
        mark[:] = [wall, cpu]

    status, n_params = "complete", 0
    try:
        result = fit(cfg, data, report=report, device=torch.device("cpu"), base_dir=spec.dir)
        n_params = result.n_params
    except Diverged:
        status = "diverged"
    return {"id": cid, "params": params, "status": status, "n_params": n_params, "epochs": epochs}


def build(args: argparse.Namespace) -> int:
    from benchmarks.common import demo_data

    table = Path(args.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    data = demo_data(Path(args.data).resolve())
    todo = [c for c in configs(args.configs) if c[0] not in done_ids(table)]
    total = args.configs + 2
    print(f"lc_table: {total - len(todo)}/{total} configs in {table}; training {len(todo)} with {args.workers} workers")
    if not todo:
        return 0
    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(args.workers, initializer=_init_worker, initargs=(str(data),), maxtasksperchild=20)
    done = 0
    try:
        with table.open("a", encoding="utf-8") as out:
            for row in pool.imap_unordered(train_one, todo, chunksize=1):
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
                out.flush()
                os.fsync(out.fileno())
                done += 1
                last = row["epochs"][-1] if row["epochs"] else {}
                rate = (time.perf_counter() - started) / done
                print(
                    f"[{time.strftime('%H:%M:%S')}] {row['id']} {row['status']} "
                    f"bleu {last.get('val_bleu', float('nan')):.1f} val_loss {last.get('val_loss', float('nan')):.3f}  "
                    f"{done}/{len(todo)}, ~{rate * (len(todo) - done) / 60:.0f} min left",
                    flush=True,
                )
        pool.close()
    except KeyboardInterrupt:
        pool.terminate()
        print(f"\nlc_table: stopped; {done} configs written. The same command goes on.", file=sys.stderr)
        return 130
    finally:
        pool.join()
    return 0


def summary(table: Path) -> int:
    import statistics

    rows = read_table(table)
    final = [r["epochs"][-1]["val_bleu"] for r in rows if r["status"] == "complete" and len(r["epochs"]) == EPOCHS]
    cpu = [sum(e["cpu_s"] for e in r["epochs"]) for r in rows if r["epochs"]]
    print(
        f"{len(rows)} configs, {len(final)} complete at {EPOCHS} epochs, "
        f"{sum(r['status'] == 'diverged' for r in rows)} diverged"
    )
    if final:
        q = statistics.quantiles(final, n=20)
        print(f"final val BLEU: median {statistics.median(final):.1f}, p95 {q[-1]:.1f}, max {max(final):.1f}")
        print(f"CPU s per config: median {statistics.median(cpu):.0f}, total {sum(cpu) / 3600:.1f} h")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lc_table", description=__doc__.split("\n")[0])
    p.add_argument("--configs", type=int, default=200, help="random configs (beside enqueued and recipe)")
    p.add_argument("--workers", type=int, default=2, help="configs trained at once, one thread each")
    p.add_argument("--table", default=str(TABLE))
    p.add_argument(
        "--data", default=str(ROOT / "studies" / "demo" / "data"), help="the demo's data (generated if missing)"
    )
    p.add_argument("--summary", action="store_true", help="print what the table holds")
    args = p.parse_args(argv)
    if args.summary:
        return summary(Path(args.table))
    return build(args)


if __name__ == "__main__":
    raise SystemExit(main())
