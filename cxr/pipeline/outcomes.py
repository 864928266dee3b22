"""The data types the study's steps pass on: a split's scores (`Scores`) and what one task produced
(`TaskOutcome`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr import train


@dataclass
class Scores:
    """One set of scored rows of a task: positions (into prepared.index / images), 0/1 labels, probabilities, the
    probabilities after the calibration fitted on the out-of-fold predictions (equal to `p` with calibration
    "none"), and the children (patient ids)."""

    positions: np.ndarray
    y: np.ndarray
    p: np.ndarray
    p_calibrated: np.ndarray
    groups: np.ndarray


@dataclass
class TaskOutcome:
    """What `run_task` produced for one task."""

    task: str
    result: train.TrainResult  # the fold ensemble, its members, the out-of-fold evidence, timings
    threshold: float  # chosen on the out-of-fold predictions by config.threshold_policy (uncalibrated probability)
    calibrator: dict[str, Any] | None  # fitted on the out-of-fold predictions, or None
    oof: Scores  # the training children, each scored by the fold model that never saw it
    test: Scores  # the official test, scored once in this run by the ensemble
    report: dict[str, Any]  # the task's entry of metrics.json
    stability: pd.DataFrame  # the threshold policies on bootstrap resamples of the out-of-fold predictions
    draws: pd.DataFrame  # patient-level bootstrap draws of the test metrics at the threshold
    predictions: pd.DataFrame  # every out-of-fold and test prediction (also predictions_<task>.csv)
    model_dir: Path  # the saved model folder (model.keras + model.json)
