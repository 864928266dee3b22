"""The curves a figure draws, computed once here so that `cxr.plots` only draws: ROC and precision-recall with the
operating point (`discrimination`), and the reliability series before / after calibration with their smoothed
bootstrap band, binned points and Wilson intervals, and scores (`reliability`). Every resampling goes through
`cxr.evaluate.resample` (via `calibration.smoothed_reliability`); the plots take no bootstrap settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from cxr.evaluate.calibration import calibration_metrics, reliability_table, smoothed_reliability
from cxr.evaluate.metrics import check_inputs, wilson_bounds


@dataclass(frozen=True)
class Discrimination:
    """ROC and precision-recall curves of one task's scores, with the operating point on each.

    fpr, tpr: the ROC curve (`sklearn.metrics.roc_curve`); recall, precision: the precision-recall curve; point:
    {"fpr", "tpr", "precision"} at `threshold` (NaN where a class or a positive call is missing); p: the scores
    (for the histogram under a reliability panel)."""

    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float
    recall: np.ndarray
    precision: np.ndarray
    average_precision: float
    prevalence: float
    threshold: float
    point: dict[str, float]
    p: np.ndarray


@dataclass(frozen=True)
class ReliabilitySeries:
    """One series of a reliability diagram: its name, the smoothed curve (`smoothed_reliability`: predicted,
    observed, low, high), the equal-width bins (`reliability_table` plus the Wilson interval of each bin's
    observed rate: ci_low, ci_high) and the scores (`calibration_metrics`)."""

    name: str
    curve: pd.DataFrame
    bins: pd.DataFrame
    scores: dict[str, float]


@dataclass(frozen=True)
class Reliability:
    """The series of a reliability diagram (before, and after calibration when given) and how their intervals
    were made: `n_bins` equal-width bins with Wilson `ci_level` intervals, bands from `n_bootstrap` resamples
    (of patients when `by_patient`)."""

    series: tuple[ReliabilitySeries, ...]
    n_bins: int
    ci_level: float
    n_bootstrap: int
    by_patient: bool


@dataclass(frozen=True)
class Curves:
    """What the test figures of one task draw: its `Discrimination` and its `Reliability`."""

    discrimination: Discrimination
    reliability: Reliability


def discrimination(y: Any, p: Any, threshold: float) -> Discrimination:
    """ROC and precision-recall curves of (y, p), the areas under them, and the operating point at `threshold`
    (a call is positive when p >= threshold)."""
    y, p = check_inputs(y, p)
    called = p >= threshold
    point = {"tpr": float(called[y == 1].mean()) if (y == 1).any() else np.nan,
             "fpr": float(called[y == 0].mean()) if (y == 0).any() else np.nan,
             "precision": float(y[called].mean()) if called.any() else np.nan}
    fpr, tpr, _ = skm.roc_curve(y, p)
    precision, recall, _ = skm.precision_recall_curve(y, p)
    return Discrimination(fpr=fpr, tpr=tpr, auroc=float(skm.roc_auc_score(y, p)), recall=recall,
                          precision=precision, average_precision=float(skm.average_precision_score(y, p)),
                          prevalence=float(y.mean()), threshold=float(threshold), point=point, p=p)


def binned_points(y: Any, p: Any, n_bins: int, ci_level: float) -> pd.DataFrame:
    """`reliability_table` (equal-width bins of p) with the Wilson `ci_level` interval of each bin's observed rate
    (ci_low, ci_high; NaN for an empty bin)."""
    table = reliability_table(y, p, n_bins)
    bounds = [wilson_bounds(r, n, ci_level) for r, n in zip(table["observed_rate"], table["count"])]
    return table.assign(ci_low=[b[0] for b in bounds], ci_high=[b[1] for b in bounds])


def reliability(y: Any, p_raw: Any, p_cal: Any = None, *, groups: Any = None, n_bootstrap: int, ci_level: float,
                seed: int, n_bins: int = 10,
                labels: Sequence[str] = ("before calibration", "after calibration")) -> Reliability:
    """The reliability series of `p_raw` (and of `p_cal` when given): each with its smoothed curve and bootstrap
    band (patients resampled within each class with `groups`; `n_bootstrap` = 0: no band), binned points with
    Wilson intervals, and calibration scores."""
    series = []
    for name, p in zip(labels, (p_raw, p_cal)):
        if p is None:
            continue
        curve = smoothed_reliability(y, p, groups, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed)
        series.append(ReliabilitySeries(name=name, curve=curve, bins=binned_points(y, p, n_bins, ci_level),
                                        scores=calibration_metrics(y, p)))
    return Reliability(series=tuple(series), n_bins=n_bins, ci_level=ci_level, n_bootstrap=n_bootstrap,
                       by_patient=groups is not None)


def task_curves(y: Any, p: Any, threshold: float, p_cal: Any = None, *, groups: Any = None, n_bootstrap: int,
                ci_level: float, seed: int, n_bins: int = 10) -> Curves:
    """`discrimination` and `reliability` of one task's scores: what its test figures draw."""
    return Curves(discrimination=discrimination(y, p, threshold),
                  reliability=reliability(y, p, p_cal, groups=groups, n_bootstrap=n_bootstrap, ci_level=ci_level,
                                          seed=seed, n_bins=n_bins))
