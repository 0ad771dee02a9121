"""A real browser: headless Chromium draws the report's plots and the dashboard's study page.

Runs ``scripts/check_browser.sh``. Skips when /usr/bin/chromium is missing, unless
``SIGNTUNE_REQUIRE_CHROMIUM=1`` (then it fails).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.browse.conftest import PLUGIN, browse_spec, free_port, start_background, stop, study_cmd, wait_http

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_browser.sh"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
NAME = "browsershot"


@pytest.fixture(scope="module")
def chromium() -> None:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    why = f"{CHROMIUM} is missing; install it with `apt-get install chromium` (or set CHROMIUM)"
    if os.environ.get("SIGNTUNE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"SIGNTUNE_REQUIRE_CHROMIUM=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def project(chromium: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A finished 6-trial plug-in study (tracking off) with its export; shared by the tests here."""
    root = tmp_path_factory.mktemp("browser")
    (root / "studies" / NAME).mkdir(parents=True)
    (root / "search_spaces").mkdir()
    (root / "search_spaces" / "browse.yaml").write_text(
        "# study run --study x\nparams:\n  x: {type: float, low: 0.0, high: 1.0}\n"
    )
    (root / "browseplug.py").write_text(PLUGIN)
    (root / "studies" / NAME / "study.yaml").write_text(
        browse_spec(NAME, trials=6, epochs=3, delay=0.0, tracking=False)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        study_cmd("run", "--study", NAME), cwd=root, env=env, capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 0, res.stderr[-3000:]
    yield root, env


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.slow
def test_report_plots_are_drawn_in_chromium(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, _ = project
    report = root / "studies" / NAME / "export" / "report.html"
    shot = tmp_path / "report.png"
    res = _check("--report", str(report), "--min-plots", "4", "--screenshot", str(shot))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 of 4 plotly graphs drawn" in res.stdout
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, "a 1280x2000 picture of the report"

    # The check must notice plots that plotly.js did not draw.
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text(encoding="utf-8").replace("Plotly.newPlot(", "Plotly.notNewPlot("))
    res = _check("--report", str(broken))
    assert res.returncode == 1 and "were not drawn" in res.stderr, res.stdout + res.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_dashboard_renders_the_study_in_chromium(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    port = free_port()
    log = root / "dashboard.log"
    dash = start_background(study_cmd("dashboard", "--study", NAME, "--port", str(port)), cwd=root, log=log, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/meta", dash, timeout=30, log=log)
        res = _check("--dashboard", base, "--study", NAME)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"lists study '{NAME}'" in res.stdout
        res = _check("--dashboard", base, "--study", "no-such-study")
        assert res.returncode == 1 and "does not list study" in res.stderr, res.stdout + res.stderr
    finally:
        stop(dash)


def test_script_is_executable_and_says_how_to_use_it() -> None:
    """Needs no browser: usage errors come before the Chromium check."""
    assert os.access(SCRIPT, os.X_OK), f"chmod +x {SCRIPT}"
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--report" in res.stderr
