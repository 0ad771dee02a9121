"""The GPU check's results as a Markdown section, and its place in benchmarks/RESULTS.md.

    python -m benchmarks.gpu.render --from DIR                       # print the section of a results folder
    python -m benchmarks.gpu.render --from DIR --into benchmarks/RESULTS.md

``--into`` writes the section to ``benchmarks/gpu/RESULTS_GPU.md`` (which ``python -m benchmarks``
embeds whenever it rewrites RESULTS.md) and splices it into RESULTS.md between the GPU markers.
It refuses results of the CPU dry run, or of any run that did not train on CUDA: RESULTS.md's
GPU section holds GPU figures only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu.context import DRY_LABEL, PART_FILES, SUMMARY_FILE
from benchmarks.gpu.parts import BLEU_TOL, LOSS_TOL

HERE = Path(__file__).resolve().parent
SECTION_MD = HERE / "RESULTS_GPU.md"  # the section RESULTS.md embeds
BEGIN = "<!-- gpu-check:begin (python -m benchmarks.gpu.render writes this section) -->"
END = "<!-- gpu-check:end -->"
TITLES = {
    "trainer": "a. Trainer throughput: ours against the naive loop",
    "workers": "b. Workers per GPU: `study run --gpus all --workers-per-gpu k`",
    "oom": "c. A real CUDA OOM and its half-batch retry; a real CUDA error and the worker's replacement",
    "bf16": "d. bf16 autocast against fp32",
    "t5": "e. The T5 family on CUDA",
}


class NotGpuResults(ValueError):
    """Results that must not go into RESULTS.md's GPU section (a dry run, or no CUDA)."""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x: Any, digits: int = 1, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def _met(met: bool | None) -> str:
    return "not judged (CPU dry run)" if met is None else ("**MET**" if met else "**NOT MET**")


def _status_line(name: str, part: dict[str, Any], budget: float | None) -> str:
    status = part.get("status", "missing")
    if status == "done":
        return f"Ran to the end in {_num(part.get('seconds'), 0)} s (budget {_num(budget, 0)} s)."
    if status == "timeout":
        return (f"**TIMEOUT**: stopped by its {_num(budget, 0)} s budget; the figures below are what it had "
                "measured by then.")
    if status == "error":
        return f"**ERROR**: `{part.get('error', '?')}`; the figures below are what it had measured before."
    return f"**{status.upper()}**: no result file was written."


def load(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(summary, {part: result})`` of a results folder; missing part files are empty dicts."""
    folder = Path(folder)
    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} does not exist: pass the folder `python -m benchmarks.gpu` wrote")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    parts = {}
    for name, file in PART_FILES.items():
        path = folder / file
        parts[name] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return summary, parts


def _targets(parts: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name in PART_FILES:
        part = parts.get(name, {})
        for t in part.get("targets", []):
            rows.append([t["target"], t["measured"], _met(t.get("met"))])
        for c in part.get("checks", []):
            rows.append([c["check"], c["detail"], "**PASSED**" if c["ok"] else "**FAILED**"])
    return rows


def _trainer(p: dict[str, Any]) -> list[str]:
    if not p.get("rows"):
        return []
    rows = [[r["config"], _num(r["params_m"], 1), r["loop"], _num(r["ms_per_step"], 1), _num(r["samples_per_s"], 0),
             _num(r.get("peak_mem_mib"), 0), _num(r["tflops_per_s"], 2),
             _num(100 * r["mfu"], 1, "%") if r.get("mfu") is not None else "n/a", r["wall_s_runs"]]
            for r in p.get("rows", [])]
    return [
        f"One epoch over the same {p.get('clips')} training clips, batch size {p.get('batch_size')}; "
        f"{p.get('what', '')}. "
        "Interleaved (ours, naive, ours, naive...) after one warm-up each; medians.",
        _table(["config", "params (M)", "loop", "ms/step", "samples/s", "peak memory (MiB)", "TFLOP/s", "MFU",
                "wall s per run"], rows),
        p.get("flops_how", "") + (f" Peak used: {p['peak_tflops']:g} TFLOP/s." if p.get("peak_tflops") else
                                  " No peak known for this device: MFU not given."),
    ]


def _workers(p: dict[str, Any]) -> list[str]:
    if not p.get("runs"):
        return []
    rows = []
    for r in p.get("runs", []):
        gpu = r.get("gpu") or {}
        rows.append([r["workers_per_gpu"], f"`{r['command']}`", r["finished"], r["failed"], _num(r["window_s"], 1),
                     _num(r["trials_per_hour_window"], 0), _num(r["trials_per_hour_wall"], 0),
                     _num(r.get("ratio_vs_1"), 2, "x"), _num(r["mean_trial_s"], 2),
                     _num(gpu.get("util_mean_pct"), 0, "%"), _num(gpu.get("util_max_pct"), 0, "%"),
                     _num(gpu.get("mem_max_mib"), 0)])
    same = p.get("same_configs")
    return [
        f"{p.get('configs')} configs x {p.get('epochs')} epochs at subset {p.get('subset')}: {p.get('what', '')}. "
        "GPU utilisation is sampled every 0.5 s (nvidia-smi) within the trial window."
        + ("" if same is None else (" Every run finished the same configs." if same else
                                    " The runs did not all finish every config (time budget): trials/h compare "
                                    "prefixes of the same queue.")),
        _table(["workers per GPU", "command", "finished", "failed", "trial window s", "trials/h (window)",
                "trials/h (wall)", "vs 1 worker", "mean trial s", "GPU util mean", "GPU util max",
                "GPU memory max (MiB)"], rows),
    ]


def _oom(p: dict[str, Any]) -> list[str]:
    sizing = p.get("sizing", {})
    out = [f"{p['how']}."] if p.get("how") else []
    tried = sizing.get("tried", [])
    if tried:
        rows = [[f"d_model {t['model'].get('model.d_model')}, {t['model'].get('model.num_encoder_layers')}+"
                 f"{t['model'].get('model.num_decoder_layers')} layers", _num(t["free_gib"], 1),
                 _num(t["fixed_gib"], 2), _num(t["per_clip_mib"], 1), t.get("frames"), t.get("batch") or "none",
                 _num(t.get("predicted_full_gib"), 1), _num(t.get("predicted_half_gib"), 1)] for t in tried]
        out.append(_table(["model tried", "free GiB", "fixed GiB", "MiB per clip", "longest clip (frames)",
                           "full batch", "predicted full GiB", "predicted half GiB"], rows))
    trials = p.get("trials", [])
    if trials:
        rows = [[t["number"], t["state"], t.get("reason", ""), t.get("retry_of", ""),
                 json.dumps(t.get("oom_retry_config", "")) if t.get("oom_retry_config") else "",
                 _num(t.get("wall_time_s"), 1), (t.get("error") or "")[:120]] for t in trials]
        out.append(f"`{p.get('command', '')}` exited {p.get('returncode')} after {_num(p.get('wall_s'), 1)} s.")
        out.append(_table(["trial", "state", "reason", "retry of", "retry config", "wall s", "error"], rows))
    err = p.get("cuda_error")
    if err:
        out.append(f"CUDA error: `{err['command']}` (the first trial breaks its worker's CUDA context with an "
                   f"out-of-bounds index on the GPU) exited {err['returncode']} after {_num(err['wall_s'], 1)} s; "
                   f"{err['worker_pids']} worker processes ran its trials.")
        rows = [[t["number"], t["state"], t.get("reason", ""), t.get("retry_of", ""), (t.get("error") or "")[:120]]
                for t in err["trials"]]
        out.append(_table(["trial", "state", "reason", "retry of", "error"], rows))
    return out


def _bf16(p: dict[str, Any]) -> list[str]:
    if not p.get("runs"):
        return []
    rows = []
    for name, r in p.get("runs", {}).items():
        rows.append([name, _num(r["best_val_bleu"], 2), _num(r["last_train_loss"], 4),
                     ", ".join(f"{e['val_bleu']:.1f}" for e in r["per_epoch"]), _num(r["wall_s"], 1),
                     _num(r.get("peak_mem_mib"), 0)])
    tol = p.get("applied_tolerance") or p.get("tolerance") or {}
    out = [
        f"Config {json.dumps(p.get('config', {}))}, {p.get('epochs')} epochs on {p.get('train_clips')} training "
        "clips, the same seed and batches; validation on the whole val split (greedy). Tolerance: best val BLEU "
        f"within {BLEU_TOL:g} points and the last train loss within {100 * LOSS_TOL:g}%, or the gap between two "
        "fp32 seeds "
        f"when it is larger (applied here: {_num(tol.get('bleu_points'), 2)} points, "
        f"{_num(100 * tol['loss_relative'] if 'loss_relative' in tol else None, 1)}%). {p.get('note', '')}",
        _table(["run", "best val BLEU", "last train loss", "val BLEU per epoch", "wall s", "peak memory (MiB)"], rows),
    ]
    return out


def _t5(p: dict[str, Any]) -> list[str]:
    trials = p.get("trials", [])
    if not trials:
        return []
    t = trials[0]
    return [f"`{p.get('command', '')}`: {p.get('model', '')}, {p.get('epochs')} epochs at subset {p.get('subset')}. "
            f"Trial {t.get('number')}: {t.get('state')} on `{t.get('device')}`, val chrF {_num(t.get('value'), 2)}, "
            f"{t.get('n_params')} parameters, {_num(t.get('wall_time_s'), 1)} s; the command took "
            f"{_num(p.get('wall_s'), 1)} s."]


SECTIONS = {"trainer": _trainer, "workers": _workers, "oom": _oom, "bf16": _bf16, "t5": _t5}


def render(summary: dict[str, Any], parts: dict[str, dict[str, Any]]) -> str:
    """The section's Markdown. A dry run's says so in its title and on every part."""
    facts = summary.get("facts", {})
    dry = bool(summary.get("dry_run"))
    label = summary.get("label", facts.get("label", "?"))
    if dry:
        head = [f"## GPU check: {DRY_LABEL} (not GPU figures)",
                f"Label: **{DRY_LABEL}**. These figures come from the CPU dry run at tiny sizes; they exercise the "
                "script and say nothing about a GPU. `python -m benchmarks.gpu.render --into` refuses them."]
    else:
        head = ["## 8. GPU check",
                f"Label: **GPU: {label}** (driver {facts.get('driver')}, {facts.get('gpu_memory_gib')} GiB, compute "
                f"capability {facts.get('compute_capability')}), torch {facts.get('torch')} (CUDA {facts.get('cuda')}, "
                f"cuDNN {facts.get('cudnn')}, TF32 matmul {'on' if facts.get('tf32_matmul') else 'off'}), "
                f"{facts.get('date')}, commit {facts.get('git commit')}, {facts.get('CPU')}."]
    data = summary.get("data", {})
    head.append(
        f"Command: `{summary.get('command', 'bash benchmarks/gpu/check.sh')}`: {_num(summary.get('wall_s'), 0)} s of "
        f"its {_num(summary.get('budget_s'), 0)} s budget. Data: synthetic How2Sign-style features, "
        f"{data.get('n_train')}/{data.get('n_val')}/{data.get('n_test')} train/val/test clips, D = "
        f"{data.get('feature_dim')} (generated in {_num(data.get('generate_s'), 1)} s). {summary.get('tracking', '')}")
    targets = _targets(parts)
    head.append(_table(["target / check", "measured", "status"], targets) if targets else
                "No target or check was measured.")
    body = []
    budgets = summary.get("parts", {})
    for name, title in TITLES.items():
        part = parts.get(name, {})
        info = budgets.get(name, {})
        if not part and not info:
            continue
        status = {**part, "status": info.get("status", part.get("status", "missing"))}
        body.append(f"### {title} ({label})")
        body.append(_status_line(name, status, info.get("budget_s")))
        figures = SECTIONS[name](part) if part else []
        body += figures or ["Nothing was measured."]
    return "\n\n".join(head + body) + "\n"


def splice(results_md: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    """``results_md`` with the text between the markers (the GPU's by default) replaced by
    ``section`` (markers added before ``## Suite timing``, or at the end, when missing)."""
    block = f"{begin}\n\n{section.strip()}\n\n{end}"
    if begin in results_md and end in results_md:
        before = results_md[: results_md.index(begin)]
        after = results_md[results_md.index(end) + len(end):]
        return before + block + after
    anchor = "## Suite timing"
    if anchor in results_md:
        i = results_md.index(anchor)
        return results_md[:i] + block + "\n\n" + results_md[i:]
    return results_md.rstrip("\n") + "\n\n" + block + "\n"


def write_into(folder: Path, results_md: Path, section_md: Path = SECTION_MD) -> str:
    """Render ``folder``'s results into ``section_md`` and splice them into ``results_md``.

    Raises:
        NotGpuResults: the results are the CPU dry run's, or did not run on CUDA.
    """
    summary, parts = load(folder)
    if summary.get("dry_run") or summary.get("facts", {}).get("device") != "cuda" or summary.get("label") == DRY_LABEL:
        raise NotGpuResults(
            f"{folder} holds {DRY_LABEL} results (or results without CUDA): RESULTS.md's GPU section takes GPU "
            "figures only; run `bash benchmarks/gpu/check.sh` on a GPU node and pass its results folder"
        )
    section = render(summary, parts)
    section_md.write_text(section, encoding="utf-8")
    results_md.write_text(splice(results_md.read_text(encoding="utf-8"), section), encoding="utf-8")
    return section


def embedded_section(section_md: Path = SECTION_MD) -> str:
    """The GPU section between its markers, as ``python -m benchmarks`` puts it into RESULTS.md."""
    text = section_md.read_text(encoding="utf-8") if section_md.is_file() else "## 8. GPU check\n\nPending.\n"
    return f"{BEGIN}\n\n{text.strip()}\n\n{END}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="folder", type=Path, required=True, help="a results folder of the GPU check")
    ap.add_argument("--into", type=Path, default=None, help="splice the section into this RESULTS.md (GPU only)")
    args = ap.parse_args(argv)
    if args.into is None:
        summary, parts = load(args.folder)
        print(render(summary, parts))
        return 0
    try:
        write_into(args.folder, args.into)
    except NotGpuResults as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {SECTION_MD} and its copy in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
