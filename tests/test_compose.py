"""docker-compose.yml structure: services, health, dependencies, real commands, no secrets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SIGNTUNE = ["dashboard", "create", "worker", "export"]  # services running the `study` image
_VAR = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def expand(value: str) -> str:
    """${VAR:-default} -> default, ${VAR:?msg} -> a placeholder (what .env would provide)."""
    return _VAR.sub(lambda m: m.group(2) if m.group(0).find(":-") > 0 else f"<{m.group(1)}>", value)


def test_services_present() -> None:
    assert set(SERVICES) == {"postgres", "mlflow", "dashboard", "create", "worker", "export"}


def test_healthchecks_and_dependencies() -> None:
    assert "healthcheck" in SERVICES["postgres"] and "healthcheck" in SERVICES["mlflow"]
    assert SERVICES["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in SIGNTUNE:
        deps = SERVICES[name]["depends_on"]
        if name in ("dashboard", "worker"):
            assert deps["create"]["condition"] == "service_completed_successfully", name
        else:
            assert deps["postgres"]["condition"] == "service_healthy"
            assert deps["mlflow"]["condition"] == "service_healthy"
    assert "pgdata" in COMPOSE["volumes"] and "mlartifacts" in COMPOSE["volumes"]


def test_worker_reserves_gpus_and_scales() -> None:
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "container_name" not in worker  # --scale worker=N needs unnamed containers
    assert "ports" not in worker


def test_only_dashboard_and_mlflow_published_on_loopback() -> None:
    published = {name: s["ports"] for name, s in SERVICES.items() if "ports" in s}
    assert set(published) == {"dashboard", "mlflow"}
    for ports in published.values():
        for port in ports:
            assert expand(port).startswith("127.0.0.1:"), port


def test_every_service_uses_the_same_storage_and_tracking() -> None:
    storages = {SERVICES[n]["environment"]["SIGNTUNE_STORAGE"] for n in SIGNTUNE}
    trackings = {SERVICES[n]["environment"]["MLFLOW_TRACKING_URI"] for n in SIGNTUNE}
    assert len(storages) == 1 and len(trackings) == 1
    (storage,) = storages
    assert storage.startswith("postgresql+psycopg://") and "@postgres:5432/" in storage
    assert trackings == {"http://mlflow:5000"}
    assert SERVICES["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")


def test_no_secret_in_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for m in re.finditer(r"://[^:/\s]+:([^@\s]+)@", text):
        assert m.group(1).startswith("${POSTGRES_PASSWORD"), m.group(0)
    for key, value in _walk(COMPOSE):
        if "PASSWORD" in key.upper():
            assert str(value).startswith("${"), (key, value)
    env_example = (ROOT / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=CHANGE-ME" in env_example


def _walk(node: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _walk(v, str(k))]
    if isinstance(node, list):
        return [kv for v in node for kv in _walk(v, key)]
    return [(key, node)]


@pytest.mark.parametrize("service", SIGNTUNE)
def test_commands_are_real_study_subcommands(service: str) -> None:
    args = [expand(str(a)) for a in SERVICES[service]["command"]]
    res = subprocess.run(
        [sys.executable, "-m", "signtune.cli", *args, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 0, (args, res.stderr)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("SIGNTUNE_REQUIRE_COMPOSE") == "1":
            pytest.fail("docker-compose is required here (SIGNTUNE_REQUIRE_COMPOSE=1) but not installed")
        pytest.skip("docker-compose (Debian package) is not installed; .ci/run installs it")
    for name in ("docker-compose.yml", ".env.example", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    res = subprocess.run([exe, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "worker" in res.stdout
