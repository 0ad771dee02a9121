"""Headless Chromium opens an export offline: the report fits a 1280 px wide page, a plot page
draws its plot with the folder's ``plotly.min.js``.

The study is built in-process (Optuna, the demo spec and its 13-param search space, no
training). Chromium runs with every network request sent to a dead proxy, so a page that
needed the internet (a CDN) would not draw. Skips when Chromium is missing, unless
``SIGNTUNE_REQUIRE_CHROMIUM=1`` (then it fails).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import optuna
import pytest

from signtune.export import PLOTLY_JS, export_study

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
WIDTH = 1280

# Written into a copy of the report: once the page has loaded and plotly.js has drawn, it puts
# the page's measurements into the DOM, where --dump-dom shows them.
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const root = document.documentElement;
  const boxes = [...document.querySelectorAll(".signtune-table")].map((box) => {
    const first = box.querySelector("tbody tr > :first-child");
    return {scrollWidth: box.scrollWidth, clientWidth: box.clientWidth, columns: box.querySelectorAll("thead th").length,
            firstColumn: first ? getComputedStyle(first).position : null};
  });
  const out = document.createElement("pre");
  out.id = "signtune-probe";
  out.textContent = JSON.stringify({
    innerWidth: window.innerWidth, scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
    bodyScrollWidth: document.body.scrollWidth, boxes: boxes,
    plots: document.querySelectorAll(".js-plotly-plot svg.main-svg").length,
  });
  document.body.appendChild(out);
}, 1000));
</script>"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    why = f"{CHROMIUM} is missing; install it with `apt-get install chromium` (or set CHROMIUM)"
    if os.environ.get("SIGNTUNE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"SIGNTUNE_REQUIRE_CHROMIUM=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def export(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of a 20-trial study of the demo's 13 params, with made-up values."""
    from signtune.space import parse, suggest
    from signtune.spec import load_spec

    root = tmp_path_factory.mktemp("export-pages")
    (root / "studies" / "demo").mkdir(parents=True)
    (root / "search_spaces").mkdir()
    shutil.copy(ROOT / "studies" / "demo" / "study.yaml", root / "studies" / "demo" / "study.yaml")
    shutil.copy(ROOT / "search_spaces" / "sign2text.yaml", root / "search_spaces" / "sign2text.yaml")
    spec = load_spec(root / "studies" / "demo" / "study.yaml")
    space = parse(spec.search_space)
    study = optuna.create_study(study_name="demo", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        p = suggest(trial, space)
        value = 0.0
        for epoch in range(1, 4):
            value = epoch * 5 * (1 - p["model.dropout"]) + 100 * p["optim.lr"]
            trial.report(value, epoch)
        trial.set_user_attr("epochs_run", 3)
        trial.set_user_attr("wall_time_s", 12.5)
        return value

    study.optimize(objective, n_trials=20)
    assert len({k for t in study.trials for k in t.params}) >= 13
    return export_study(study, spec, root / "export")


def _chromium(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless run at 1280 px wide, fresh profile, offline: http(s) goes to a dead proxy."""
    cmd = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        f"--window-size={WIDTH},2000",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _drawn_plots(dom: str) -> int:
    """plotly graph divs that plotly.js has drawn (an svg.main-svg inside)."""
    return len(
        re.findall(
            r'class="plotly-graph-div js-plotly-plot"[^>]*><div class="plot-container plotly"[^>]*>'
            r'<div class="[^"]*svg-container"[^>]*><svg class="main-svg"',
            dom,
        )
    )


@pytest.mark.slow
def test_report_fits_a_1280px_page(chromium: Path, export: Path, tmp_path: Path) -> None:
    """No sideways scrolling of the page: the 17-column leaderboard scrolls inside its own box."""
    report = export / "report.html"
    probed = tmp_path / "report.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(chromium, tmp_path / "p1", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="signtune-probe">([^<]*)</pre>', dom)
    assert found, "the probe did not run: " + dom[-2000:]
    m = json.loads(found.group(1))
    assert m["innerWidth"] == WIDTH, m
    assert m["scrollWidth"] <= m["clientWidth"] and m["bodyScrollWidth"] <= m["clientWidth"], m
    assert m["plots"] >= 4, m  # plotly.js (inlined) drew the plots offline
    board = max(m["boxes"], key=lambda b: b["columns"])
    assert board["columns"] >= 4 + 13, m  # #, metric, epochs, time, and a column per param
    assert board["scrollWidth"] > board["clientWidth"] <= WIDTH, m  # wider than the page: it scrolls in its box
    assert board["firstColumn"] == "sticky", m  # the trial number stays in view

    shot = tmp_path / "report.png"
    _chromium(chromium, tmp_path / "p2", f"--screenshot={shot}", report.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (WIDTH, 2000)


@pytest.mark.slow
def test_plot_page_draws_with_the_folder_plotly_js(chromium: Path, export: Path, tmp_path: Path) -> None:
    page = export / "parallel_coordinate.html"
    assert (export / PLOTLY_JS).is_file()
    dom = _chromium(chromium, tmp_path / "p1", "--dump-dom", page.as_uri()).stdout
    assert _drawn_plots(dom) == 1, dom[-2000:]
    assert re.search(r'class="gtitle"[^>]*>demo: parallel coordinate<', dom)  # the title, drawn into the svg

    # The page alone, without the folder's plotly.min.js, draws nothing: it does not inline the
    # library and loads nothing from the network.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(page, alone / page.name)
    dom = _chromium(chromium, tmp_path / "p2", "--dump-dom", (alone / page.name).as_uri()).stdout
    assert "plotly-graph-div" in dom and _drawn_plots(dom) == 0
