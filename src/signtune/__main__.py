"""``study`` and ``python -m signtune``: the interrupt handlers first, then the CLI.

Installing them before anything slow is imported means a Ctrl-C at any instant, even while
torch or MLflow load, ends the command with one message and no traceback (see ``interrupts``).
"""

from __future__ import annotations

from signtune import interrupts


def main() -> None:
    interrupts.install()
    try:
        from signtune.cli import app

        app()
    finally:
        interrupts.ignore_from_now()


if __name__ == "__main__":
    main()
