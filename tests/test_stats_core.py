"""The statistics core keeps its numbers: every public entry point of cxr.evaluate's metrics, threshold,
uncertainty and calibration intervals, on fixed synthetic predictions, against tests/fixtures/stats_pins.json
(written by tests/fixtures/make_stats_pins.py before the statistics were rebuilt into one core)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _pins_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_stats_pins", FIXTURES / "make_stats_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _differences(got: Any, want: Any, where: str = "") -> list[str]:
    """Every place where got and want differ (floats by more than 1e-12, NaN equal to NaN)."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{where}: keys {sorted(got) if isinstance(got, dict) else type(got)} != {sorted(want)}"]
        return [d for k in want for d in _differences(got[k], want[k], f"{where}/{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got!r} != {want!r}"]
        return [d for i, (a, b) in enumerate(zip(got, want)) for d in _differences(a, b, f"{where}[{i}]")]
    if isinstance(want, float) or isinstance(got, float):
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return [f"{where}: {got!r} != {want!r}"]
        if (math.isnan(want) and math.isnan(got)) or got == want:  # NaN and infinities
            return []
        return [] if abs(got - want) <= 1e-12 else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


@pytest.fixture(scope="module")
def pins() -> tuple[dict[str, Any], dict[str, Any]]:
    got = json.loads(json.dumps(_pins_module().compute_pins(), allow_nan=True))
    want = json.loads((FIXTURES / "stats_pins.json").read_text())
    return got, want


def test_the_fixture_holds_every_entry_point(pins):
    got, want = pins
    assert set(got) == set(want)
    assert want["task_report_patients"]["n_patients"] == 70  # the synthetic children, several images each
    assert want["task_report_patients"]["n"] > 140


@pytest.mark.parametrize("entry", ["metric_values", "confusion", "ece", "task_report_images",
                                   "task_report_patients", "child_report", "bootstrap_draws_images",
                                   "bootstrap_draws_patients", "wilson_interval", "choose", "choose_threshold",
                                   "stability_patients", "stability_images", "stability_summary",
                                   "describe_stability", "threshold_uncertainty_patients",
                                   "threshold_uncertainty_images", "describe_threshold_uncertainty",
                                   "coverage_simulation", "method_comparison", "calibration_intervals",
                                   "calibration_intervals_images", "smoothed_reliability"])
def test_numbers_are_unchanged(pins, entry):
    got, want = pins
    assert entry in want
    differences = _differences(got[entry], want[entry], entry)
    assert not differences, "\n".join(differences[:10])
