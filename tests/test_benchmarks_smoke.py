"""Every benchmark's ``main`` on a tiny setting, and RESULTS.md rendered from what they return.

Keeps ``python -m benchmarks`` from rotting; the figures themselves are not checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.slow


def test_replay_runs_end_to_end(tmp_path: Path) -> None:
    from benchmarks import replay

    into = tmp_path / "RESULTS.md"
    into.write_text("# Benchmarks\n\n## Suite timing\n")
    out = tmp_path / "replay"
    rc = replay.main(
        [
            "--quick",
            "--seeds",
            "2",
            "--problems",
            "mfh3-good",
            "--setups",
            "random",
            "new",
            "--jobs",
            "1",
            "--out",
            str(out),
            "--into",
            str(into),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "results.json").read_text())
    assert {(r["setup"], r["seeds"]) for r in summary["rows"]} == {("random", 2), ("new", 2)}
    assert (out / "curves.png").stat().st_size > 1000 and "plotly" in (out / "curves.html").read_text()
    text = into.read_text()
    assert "<!-- replay:begin" in text and "| 30 | 1 | new | 2 |" in text
    assert text.index("<!-- replay:end -->") < text.index("## Suite timing")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmarks.common import demo_data

    return demo_data(tmp_path_factory.mktemp("bench") / "data", n_train=200, n_val=20, n_test=10)


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return {}


def test_trainer_throughput(data: Path, results: dict[str, Any]) -> None:
    from benchmarks import trainer_throughput

    r = trainer_throughput.main(
        ["--clips", "16", "--batch-size", "8", "--repeats", "1", "--data", str(data), "--profile"]
    )
    assert r["steps_per_run"] == 2
    assert {row["loop"] for row in r["rows"]} == {"ours (fit)", "naive loop"}
    assert r["ratio_wall"] > 0 and "profile_parts" in r
    results["trainer"] = r


def test_eval_cost(data: Path, results: dict[str, Any]) -> None:
    from benchmarks import eval_cost

    r = eval_cost.main(
        ["--clips", "40", "--epochs", "1", "--repeats", "1", "--val-clips", "6", "--data", str(data), "--profile"]
    )
    assert 0 < r["share"]["share"] < 1
    assert r["decode"]["val_clips"] == 6 and r["decode"]["ratio_wall"] > 0
    assert "max_len_probe" in r
    results["eval"] = r


def test_startup(data: Path, results: dict[str, Any]) -> None:
    from benchmarks import startup

    r = startup.main(["--repeats", "1", "--no-e2e", "--no-profile", "--data", str(data)])
    assert set(startup.PHASES) <= set(r["phases"])
    # The headline is measured on the real `study run`; the phases (MLflow's excluded, as the
    # tracker defers its runs past the first step) break it down.
    assert len(r["measured_runs"]) == 1 and r["total_s"] == pytest.approx(r["measured_runs"][0], abs=0.01)
    assert r["phases_sum_s"] == pytest.approx(sum(v for k, v in r["phases"].items() if not k.startswith("mlflow")))
    assert 0.5 < r["total_s"] < 60
    results["startup"] = {**r, "profile": "(import-time profile, skipped here: a subprocess of its own)"}


def test_storage_stress(results: dict[str, Any]) -> None:
    from benchmarks import storage_stress

    rows = storage_stress.main(["--workers", "1", "--trials", "3", "--task-s", "0", "--backends", "journal"])
    assert rows[0]["finished"] == 3
    results["storage"] = rows


def test_pack_store(results: dict[str, Any]) -> None:
    from benchmarks import pack_store

    r = pack_store.main(["--clips", "40", "--frames", "40", "--dim", "8", "--no-cold"])
    assert r["pack_clips"] == 40 and r["built"] and not r["full_size"] and not r["met"]
    assert set(r["per_file"]) == {"cold", "warm"} and r["packed_warm"]["load_s"] > 0
    results["pack"] = r


def test_scaling(data: Path, results: dict[str, Any]) -> None:
    from benchmarks import scaling

    r = scaling.main(["--trials", "2", "--epochs", "1", "--subset", "0.05", "--data", str(data)])
    assert r["same_configs"], "every variant must train the same configs"
    assert set(r["medians"]) == set(scaling.VARIANTS)
    assert all(run["finished"] == 2 and run["failed"] == 0 for runs in r["runs"].values() for run in runs)
    assert r["runs"]["2 workers x 1 thread"][0]["workers"] == 2
    results["scaling"] = r


@pytest.mark.filterwarnings("ignore::UserWarning")  # Optuna's importances on one trial, in the study export
def test_tuning_efficiency(data: Path, tmp_path: Path, results: dict[str, Any]) -> None:
    from benchmarks import tuning_efficiency

    html = tmp_path / "curves.html"
    r = tuning_efficiency.main(
        [
            "--inline",
            "--subset",
            "0.01",
            "--epochs",
            "1",
            "--budget",
            "1",
            "--marks",
            "1",
            "--seeds",
            "1",
            "--target",
            "50",
            "--data",
            str(data),
            "--html",
            str(html),
        ]
    )
    assert set(r["summary"]) == {"ours", "plain_tpe", "random", "today"}
    assert [c["vs"] for c in r["checks"]] == ["plain_tpe", "random"]
    assert "<html>" in html.read_text()
    results["tuning"] = r


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    """The suite's last full run, as ``python -m benchmarks`` wrote it (benchmarks/RESULTS.json)."""
    import json

    from benchmarks.__main__ import HERE

    return dict(json.loads((HERE / "RESULTS.json").read_text(encoding="utf-8")))


def test_results_md_renders(data: Path, results: dict[str, Any], saved: dict[str, Any]) -> None:
    """RESULTS.md from every benchmark's figures: those the tests above measured in this session,
    RESULTS.json's for the others, as ``python -m benchmarks --only ...`` merges them. Run alone,
    it renders RESULTS.json's figures; after the tests above, their fresh ones."""
    import json

    from benchmarks.__main__ import ALL, render
    from benchmarks.common import machine

    assert set(saved["results"]) == set(ALL), "RESULTS.json holds every benchmark's figures"
    # The saved commands name the suite's data folder; here they name this session's.
    kept = json.loads(json.dumps(saved["results"]).replace(saved["data"], str(data)))
    merged = {name: results.get(name, kept[name]) for name in ALL}
    text = render(merged, machine(), 1.0, data, {"storage_command": "x", "durations": {"x": 1.0}})
    for heading in (
        "## Machine",
        "## Targets",
        "## 1. Trainer",
        "## 2. Validation",
        "## 3. Start-up",
        "## 4. Storage",
        "## 5. Tuning",
        "## 6. Packed feature store",
        "## 7. Scaling",
        "## Suite timing",
    ):
        assert heading in text
    assert "MET" in text and str(data) not in text and saved["data"] not in text
    assert "--data $DATA" in text, "commands name the data folder as $DATA"
    # The targets table shows each benchmark's headline figure.
    assert f"{merged['trainer']['ratio_wall']:.2f}x" in text
    assert f"{merged['startup']['total_s']:.2f} s" in text
    assert f"{merged['scaling']['ratio_window']:.2f}x" in text
