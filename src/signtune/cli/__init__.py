"""The ``study`` command group, one module per group of commands.

| module | commands |
|---|---|
| ``app`` | the Typer app, shared options, error mapping (exit 2 / 130 / 143), loading a study |
| ``study`` | run, worker, create, reap, doctor |
| ``status`` | status |
| ``refine`` | refine |
| ``results`` | export, report, the leaderboard |
| ``serve`` | dashboard, mlflow-ui |
| ``model`` | train, promote-best, translate |
| ``data`` | validate, data synth, data check, data pack |
"""

from __future__ import annotations

import importlib

from signtune.cli.app import app

# Importing a command module registers its commands, in this order in `study --help`.
for _group in ("study", "status", "refine", "results", "serve", "model", "data"):
    importlib.import_module(f"signtune.cli.{_group}")

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    """``python -m signtune.cli``: the interrupt handlers, then the app (see ``signtune.__main__``)."""
    from signtune import interrupts

    interrupts.install()
    try:
        app()
    finally:
        interrupts.ignore_from_now()
