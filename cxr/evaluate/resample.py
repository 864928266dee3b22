"""The one resampling engine of `cxr.evaluate`: the stratified cluster bootstrap.

Patients (every image its own patient without ids) are resampled with replacement within their class
(`patient_strata`), each drawn patient bringing all its images, so every resample keeps both classes. A resample is
image weights (`weights`) or image indices (`indices`). Three random streams, each as its callers always drew it
(same generator calls, same order, so a seed gives the same resamples):

- `bootstrap` (intervals of `metrics`, `calibration`): `scipy.stats.bootstrap` over the class samples of patient
  codes (scipy's generator from `seed`, batches of 250, negative patients first in each batch; BCa from scipy);
- `resample_indices` (a threshold re-chosen per resample): per call, the negative then the positive patients from
  the caller's Generator (`rng.choice`);
- `resample_weights` (the test resamples of `uncertainty.threshold_uncertainty`): all resamples of the negative
  patients, then all of the positive ones, from the caller's Generator.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

BATCH = 250  # resamples per call of the statistic in `bootstrap`


def patient_strata(y: Any, groups: Any) -> tuple[np.ndarray, np.ndarray]:
    """(patient code of each image, label stratum of each patient) for the cluster bootstrap.

    Codes follow the order of first appearance (`pandas.factorize`), so with one image per patient the patients of
    a class are in the same order as its images. A patient's stratum is its label; patients are single-class in
    this dataset, and a patient whose images mix classes is stratified by the majority label (ties: positive),
    its images keeping their own labels.
    """
    y = np.asarray(y).reshape(-1)
    codes, _ = pd.factorize(np.asarray(groups).reshape(-1))
    if codes.shape != y.shape:
        raise ValueError(f"groups and labels differ in length: {codes.size} vs {y.size}")
    if (codes < 0).any():
        raise ValueError("groups must not contain missing values")
    stratum = (np.bincount(codes, weights=y) / np.bincount(codes) >= 0.5).astype(int)
    return codes, stratum


def class_patients(y: Any, groups: Any = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(patient code of each image, (codes of the negative patients, codes of the positive patients)); with
    `groups=None` every image is its own patient (its code is its position)."""
    y = np.asarray(y).reshape(-1)
    codes, stratum = patient_strata(y, np.arange(y.size) if groups is None else groups)
    return codes, (np.flatnonzero(stratum == 0), np.flatnonzero(stratum == 1))


def weights(codes: np.ndarray, drawn: np.ndarray, n_patients: int) -> np.ndarray:
    """(B, n) image weights from drawn patient codes (B, k): how often each image's patient was drawn."""
    drawn = np.asarray(drawn).reshape(-1, np.shape(drawn)[-1]).astype(int)
    rows = np.arange(drawn.shape[0])[:, None] * n_patients
    counts = np.bincount((rows + drawn).ravel(), minlength=drawn.shape[0] * n_patients)
    return counts.reshape(-1, n_patients)[:, codes]


def indices(codes: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Image indices of one resample from its drawn patient codes: every image of each drawn patient, patient by
    patient in the order drawn, a patient's images in their own order."""
    order = np.argsort(codes, kind="stable")  # images grouped by patient
    counts = np.bincount(codes)
    starts = np.cumsum(counts) - counts
    lengths = counts[drawn]
    first = np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths)
    return order[first + np.arange(lengths.sum())]


def resample_indices(y: Any, groups: Any, rng: np.random.Generator) -> np.ndarray:
    """Image indices of one stratified resample (stream: per resample, negative then positive patients)."""
    codes, members = class_patients(y, groups)
    return indices(codes, np.concatenate([rng.choice(m, m.size) for m in members]))


def resample_weights(y: Any, groups: Any, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n) float image weights of stratified resamples (stream: all resamples of the negative
    patients, then all of the positive ones; a class without patients draws nothing)."""
    codes, members = class_patients(y, groups)
    counts = np.zeros((n_resamples, members[0].size + members[1].size))
    rows = np.arange(n_resamples)[:, None]
    for m in members:
        if m.size:
            np.add.at(counts, (rows, rng.choice(m, (n_resamples, m.size))), 1.0)
    return counts[:, codes]


def bootstrap(y: Any, groups: Any, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int,
              ci_level: float, seed: int, method: str = "BCa"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(low, high, distribution (k, n_resamples)) of `statistic(weights (B, n)) -> (k, B)` under the stratified
    cluster bootstrap, by `scipy.stats.bootstrap` (`method` "BCa" or "percentile"; the distribution is the same
    for both with the same seed; undefined interval bounds are NaN). None with fewer than two patients in a class
    or fewer than two resamples: no interval."""
    codes, (neg, pos) = class_patients(y, groups)
    if len(neg) < 2 or len(pos) < 2 or n_resamples <= 1:
        return None
    n_patients = neg.size + pos.size

    def of_codes(c_neg: np.ndarray, c_pos: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.concatenate([np.moveaxis(c_neg, axis, -1), np.moveaxis(c_pos, axis, -1)], axis=-1)
        lead = drawn.shape[:-1]
        out = np.asarray(statistic(weights(codes, drawn, n_patients)))
        return out.reshape(out.shape[0], *lead)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on NaN or a constant distribution; handled by the callers
        res = stats.bootstrap((neg, pos), of_codes, paired=False, vectorized=True, batch=BATCH,
                              n_resamples=n_resamples, confidence_level=ci_level, method=method, random_state=seed)
    low, high = np.asarray(res.confidence_interval.low, float), np.asarray(res.confidence_interval.high, float)
    return low, high, np.asarray(res.bootstrap_distribution, float)


def percentile(draws: Any, ci_level: float) -> tuple[float, float]:
    """The central `ci_level` range of the finite draws (NaN, NaN without any)."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, math.nan
    alpha = 100 * (1 - ci_level) / 2
    low, high = np.percentile(d, [alpha, 100 - alpha])
    return float(low), float(high)
