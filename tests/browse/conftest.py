"""A fast plug-in study with MLflow tracking on, and helpers for background servers.

The plug-in's score starts lower the farther x is from 0.3 and, for |x - 0.3| > 0.1, gets worse
every epoch, so the median pruner (n_startup_trials 2, n_warmup_steps 0) prunes a share of the
trials at epoch 1 or later whichever configs the sampler proposes first.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN = '''
import time

def objective(config, report, ctx):
    """0.6 - d at epoch 1, then + (0.1 - d) per epoch, with d = |x - 0.3|."""
    d = abs(config["x"] - 0.3)
    score = 0.0
    for epoch in range(1, int(config["run.epochs"]) + 1):
        time.sleep(float(config.get("delay", 0.0)))
        score = 0.6 - d + (0.1 - d) * (epoch - 1)
        report(epoch, {"score": score, "distance": d})
    return {"score": score}
'''


def browse_spec(
    name: str,
    *,
    trials: int,
    epochs: int = 4,
    delay: float = 0.05,
    tracking: bool = True,
) -> str:
    """study.yaml text for the plug-in; tracking on the default store unless ``tracking`` is False."""
    return textwrap.dedent(
        f"""\
        # Browse-test study: study run --study {name} --workers 4
        name: {name}
        task: browseplug:objective
        search_space: ../../search_spaces/browse.yaml
        fixed: {{run.epochs: {epochs}, delay: {delay}, run.device: cpu}}
        objective: {{metric: score, direction: maximize}}
        sampler: {{name: tpe, seed: 0, n_startup_trials: 5}}
        pruner: {{name: median, n_startup_trials: 2, n_warmup_steps: 0}}
        budget: {{trials: {trials}}}
        """
    ) + ("tracking: {enabled: false}\n" if not tracking else "")


@dataclass
class BrowseProject:
    root: Path

    def new_study(self, **kw: object) -> str:
        """Write ``studies/<unique name>/study.yaml`` and return the name."""
        name = f"browse{uuid.uuid4().hex[:8]}"
        (self.root / "studies" / name).mkdir(parents=True)
        (self.root / "studies" / name / "study.yaml").write_text(browse_spec(name, **kw))  # type: ignore[arg-type]
        return name

    def storage(self, name: str) -> str:
        return f"sqlite:///{self.root / 'studies' / name / 'study.db'}"

    def mlflow_db(self, name: str) -> Path:
        return self.root / "studies" / name / "mlflow.db"


@pytest.fixture
def browse_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BrowseProject:
    """A project folder with the plug-in on PYTHONPATH; cwd is set to it."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "browse.yaml").write_text(
        "# study run --study <name>\nparams:\n  x: {type: float, low: 0.0, high: 1.0}\n"
    )
    (tmp_path / "browseplug.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return BrowseProject(tmp_path)


def study_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "signtune.cli", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(study_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def wait_http(url: str, proc: subprocess.Popen[bytes], *, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits, late after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            http_get(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{url} did not answer within {timeout:.0f}s:\n{tail}")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """End a background process started by a test (its whole process group), SIGTERM then SIGKILL."""
    if proc.poll() is not None:
        return
    import signal

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_background(
    cmd: list[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (so ``stop`` reaches its children), output to ``log``."""
    with log.open("wb") as f:
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env or dict(os.environ), start_new_session=True
        )


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes appended here are stopped at teardown, whatever the test did."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in reversed(procs):
        stop(p)
