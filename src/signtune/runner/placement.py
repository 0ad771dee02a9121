"""Worker placement: one environment per worker, a GPU each or a share of the CPU cores."""

from __future__ import annotations

import os

from signtune.errors import ConfigError, Problem


def plan_workers(workers: int, gpus: list[int] | None, workers_per_gpu: int) -> list[dict[str, str]]:
    """One environment per worker: a GPU each (round robin), or a share of the CPU threads.

    GPU ids count the GPUs this process sees, as torch does: under ``CUDA_VISIBLE_DEVICES=2,3``,
    ``--gpus 0`` is the device named ``2`` (a UUID or MIG name works the same way).

    Raises:
        ConfigError: a GPU id past the devices ``CUDA_VISIBLE_DEVICES`` makes visible.
    """
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
        if names is not None and max(gpus) >= len(names):
            raise ConfigError(
                Problem(
                    "--gpus",
                    f"asks for GPU {max(gpus)}, but CUDA_VISIBLE_DEVICES={visible} makes {len(names)} visible",
                    f"use ids 0 to {len(names) - 1} (they count the visible GPUs), or --gpus all",
                )
            )
        return [
            {"CUDA_VISIBLE_DEVICES": names[g] if names else str(g), "SIGNTUNE_GPU": names[g] if names else str(g)}
            for g in gpus
            for _ in range(workers_per_gpu)
        ]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    return [
        {"CUDA_VISIBLE_DEVICES": "", "SIGNTUNE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        for _ in range(workers)
    ]


def parse_gpus(gpus: str | None) -> list[int] | None:
    """``all`` -> every visible GPU; ``0,1,3`` -> those; None -> CPU workers.

    Raises:
        ConfigError: a malformed list, or ids past the GPUs CUDA makes visible.
    """
    if gpus is None:
        return None
    if gpus == "all":
        n = visible_gpus()
        if n == 0:
            raise ConfigError(
                Problem("--gpus all", "no CUDA GPU is visible on this machine", "drop --gpus to use CPU workers")
            )
        return list(range(n))
    try:
        ids = [int(x) for x in gpus.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            Problem(
                "--gpus", f"must be 'all' or a comma-separated list of GPU ids, but got {gpus!r}", "e.g. --gpus 0,1"
            )
        ) from None
    if not ids or any(i < 0 for i in ids):
        raise ConfigError(Problem("--gpus", f"must list GPU ids >= 0, but got {gpus!r}", "e.g. --gpus 0,1"))
    n = visible_gpus()
    if max(ids) >= n:
        fix = f"use ids 0 to {n - 1}, or --gpus all" if n else "drop --gpus to use CPU workers"
        raise ConfigError(Problem(f"--gpus {gpus}", f"asks for GPU {max(ids)}, but {n} CUDA GPU(s) are visible", fix))
    return ids


def visible_gpus() -> int:
    """The GPUs CUDA_VISIBLE_DEVICES leaves visible (NVML: no CUDA context in the supervisor)."""
    import torch

    return int(torch.cuda.device_count())
