"""Worker placement: GPU ids through the parent's CUDA_VISIBLE_DEVICES, CPU thread shares."""

from __future__ import annotations

import pytest
import torch

from signtune.device import resolve_device
from signtune.errors import ConfigError
from signtune.runner import plan_workers


def test_gpu_ids_count_the_gpus_the_parent_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    plan = plan_workers(1, [0, 1], 2)
    assert [w["CUDA_VISIBLE_DEVICES"] for w in plan] == ["2", "2", "3", "3"]
    assert [w["SIGNTUNE_GPU"] for w in plan] == ["2", "2", "3", "3"]


def test_gpu_uuids_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa, MIG-bbbb")
    assert [w["CUDA_VISIBLE_DEVICES"] for w in plan_workers(1, [1], 1)] == ["MIG-bbbb"]


def test_gpu_id_past_the_visible_ones_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(ConfigError, match=r"asks for GPU 2, but CUDA_VISIBLE_DEVICES=2,3 makes 2 visible"):
        plan_workers(1, [0, 2], 1)


def test_without_cuda_visible_devices_ids_are_used_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [w["CUDA_VISIBLE_DEVICES"] for w in plan_workers(1, [0, 3], 1)] == ["0", "3"]


def test_cpu_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    plan = plan_workers(4, None, 1)
    assert [w["SIGNTUNE_THREADS"] for w in plan] == ["2"] * 4
    assert all(w["CUDA_VISIBLE_DEVICES"] == "" for w in plan)


def test_a_gpu_worker_maps_cuda_n_to_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNTUNE_GPU", "3")
    assert resolve_device("cuda:3") == "cuda"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.delenv("SIGNTUNE_GPU")
    if torch.cuda.is_available():
        assert resolve_device("cuda:1") == "cuda:1"
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")
