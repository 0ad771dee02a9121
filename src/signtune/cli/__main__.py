"""``python -m signtune.cli``."""

from signtune.cli import main

main()
