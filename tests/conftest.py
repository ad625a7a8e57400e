"""Shared fixtures: where the shared ground truth lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERMTRACE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("CI"):  # CI has ../shared beside the clone: the ground-truth tests must run there
            pytest.fail(f"shared/ not found at {SHARED}")
        pytest.skip(f"shared/ not found at {SHARED} (set PERMTRACE_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def groundtruth_dir(shared_dir: Path) -> Path:
    return shared_dir / "groundtruth"
