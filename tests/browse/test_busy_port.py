"""`study dashboard` and `study mlflow-ui` on a port another server holds: exit 2, one message."""

from __future__ import annotations

import socket

import pytest
from tests.browse.conftest import BrowseProject, run_cli


@pytest.mark.parametrize("command", ["dashboard", "mlflow-ui"])
def test_a_busy_port_is_refused_with_the_fix(browse_project: BrowseProject, command: str) -> None:
    name = browse_project.new_study(trials=1, epochs=1, delay=0.0, tracking=True)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = run_cli(command, "--study", name, "--port", str(port), cwd=browse_project.root, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"--port {port}: cannot be used on 127.0.0.1" in res.stderr
    assert f"--port {port + 1}" in res.stderr and "Traceback" not in res.stderr
