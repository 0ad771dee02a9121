"""The GPU check (benchmarks/gpu): its CPU dry run end to end, and the pieces a GPU run relies on.

The dry run goes through the same entry point as the GPU node (``benchmarks/gpu/check.sh``), so
the script cannot rot between GPU windows. The other tests are fast: the OOM sizing, the budget
split, the wheel pins and installer, and the guard that keeps CPU figures out of RESULTS.md's
GPU section.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------------
# The dry run


@pytest.mark.slow  # 100-130 s on the 2-core development machine (five parts, six `study run`s)
def test_dry_run_through_check_sh(tmp_path: Path) -> None:
    from benchmarks.gpu.context import ALL_FILES, DRY_LABEL, PART_FILES

    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SIGNTUNE_SITE": str(tmp_path / "site"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), "--dry-run", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:] + json.dumps(summary.get("parts"), indent=1)

    # What comes back from a GPU session: at most 8 small files, flat.
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(ALL_FILES) and len(files) <= 8
    assert all((out / f).stat().st_size < 100_000 for f in files)

    # Labelled as the CPU dry run everywhere, never as GPU figures.
    assert summary["dry_run"] and summary["label"] == DRY_LABEL and summary["facts"]["device"] == "cpu"
    assert {n: p["status"] for n, p in summary["parts"].items()} == dict.fromkeys(PART_FILES, "done")
    parts = {n: json.loads((out / f).read_text()) for n, f in PART_FILES.items()}
    assert all(p["label"] == DRY_LABEL and p["dry_run"] for p in parts.values())
    section = (out / "gpu_section.md").read_text()
    assert section.startswith(f"## GPU check: {DRY_LABEL} (not GPU figures)") and "## 8. GPU check" not in section

    # Every check passed; the targets are measured but not judged on a CPU.
    checks = [c for p in parts.values() for c in p.get("checks", [])]
    assert checks and all(c["ok"] for c in checks), checks
    targets = [t for p in parts.values() for t in p.get("targets", [])]
    assert len(targets) == 3 and all(t["met"] is None and t["ratio"] > 0 for t in targets)

    # a. both model sizes, both loops, FLOPs counted
    rows = parts["trainer"]["rows"]
    assert {(r["config"], r["loop"]) for r in rows} == {
        (c, loop) for c in ("tiny A", "tiny B") for loop in ("ours (fit)", "naive loop")
    }
    assert all(r["gflop_per_epoch"] > 0 and r["mfu"] is None for r in rows)
    # b. the same configs at each worker count
    assert [r["workers_per_gpu"] for r in parts["workers"]["runs"]] == [1, 2] and parts["workers"]["same_configs"]
    # c. the OOM bookkeeping: reason oom, one retry at half batch, nothing RUNNING
    trials = parts["oom"]["trials"]
    assert [t["state"] for t in trials] == ["FAIL", "COMPLETE"] and trials[0]["reason"] == "oom"
    assert trials[1]["retry_of"] == 0 and trials[1]["oom_retry_config"]["data.batch_size"] == 4
    # ... and a broken CUDA context (emulated): reason cuda_error, the worker replaced, the retry complete
    broken = parts["oom"]["cuda_error"]
    failed = [t for t in broken["trials"] if t["state"] == "FAIL"]
    assert len(failed) == 1 and broken["worker_pids"] == 3
    # Either of the two workers may start first, so the broken trial is number 0 or 1.
    assert failed[0]["reason"] == "cuda_error" and failed[0]["number"] in (0, 1)
    retries = [t for t in broken["trials"] if t.get("retry_of") == failed[0]["number"]]
    assert [t["state"] for t in retries] == ["COMPLETE"]
    # d. bf16 is CUDA-only: on the CPU both runs are the same fp32 run
    runs = parts["bf16"]["runs"]
    assert runs["bf16 autocast"]["last_train_loss"] == runs["fp32"]["last_train_loss"]
    # e. one t5 trial on the CPU
    assert parts["t5"]["trials"][0]["state"] == "COMPLETE" and parts["t5"]["trials"][0]["device"] == "cpu"


# --------------------------------------------------------------------------------------------
# Sizing and budgets


def test_oom_batch_cannot_fit_at_full_size_but_fits_at_half() -> None:
    from benchmarks.gpu.parts import OOM_FILL, choose_oom_batch

    gib = 2**30
    free, fixed, per_clip = 77 * gib, 3 * gib, 48 * 2**20
    full = choose_oom_batch(free, fixed, per_clip, clips=3000)
    assert full is not None and full % 2 == 0
    assert fixed + full * per_clip > 1.2 * free  # the full batch cannot fit
    assert fixed + full // 2 * per_clip <= OOM_FILL * free  # its half leaves a third free
    # Not enough clips to make one batch that large: the next model of the ladder must be tried.
    assert choose_oom_batch(free, fixed, per_clip, clips=full - 1) is None
    # Weights and optimizer state alone near the memory: no batch splits into fits / does not fit.
    assert choose_oom_batch(free, 0.6 * free, per_clip, clips=10**6) is None
    assert choose_oom_batch(free, fixed, 0.0, clips=3000) is None


def test_part_budgets_share_what_is_left() -> None:
    from benchmarks.gpu.__main__ import ORDER, PART_GRACE_S, part_budgets
    from benchmarks.gpu.context import DRY, GPU

    for sizes in (GPU, DRY):
        assert set(sizes.budgets) == set(ORDER)
        shares = part_budgets(300.0, list(ORDER), sizes.budgets)
        assert sum(shares.values()) == pytest.approx(300.0)
        assert shares["workers"] / shares["t5"] == pytest.approx(sizes.budgets["workers"] / sizes.budgets["t5"])
    # The budget, plus a last part's grace past its share, stays under check.sh's hard limit (470 s),
    # which with the wheels' install stays within 8 minutes.
    assert GPU.total_budget_s + PART_GRACE_S <= 470 - 5


def test_gpu_sizes_are_how2sign_sized() -> None:
    from benchmarks.gpu.context import GPU

    assert GPU.synth["feature_dim"] == 768 and GPU.synth["n_train"] >= 3000
    assert GPU.workers_counts == (1, 2, 4)


# --------------------------------------------------------------------------------------------
# Wheels


def test_always_pins_are_the_versions_ci_runs() -> None:
    """The code that passed here is what runs on the node: re-pin wheels.txt when the venv moves."""
    from benchmarks.gpu.wheels import read_pins

    pins = read_pins()
    assert {p.key for p in pins} >= {"optuna", "alembic", "sqlalchemy", "mako", "colorlog"}
    for pin in pins:
        if pin.policy == "always":
            assert md.version(pin.name) == pin.version, (
                f"{pin.name} is {md.version(pin.name)} here but {pin.version} in benchmarks/gpu/wheels.txt: re-pin "
                "it and run `python -m benchmarks.gpu.wheels fetch`"
            )


def _tiny_wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        zf.writestr(
            f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        zf.writestr(f"{name}-{version}.data/purelib/{name}_extra.py", "EXTRA = 2\n")
    return path


def test_install_unpacks_only_what_the_node_needs(tmp_path: Path) -> None:
    from benchmarks.gpu.wheels import Pin, install, plan_install

    src, target = tmp_path / "whl", tmp_path / "site"
    src.mkdir()
    _tiny_wheel(src, "signtune_tinywheel", "1.0")
    pins = [Pin("signtune_tinywheel", "1.0", "always")]
    assert install(src, target, pins=pins) == ["signtune_tinywheel==1.0 (missing)"]
    assert (target / "signtune_tinywheel" / "__init__.py").is_file()
    assert (target / "signtune_tinywheel_extra.py").is_file() and not list(target.glob("*.data"))
    assert (target / "signtune_tinywheel-1.0.dist-info" / "METADATA").is_file()

    pins = [
        Pin("a", "2.0", "always"),
        Pin("b", "2.0", "if-older"),
        Pin("c", "2.0", "if-older"),
        Pin("d", "2.0", "always"),
        Pin("e", "2.0", "if-older"),
    ]
    have: dict[str, str | None] = {"a": "3.0", "b": "3.0", "c": "1.9", "d": "2.0", "e": None}
    assert [(p.name, why) for p, why in plan_install(pins, have)] == [
        ("a", "node has 3.0"),
        ("c", "node has 1.9"),
        ("e", "missing"),
    ]

    with pytest.raises(FileNotFoundError, match=r"benchmarks\.gpu\.wheels fetch"):
        install(src, target, pins=[Pin("signtune_not_there", "1.0", "always")])


# --------------------------------------------------------------------------------------------
# RESULTS.md


def _fake_results(folder: Path, *, dry_run: bool) -> None:
    """A results folder as the check writes it (figures invented for the test, never rendered elsewhere)."""
    folder.mkdir(parents=True)
    facts: dict[str, Any] = (
        {"device": "cpu", "label": "CPU dry run"}
        if dry_run
        else {
            "device": "cuda",
            "label": "NVIDIA TEST GPU",
            "driver": "0.0",
            "torch": "0.0",
            "cuda": "0.0",
            "date": "2000-01-01 00:00 UTC",
        }
    )
    summary = {
        "dry_run": dry_run,
        "label": facts["label"],
        "facts": facts,
        "budget_s": 450,
        "wall_s": 400,
        "data": {"n_train": 3000, "n_val": 300, "n_test": 100, "feature_dim": 768},
        "parts": {"t5": {"status": "done", "budget_s": 30}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    t5 = {
        "status": "done",
        "label": facts["label"],
        "trials": [{"number": 0, "state": "COMPLETE", "device": "cuda"}],
        "checks": [{"check": "one t5 trial completed", "ok": True, "detail": "x"}],
    }
    (folder / "e_t5.json").write_text(json.dumps(t5))


def test_render_into_refuses_the_dry_run(tmp_path: Path) -> None:
    from benchmarks.gpu.render import NotGpuResults, main, write_into

    _fake_results(tmp_path / "dry", dry_run=True)
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmarks\n\n## Suite timing\n")
    section_md = tmp_path / "RESULTS_GPU.md"
    with pytest.raises(NotGpuResults, match="GPU figures only"):
        write_into(tmp_path / "dry", results_md, section_md)
    assert results_md.read_text() == "# Benchmarks\n\n## Suite timing\n" and not section_md.exists()
    assert main(["--from", str(tmp_path / "dry"), "--into", str(results_md)]) == 2


def test_render_into_replaces_only_the_gpu_section(tmp_path: Path) -> None:
    from benchmarks.gpu.render import BEGIN, END, write_into

    _fake_results(tmp_path / "gpu", dry_run=False)
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text((ROOT / "benchmarks" / "RESULTS.md").read_text())
    before = results_md.read_text()
    write_into(tmp_path / "gpu", results_md, tmp_path / "RESULTS_GPU.md")
    after = results_md.read_text()
    assert after[: after.index(BEGIN)] == before[: before.index(BEGIN)]
    assert after[after.index(END) :] == before[before.index(END) :]
    section = after[after.index(BEGIN) : after.index(END)]
    assert "## 8. GPU check" in section and "**GPU: NVIDIA TEST GPU**" in section and "Pending" not in section
    assert (tmp_path / "RESULTS_GPU.md").read_text().startswith("## 8. GPU check")


def test_results_md_keeps_the_gpu_section_on_cpu_reruns() -> None:
    from benchmarks.__main__ import render
    from benchmarks.gpu.render import BEGIN, END, SECTION_MD

    text = render({}, {"label": "CPU"}, 1.0, Path("/data"), {})
    assert BEGIN in text and END in text and SECTION_MD.read_text().strip() in text
    assert text.index(END) < text.index("## Suite timing")
