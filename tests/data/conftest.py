"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.data.helpers import Dataset, write_dataset


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Dataset]:
    """``make_dataset(format=..., sizes=..., per_video=...)`` writes a clean dataset under tmp_path."""
    count = 0

    def make(**kwargs: Any) -> Dataset:
        nonlocal count
        count += 1
        return write_dataset(tmp_path / f"data{count}", **kwargs)

    return make
