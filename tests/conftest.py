"""Shared fixtures: the ../shared data copy (skipped cleanly when absent) and a headless matplotlib."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
# CXR_HIDE_SHARED=1 runs the suite as a newcomer's fresh clone would, with no ../shared beside it (the package's
# own lookup, cxr.data.sources, honours the same setting); .ci/run runs the suite once that way.
SHARED_HIDDEN = os.environ.get("CXR_HIDE_SHARED", "").strip().lower() in ("1", "true", "yes")
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout; the test is skipped when it is absent."""
    if SHARED_HIDDEN or not (SHARED_DATA / "chest-xray-pneumonia-224.zip").is_file():
        pytest.skip("../shared/data hidden (CXR_HIDE_SHARED=1)" if SHARED_HIDDEN else
                    f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
