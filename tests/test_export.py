from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import optuna
import pytest

from signtune.errors import StudyError
from signtune.export import PLOTLY_JS, PLOTS, export_study
from signtune.spec import load_spec, parse_sets


def _study(n: int) -> optuna.Study:
    study = optuna.create_study(study_name="demo", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
        drop = trial.suggest_float("model.dropout", 0.0, 0.4)
        for epoch in range(1, 4):
            trial.report(epoch * 10 * (1 - drop), epoch)
        trial.set_user_attr("epochs_run", 3)
        return 50 * (1 - drop) + lr

    study.optimize(objective, n_trials=n)
    return study


def test_export_writes_every_file(study_dir: Path) -> None:
    spec = load_spec("demo", {"budget.subset": 0.3})
    study = _study(12)
    out = export_study(study, spec)
    assert out == spec.dir / "export"
    best = json.loads((out / "best_params.json").read_text())
    assert best["value"] == pytest.approx(study.best_value)
    assert best["params"] == study.best_params
    assert best["fixed"]["data.subset"] == 0.3
    assert best["spec_hash"] == spec.hash()
    assert "study train" in best["reproduce"]
    assert best["trial"] == study.best_trial.number and best["epochs_run"] == 3
    assert (best["n_trials"], best["n_complete"]) == (12, 12)
    assert (best["metric"], best["direction"]) == ("val_bleu", "maximize")
    assert not set(best["fixed"]) & set(best["params"]), "`fixed` lists only what the trials did not search"
    assert best["fixed"]["run.epochs"] == spec.epochs
    # The reproduce command re-runs the best trial's config: its --set values read back as its params.
    args = shlex.split(best["reproduce"])
    assert args[:4] == ["study", "train", "--study", str(spec.path)]
    assert args[args.index("--subset") + 1] == "0.3" and args[args.index("--epochs") + 1] == str(spec.epochs)
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert parse_sets(sets) == study.best_params
    # trials.csv: one row per trial in trial order, signtune's attrs, then the params.
    with (out / "trials.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["number", "state", "value"]
    assert header[-2:] == ["model.dropout", "optim.lr"]
    assert {"reason", "epochs_run", "wall_time_s", "host", "worker", "mlflow_run_id"} <= set(header)
    rows = list(csv.DictReader((out / "trials.csv").open(newline="")))
    trials = study.get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    assert [float(r["value"]) for r in rows] == [t.value for t in trials]
    assert [float(r["optim.lr"]) for r in rows] == [t.params["optim.lr"] for t in trials]
    assert all(r["state"] == "COMPLETE" and r["epochs_run"] == "3" and r["reason"] == "" for r in rows)
    for name in PLOTS:
        page = (out / f"{name}.html").read_text()
        assert "plotly" in page.lower() and "signtune-unavailable" not in page, name
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best_params.json", "trials.csv", "advice.md", "report.html", PLOTLY_JS, *(f"{name}.html" for name in PLOTS)]
    )
    assert (out / "advice.md").read_text().startswith(f"# Search-space advice for `{study.study_name}` (top 3)")


PLOTLY_BANNER = "* plotly.js v"  # the licence header at the top of plotly.js


def test_plotly_js_is_written_once_per_export(study_dir: Path) -> None:
    """The plot pages share one plotly.min.js beside them; only report.html inlines it (once).

    Before, each of the four plot pages and the report inlined plotly.js: five files of ~4.8 MB,
    24 MB per export.
    """
    spec = load_spec("demo")
    out = export_study(_study(12), spec)
    sizes = {f.name: f.stat().st_size for f in out.iterdir()}
    texts = {name: (out / name).read_text(encoding="utf-8") for name in sizes if name != "trials.csv"}
    assert sorted(name for name, text in texts.items() if PLOTLY_BANNER in text) == [PLOTLY_JS, "report.html"]
    assert texts[PLOTLY_JS].count(PLOTLY_BANNER) == 1 and sizes[PLOTLY_JS] > 3_000_000
    for name in PLOTS:
        page = texts[f"{name}.html"]
        scripts = re.findall(r"<script[^>]*\bsrc=[\"']?([^\"' >]+)", page)
        assert scripts == [PLOTLY_JS], (name, scripts)  # relative to the page: no CDN, works offline
        assert "Plotly.newPlot(" in page, name
        assert sizes[f"{name}.html"] < 200_000, (name, sizes[f"{name}.html"])
    assert sum(sizes.values()) < 11_000_000, sizes  # plotly.js twice (folder copy + report), not five times


def test_export_with_no_complete_trial_says_so(study_dir: Path) -> None:
    spec = load_spec("demo")
    study = optuna.create_study(study_name="demo", direction="maximize")
    out = export_study(study, spec)
    best = json.loads((out / "best_params.json").read_text())
    assert best["value"] is None and "no trial completed" in best["note"]
    assert "signtune-unavailable" in (out / "param_importances.html").read_text()


def test_failed_export_keeps_previous(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec("demo")
    study = _study(3)
    out = export_study(study, spec)
    before = (out / "best_params.json").read_text()

    def boom(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("signtune.export.write_trials_csv", boom)
    with pytest.raises(StudyError, match="No space left on device"):
        export_study(_study(4), spec)
    assert (out / "best_params.json").read_text() == before
    assert not list(spec.dir.glob(".export-*"))


def test_interrupted_export_keeps_previous(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the report is written: the previous export stays whole, no partial folder."""
    spec = load_spec("demo")
    out = export_study(_study(3), spec)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*_a: object, **_k: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("signtune.export.report_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_study(_study(4), spec)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in spec.dir.iterdir() if p.name.startswith(("export", ".export"))) == ["export"]


def test_a_new_export_replaces_the_whole_folder(study_dir: Path, tmp_path: Path) -> None:
    spec = load_spec("demo")
    out = tmp_path / "elsewhere" / "exp"
    assert export_study(_study(2), spec, out) == out
    (out / "stale.txt").write_text("from an older export")
    export_study(_study(3), spec, out)
    assert not (out / "stale.txt").exists()
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp"], "no temporary or .old folder is left"
    assert not (spec.dir / "export").exists(), "--out is honoured"


def test_report_is_one_self_contained_file(study_dir: Path) -> None:
    spec = load_spec("demo", {"storage": "postgresql+psycopg://bob:hunter2@db/x"})
    study = _study(10)
    t = study.ask()
    t.set_user_attr("reason", "diverged")
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    study.set_user_attr("data", {"train": 900, "val": 300})
    out = export_study(study, spec)
    page = (out / "report.html").read_text()
    assert page.count("* plotly.js v") == 1  # the library is inlined once, for every plot
    assert "Leaderboard" in page and "Best:" in page and "Reproduce" in page
    assert "diverged" in page  # pruning reasons are tallied
    assert "train" in page and "900" in page  # the data summary
    assert page.count("plotly-graph-div") >= 4
    # Every table sits in a box that scrolls sideways, so a wide leaderboard does not widen the page
    # (tests/browse/test_export_pages.py measures it in Chromium).
    assert page.count("<table") == page.count("<div class='signtune-table'><table>") >= 4
    assert ".signtune-table{max-width:100%;overflow-x:auto" in page
    assert "<th>model.<wbr>dropout</th>" in page  # long column names may wrap
    assert "hunter2" not in page and "bob:***@" in page
    best = (out / "best_params.json").read_text()
    assert "hunter2" not in best and "bob:***@" in best
    assert 'src="http' not in page  # nothing loaded from the network
