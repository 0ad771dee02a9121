"""The GPU check in one command: ``python -m benchmarks.gpu`` (``bash benchmarks/gpu/check.sh`` first
installs the wheels an air-gapped node lacks, then runs this).

    python -m benchmarks.gpu [--out DIR] [--budget-s 440]     # on a GPU: every part, at most 8 minutes
    python -m benchmarks.gpu --dry-run --out DIR               # on the CPU, tiny sizes (the test suite's)

It generates synthetic How2Sign-style data (D = 768, 3,000 training clips) into a scratch folder,
packs it once, then runs the parts, each in a process of its own with a share of the time budget
(stopped like Ctrl-C past it, so the whole check always finishes): c (a real CUDA OOM), e (the
T5 family), d (bf16 against fp32), a (trainer throughput and MFU), b (1, 2 and 4 workers per GPU);
see ``benchmarks/gpu/parts.py``. MLflow tracking is off: its wheels do not fit the budget.

It writes at most 8 small files into the results folder (``--out``, else ``$OUT``, else
``benchmarks/gpu/out``): ``summary.json``, one JSON per part, ``gpu_section.md`` (the section for
benchmarks/RESULTS.md, labelled with the GPU, driver, torch version and date) and ``check.log``.
Exit code: 0 when every part ran to the end and every check passed (targets met or not), 1
otherwise, 2 when there is no GPU and ``--dry-run`` was not given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu.context import ALL_FILES, DRY, GPU, LOG_FILE, PART_FILES, SECTION_FILE, SUMMARY_FILE, Context

ORDER = ("oom", "t5", "bf16", "trainer", "workers")  # the quick correctness checks first
RENDER_RESERVE_S = 5.0  # kept back from the parts for the summary and the clean-up
# A part past its share gets SIGINT, then SIGKILL this much later: longer than the part's own
# grace for its `study run` (run_group's 10 s), so the part stops its children first.
PART_GRACE_S = 15.0
LOG_TAIL_CHARS = 12_000  # of each part's output, in check.log
TRACKING = ("MLflow tracking is off (`--no-tracking`, `tracking: {enabled: false}`): mlflow, mlflow-skinny and "
            "mlflow-tracing alone are 17.3 MiB of wheels and they require pyarrow, pandas, scipy, scikit-learn and "
            "matplotlib, far past the 40 MiB an air-gapped node is brought.")


def default_out() -> Path:
    """``$OUT`` when set (a GPU session brings its files back from there), else ``benchmarks/gpu/out``."""
    env = os.environ.get("OUT")
    return Path(env) if env else Path(__file__).resolve().parent / "out"


def part_budgets(remaining: float, names: list[str], nominal: dict[str, float]) -> dict[str, float]:
    """Split ``remaining`` seconds over ``names`` in proportion to their nominal budgets."""
    total = sum(nominal[n] for n in names)
    return {n: remaining * nominal[n] / total for n in names}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


class Log:
    """check.log: what each step printed, cut to its last ``LOG_TAIL_CHARS`` characters."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("", encoding="utf-8")

    def write(self, heading: str, text: str = "") -> None:
        body = text[-LOG_TAIL_CHARS:]
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"==== {time.strftime('%H:%M:%S')} {heading}\n{body}{'' if body.endswith(chr(10)) else chr(10)}")
        print(f"[gpu-check] {heading}", file=sys.stderr, flush=True)


def prepare_data(work: Path, dry_run: bool, log: Log) -> dict[str, Any]:
    """Generate the data and build the shared pack and tokenizer (so no part pays for them)."""
    from benchmarks.common import demo_data, load_demo

    sizes = (DRY if dry_run else GPU).synth
    t0 = time.perf_counter()
    data = demo_data(work / "data", **sizes)
    generated = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_demo(data, subset=1.0)  # packs every split into work/.cache and trains the tokenizer there
    prepared = time.perf_counter() - t0
    log.write(f"data: {sizes} generated in {generated:.1f} s, packed in {prepared:.1f} s")
    return {**sizes, "generate_s": generated, "prepare_s": prepared}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else benchmarks/gpu/out)")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes: checks the script, not a GPU")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"whole-check budget (default {GPU.total_budget_s:g} s; dry run {DRY.total_budget_s:g} s)")
    ap.add_argument("--parts", default=",".join(ORDER), help=f"parts to run, in this order (default {','.join(ORDER)})")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (data, studies) afterwards")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    args = ap.parse_args(argv)
    started = time.time()
    sizes = DRY if args.dry_run else GPU
    budget = args.budget_s if args.budget_s is not None else sizes.total_budget_s
    deadline = started + budget
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PART_FILES))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from {list(ORDER)}")
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the dry run never touches a GPU
    # check.sh's hard limit sends SIGTERM: stop like Ctrl-C, so the running part and its `study run` stop too
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    import torch

    from benchmarks.common import run_group
    from benchmarks.gpu.context import child_env, device_facts, package_versions, peak_tflops
    from benchmarks.gpu.render import render

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device is visible (torch.cuda.is_available() is False). Run this on a GPU node, or "
              "pass --dry-run for the CPU check of the script itself.", file=sys.stderr)
        return 2
    out = (args.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ALL_FILES:  # a results folder holds one run's files, never a mix
        (out / name).unlink(missing_ok=True)
    work = (args.work or Path(tempfile.mkdtemp(prefix="signtune-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if work == out or out in work.parents:
        ap.error("--work must not be inside the results folder: only the results come back from $OUT")
    log = Log(out / LOG_FILE)
    facts = device_facts(args.dry_run)
    summary: dict[str, Any] = {
        "dry_run": args.dry_run,
        "label": facts["label"],
        "facts": facts,
        "packages": package_versions(),
        "command": " ".join([os.environ.get("SIGNTUNE_CHECK_ENTRY", "python -m benchmarks.gpu"),
                             *(sys.argv[1:] if argv is None else argv)]),
        "budget_s": budget,
        "tracking": TRACKING,
        "parts": {},
    }
    log.write(f"start: {facts['label']}, budget {budget:.0f} s, parts {names}, work {work}",
              json.dumps(facts, indent=1) + "\n" + json.dumps(summary["packages"], indent=1))
    ok = True
    try:
        summary["data"] = prepare_data(work, args.dry_run, log)
        ctx = Context(dry_run=args.dry_run, out=str(out), work=str(work), data=str(work / "data"),
                      cache=str(work / ".cache"), device=facts["device"], label=facts["label"], deadline=0.0,
                      peak_tflops=args.peak_tflops or (None if args.dry_run else peak_tflops(facts["label"])))
        env = child_env(args.dry_run)
        for i, name in enumerate(names):
            remaining = deadline - time.time() - RENDER_RESERVE_S
            part_budget = part_budgets(remaining, names[i:], sizes.budgets)[name]
            ctx.deadline = time.time() + part_budget - 3.0  # the part's own margin to save and exit
            ctx_path = work / f"ctx-{name}.json"
            ctx.save(ctx_path)
            fin = run_group([sys.executable, "-m", "benchmarks.gpu.parts", name, "--ctx", str(ctx_path)],
                            timeout_s=max(1.0, part_budget), env=env, cwd=str(work), grace_s=PART_GRACE_S)
            result_path = out / PART_FILES[name]
            result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else {}
            status = "timeout" if fin.timed_out else result.get("status", "error")
            if status == "running":  # died without saying why
                status = "error"
            if result and status != result.get("status"):
                result["status"] = status
                _write_json(result_path, result)
            failed = [c["check"] for c in result.get("checks", []) if not c["ok"]]
            ok = ok and status == "done" and not failed
            summary["parts"][name] = {"status": status, "budget_s": round(part_budget, 1),
                                      "wall_s": round(fin.wall_s, 1), "returncode": fin.returncode,
                                      "failed_checks": failed}
            log.write(f"part {name}: {status} in {fin.wall_s:.1f} s of {part_budget:.0f} s"
                      + (f", failed checks {failed}" if failed else ""), fin.stdout + fin.stderr)
            summary["wall_s"] = time.time() - started
            _write_json(out / SUMMARY_FILE, summary)
            _render(out, render)
    except KeyboardInterrupt:
        ok = False
        summary["error"] = "stopped by Ctrl-C or SIGTERM (check.sh's hard limit)"
        log.write("stopped by Ctrl-C or SIGTERM")
    except Exception as exc:
        import traceback

        ok = False
        summary["error"] = f"{type(exc).__name__}: {exc}"
        log.write("error", traceback.format_exc())
    finally:
        summary["wall_s"] = time.time() - started
        summary["exit"] = 0 if ok else 1
        _write_json(out / SUMMARY_FILE, summary)
        _render(out, render)
        for stray in out.glob("*.tmp"):  # a part stopped while saving
            stray.unlink(missing_ok=True)
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    log.write(f"done in {summary['wall_s']:.0f} s: exit {summary['exit']}; results in {out}")
    return int(summary["exit"])


def _render(out: Path, render: Callable[[dict[str, Any], dict[str, dict[str, Any]]], str]) -> None:
    """(Re)write the results folder's section from what it holds so far."""
    from benchmarks.gpu.render import load

    summary, parts = load(out)
    (out / SECTION_FILE).write_text(render(summary, parts), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
