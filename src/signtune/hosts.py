"""This machine's name in trial attrs and MLflow tags (``SIGNTUNE_HOST`` overrides the hostname).

Reaping compares it with the trials' ``host`` attr: a pid is only meaningful on its own host.
"""

from __future__ import annotations

import os
import socket


def host_id() -> str:
    """This machine's name (``SIGNTUNE_HOST``, else the hostname)."""
    return os.environ.get("SIGNTUNE_HOST") or socket.gethostname()
