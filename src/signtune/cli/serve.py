"""Servers on a study's stores, bound to 127.0.0.1 by default: the dashboard and the MLflow UI."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from signtune.cli.app import (
    StorageOpt,
    StudyOpt,
    app,
    err,
    handle_errors,
    load,
    out,
    quiet,
    tracking_override,
)
from signtune.errors import ConfigError, Problem


def _port_free(host: str, port: int) -> None:
    """Refuse a port another server holds, before starting ours on it.

    Raises:
        ConfigError: the address is in use (or cannot be bound).
    """
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                Problem(
                    f"--port {port}",
                    f"cannot be used on {host}: {exc.strerror or exc}",
                    f"pick another, e.g. --port {port + 1}",
                )
            ) from None


@app.command()
@handle_errors
def dashboard(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; keep 127.0.0.1 unless others must reach it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study's storage (read side; a running study is not disturbed)."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from signtune.storage import create_storage, mask_url

    quiet()
    spec, _, _ = load(study, {"storage": storage})
    _port_free(host, port)
    artifacts = spec.dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    err.print(
        f"optuna-dashboard for {spec.name} ({mask_url(spec.storage)}) on http://{host}:{port}/  (Ctrl-C stops it)"
    )
    # No heartbeat thread: the dashboard only reads and annotates; it never runs trials.
    run_server(
        create_storage(spec.storage),
        host=host,
        port=port,
        artifact_store=FileSystemArtifactStore(str(artifacts)),
    )


@app.command("mlflow-ui")
@handle_errors
def mlflow_ui(
    study: StudyOpt = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Open the MLflow UI on the study's tracking store (binds 127.0.0.1 by default)."""
    import subprocess

    spec, _, _ = load(study, tracking_override(tracking_uri, False))
    uri = spec.tracking_uri
    if uri.startswith(("http://", "https://")):
        out.print(f"The tracking store is a server already: open {uri}")
        return
    _port_free(host, port)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    err.print(f"MLflow UI for {spec.name} on http://{host}:{port}/  (Ctrl-C stops it)")
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:  # the server got the Ctrl-C too and stops on its own
        raise typer.Exit(0) from None
    raise typer.Exit(code)
