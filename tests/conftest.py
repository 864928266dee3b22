"""Shared fixtures: the ../shared data copy (skipped cleanly when absent) and a headless matplotlib."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout; the test is skipped when it is absent."""
    if not (SHARED_DATA / "chest-xray-pneumonia-224.zip").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
