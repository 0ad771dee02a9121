"""Which device a trial, a promotion or a translation runs on: one rule for every caller."""

from __future__ import annotations

import os

from signtune.errors import ConfigError, Problem


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; otherwise ``name``, checked.

    A worker pinned to one GPU (``--gpus``, which sets ``SIGNTUNE_GPU``) sees only that GPU,
    as device 0, so a ``cuda:N`` from the spec means its own GPU there.

    Raises:
        ConfigError: the name is not a device, or names CUDA on a machine without it.
    """
    import torch

    if name.startswith("cuda") and os.environ.get("SIGNTUNE_GPU"):
        return "cuda"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            Problem("run.device", f"is not a device: {name!r} ({exc})", "use auto, cpu or cuda:N")
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(Problem("run.device", f"is {name!r}, but CUDA is not available", "use auto or cpu"))
    return str(device)
