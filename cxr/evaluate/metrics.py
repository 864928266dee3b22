"""Test metrics and their bootstrap intervals: image-level (stratified by class) and patient-level (cluster).

Every metric comes from scikit-learn except the expected calibration error (10 equal-width bins), and every
interval from `scipy.stats.bootstrap` (percentile method, resampling **within each class**: a stratified
bootstrap, as in pROC, so that every resample holds both classes and AUROC is always defined). With patient ids
(`groups`), patients are resampled instead of images (a cluster bootstrap) and that interval is the headline.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

METRICS = ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy",
           "brier", "ece")
METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC (average precision)", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
    "specificity": "Specificity", "precision": "Precision (PPV)", "f1": "F1", "balanced_accuracy": "Balanced accuracy",
    "brier": "Brier score", "ece": "Expected calibration error",
}
CI_METHOD = "percentile bootstrap (scipy.stats.bootstrap), resampling within each class (stratified)"
PATIENT_CI_METHOD = ("percentile cluster bootstrap (scipy.stats.bootstrap), resampling patients within each class "
                     "(stratified by the patient's label); every image of a drawn patient enters the resample")


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def check_inputs(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """0/1 integer labels and float64 probabilities of equal length, or a clear error."""
    y = np.asarray(y).reshape(-1)
    p = np.asarray(p, dtype="float64").reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("no samples to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1; got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probabilities must be finite and lie in [0, 1]")
    return y.astype(int), p


# ---------------------------------------------------------------------------------------------------------------
# Point metrics
# ---------------------------------------------------------------------------------------------------------------

def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """ECE: the sample-weighted mean |observed positive rate - mean predicted probability| over equal-width bins."""
    y, p = check_inputs(y, p)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)  # p = 1.0 goes to the last bin
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins))
    return float(gap.sum() / count.sum())  # sum_b n_b/N * |mean_y_b - mean_p_b|


def metric_values(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """All metrics at one threshold (positive when p >= threshold); NaN where a metric is undefined
    (e.g. AUROC with a single class, precision with no positive prediction)."""
    y, p = check_inputs(y, p)
    return _metric_values(y, p, threshold)


def _metric_values(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    yhat = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases are reported as NaN below
        out = {
            "auroc": skm.roc_auc_score(y, p) if both else math.nan,
            "auprc": skm.average_precision_score(y, p) if both else math.nan,
            "accuracy": skm.accuracy_score(y, yhat),
            "sensitivity": skm.recall_score(y, yhat, pos_label=1, zero_division=np.nan),
            "specificity": skm.recall_score(y, yhat, pos_label=0, zero_division=np.nan),
            "precision": skm.precision_score(y, yhat, zero_division=np.nan),
            "f1": skm.f1_score(y, yhat, zero_division=np.nan),
            "balanced_accuracy": skm.balanced_accuracy_score(y, yhat) if both else math.nan,
            "brier": skm.brier_score_loss(y, p, pos_label=1),
            "ece": expected_calibration_error(y, p),
        }
    return {k: float(v) for k, v in out.items()}


def confusion(y: Any, p: Any, threshold: float) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] at `threshold` (rows: true class 0/1, columns: predicted class 0/1)."""
    y, p = check_inputs(y, p)
    return skm.confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap intervals
# ---------------------------------------------------------------------------------------------------------------

def _class_metrics(p_neg: np.ndarray, p_pos: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """The METRICS of many resamples at once: (len(thresholds) * len(METRICS), ...) for scores (..., n0), (..., n1).

    The bootstrap needs this 2 x 2,000 times per task; scikit-learn's per-call overhead would make that take
    minutes, so these are the same definitions in vectorised NumPy (the tests check them against scikit-learn:
    AUROC as the Mann-Whitney statistic with tied scores counted half, AUPRC as scikit-learn's step-wise average
    precision, ECE with the bins of `expected_calibration_error`).
    """
    n0, n1 = p_neg.shape[-1], p_pos.shape[-1]
    n = n0 + n1
    scores = np.concatenate([p_neg, p_pos], axis=-1)
    labels = np.r_[np.zeros(n0), np.ones(n1)]
    ranks = stats.rankdata(scores, axis=-1)  # average ranks for ties
    auroc = (ranks[..., n0:].sum(-1) - n1 * (n1 + 1) / 2) / (n0 * n1)
    # average precision: each positive adds 1/n1 recall at the end of its group of tied scores
    order = np.argsort(-scores, axis=-1, kind="stable")
    s = np.take_along_axis(scores, order, axis=-1)
    lab = labels[order]
    tp = np.cumsum(lab, axis=-1)
    pos = np.arange(n)
    group_end = np.ones(s.shape, bool)
    group_end[..., :-1] = s[..., 1:] != s[..., :-1]
    end = np.where(group_end, pos, n - 1)
    end = np.flip(np.minimum.accumulate(np.flip(end, -1), axis=-1), -1)  # index of each sample's group end
    precision_at_end = np.take_along_axis(tp, end, axis=-1) / (end + 1)
    auprc = (lab * precision_at_end).sum(-1) / n1
    brier = ((p_neg ** 2).sum(-1) + ((1 - p_pos) ** 2).sum(-1)) / n
    bins = np.minimum((scores * 10).astype(int), 9)
    gap = np.zeros(scores.shape[:-1])
    for b in range(10):
        inside = bins == b
        gap += np.abs((inside * labels).sum(-1) - (inside * scores).sum(-1))
    ece = gap / n
    out = []
    for t in thresholds:
        tp_t = (p_pos >= t).sum(-1)
        fp = (p_neg >= t).sum(-1)
        fn, tn = n1 - tp_t, n0 - fp
        sens, spec = tp_t / n1, tn / n0
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(tp_t + fp > 0, tp_t / np.maximum(tp_t + fp, 1), np.nan)
            f1 = np.where(2 * tp_t + fp + fn > 0, 2 * tp_t / np.maximum(2 * tp_t + fp + fn, 1), np.nan)
        out += [auroc, auprc, (tp_t + tn) / n, sens, spec, prec, f1, (sens + spec) / 2, brier, ece]
    return np.stack([np.broadcast_to(np.asarray(o, float), scores.shape[:-1]) for o in out], axis=0)


def _weighted_metrics(p: np.ndarray, y: np.ndarray, w: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """The METRICS of many weighted resamples at once: (len(thresholds) * len(METRICS), B) for weights (B, n).

    A cluster resample is the fixed sample (p, y) with integer weights w (how often each image was drawn), so
    these are the definitions of `_class_metrics` with weights: AUROC as the weighted Mann-Whitney statistic
    (ties half), AUPRC as step-wise average precision over the distinct scores, Brier and ECE as weighted means.
    With 0/1-or-more integer weights they equal scikit-learn's metrics on the expanded resample (tested).
    """
    w = np.asarray(w, float).reshape(-1, p.size)
    order = np.argsort(-p, kind="stable")
    s = p[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first position of each distinct score (descending)
    wpos, wneg = w * y, w * (1 - y)
    pos_g = np.add.reduceat(wpos[:, order], starts, axis=1)
    neg_g = np.add.reduceat(wneg[:, order], starts, axis=1)
    w1, w0 = pos_g.sum(1), neg_g.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        neg_below = w0[:, None] - np.cumsum(neg_g, axis=1)
        auroc = (pos_g * (neg_below + 0.5 * neg_g)).sum(1) / (w0 * w1)
        tp_g, fp_g = np.cumsum(pos_g, axis=1), np.cumsum(neg_g, axis=1)
        precision_g = np.divide(tp_g, tp_g + fp_g, out=np.zeros_like(tp_g), where=tp_g + fp_g > 0)
        auprc = (pos_g * precision_g).sum(1) / w1
        n = w0 + w1
        brier = (w * (p - y) ** 2).sum(1) / n
        onehot = np.eye(10)[np.minimum((p * 10).astype(int), 9)]  # (n, 10): the bins of expected_calibration_error
        ece = np.abs(wpos @ onehot - (w * p) @ onehot).sum(1) / n
        out = []
        for t in thresholds:
            above = (p >= t).astype(float)
            tp, fp = wpos @ above, wneg @ above
            fn, tn = w1 - tp, w0 - fp
            sens, spec = tp / w1, tn / w0
            prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), np.nan)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), np.nan)
            out += [auroc, auprc, (tp + tn) / n, sens, spec, prec, f1, (sens + spec) / 2, brier, ece]
    return np.stack(out, axis=0)


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


def _run_bootstrap(samples: tuple[np.ndarray, ...], statistic: Any, n_bootstrap: int, ci_level: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, distribution) of a stratified percentile bootstrap over two unpaired samples.

    A statistic that is undefined in some resamples (precision with no positive prediction) gets its interval from
    the defined ones (`np.nanpercentile`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on NaN in the distribution; handled below
        res = stats.bootstrap(samples, statistic, paired=False, vectorized=True, batch=250,
                              n_resamples=n_bootstrap, confidence_level=ci_level, method="percentile",
                              random_state=seed)
    low, high = np.array(res.confidence_interval.low), np.array(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution)
    alpha = (1.0 - ci_level) / 2.0
    for k in range(len(low)):
        if not (np.isfinite(low[k]) and np.isfinite(high[k])) and np.isfinite(dist[k]).any():
            low[k], high[k] = np.nanpercentile(dist[k], [100 * alpha, 100 * (1 - alpha)])
    return low, high, dist


def _resampler(y: np.ndarray, p: np.ndarray, thresholds: list[float], groups: Any = None
               ) -> tuple[tuple[np.ndarray, np.ndarray], Any] | None:
    """The two class samples and the vectorised statistic of the image or the patient bootstrap (None: too few).

    Image bootstrap: the negatives' and positives' scores. Patient bootstrap: the codes of the negative and of the
    positive patients; a resample of codes becomes per-image weights (how often its patient was drawn).
    """
    if groups is None:
        neg, pos = p[y == 0], p[y == 1]
        if len(neg) < 2 or len(pos) < 2:
            return None

        def statistic(p_neg: np.ndarray, p_pos: np.ndarray, axis: int = -1) -> np.ndarray:
            return _class_metrics(np.moveaxis(p_neg, axis, -1), np.moveaxis(p_pos, axis, -1), thresholds)

        return (neg, pos), statistic
    codes, stratum = patient_strata(y, groups)
    neg, pos = np.flatnonzero(stratum == 0), np.flatnonzero(stratum == 1)
    if len(neg) < 2 or len(pos) < 2:
        return None
    n_patients = stratum.size

    def statistic(c_neg: np.ndarray, c_pos: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.concatenate([np.moveaxis(c_neg, axis, -1), np.moveaxis(c_pos, axis, -1)], axis=-1)
        lead = drawn.shape[:-1]
        drawn = drawn.reshape(-1, drawn.shape[-1]).astype(int)
        rows = np.arange(drawn.shape[0])[:, None] * n_patients
        counts = np.bincount((rows + drawn).ravel(), minlength=drawn.shape[0] * n_patients)
        weights = counts.reshape(-1, n_patients)[:, codes]
        return _weighted_metrics(p, y.astype(float), weights, thresholds).reshape(-1, *lead)

    return (neg, pos), statistic


def _bootstrap(y: np.ndarray, p: np.ndarray, thresholds: list[float], n_bootstrap: int, ci_level: float,
               seed: int, groups: Any = None) -> list[dict[str, dict[str, float]]]:
    """{metric: {value, ci_low, ci_high}} for each threshold, from one stratified bootstrap.

    Values are scikit-learn's on the full sample. Without `groups` the positives' and the negatives' scores
    are resampled separately (two samples, `paired=False`): every resample keeps the class counts, so AUROC is
    always defined and the interval reflects the test set's own prevalence (the stratified bootstrap of pROC).
    With `groups` (patient ids) PATIENTS are resampled within their class instead (a cluster bootstrap, see
    `patient_strata`), each drawn patient bringing all its images. With one image per patient both give the same
    resamples for the same seed. A metric that is still undefined in some resamples gets its interval from the
    defined ones (`np.nanpercentile`).
    """
    values = [_metric_values(y, p, t) for t in thresholds]
    results = [{m: {"value": v[m], "ci_low": math.nan, "ci_high": math.nan} for m in METRICS} for v in values]
    setup = _resampler(y, p, thresholds, groups)
    if n_bootstrap <= 0 or setup is None:
        return results  # no interval without resamples or with (almost) a single class
    low, high, _ = _run_bootstrap(*setup, n_bootstrap, ci_level, seed)
    for j, r in enumerate(results):
        for i, m in enumerate(METRICS):
            r[m]["ci_low"], r[m]["ci_high"] = float(low[j * len(METRICS) + i]), float(high[j * len(METRICS) + i])
    return results


def bootstrap_draws(y: Any, p: Any, threshold: float, groups: Any = None, n_bootstrap: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """The bootstrap distribution behind the intervals: one row per resample, one column per metric (METRICS).

    The same resamples as `evaluate`/`task_report` with the same `groups`, `n_bootstrap` and `seed` (patient-level
    with `groups`, image-level without), e.g. for PPV/NPV across prevalences (`cxr.evaluate.clinical.prevalence_curves`)
    from the `sensitivity` and `specificity` columns. Empty when no interval can be computed.
    """
    y, p = check_inputs(y, p)
    setup = _resampler(y, p, [float(threshold)], groups)
    if n_bootstrap <= 0 or setup is None:
        return pd.DataFrame(columns=list(METRICS), dtype=float)
    _, _, dist = _run_bootstrap(*setup, n_bootstrap, 0.95, seed)
    return pd.DataFrame(dist.T, columns=list(METRICS)).rename_axis("resample")


def _with_image_intervals(y: np.ndarray, p: np.ndarray, thresholds: list[float], n_bootstrap: int,
                          ci_level: float, seed: int, groups: Any) -> list[dict[str, dict[str, float]]]:
    """Patient-level intervals as the headline (ci_low, ci_high) and the image-level ones beside them
    (image_ci_low, image_ci_high); the image-level ones alone when `groups` is None."""
    image = _bootstrap(y, p, thresholds, n_bootstrap, ci_level, seed)
    if groups is None:
        return image
    patient = _bootstrap(y, p, thresholds, n_bootstrap, ci_level, seed, groups=groups)
    for pat, img in zip(patient, image):
        for m in METRICS:
            pat[m].update(image_ci_low=img[m]["ci_low"], image_ci_high=img[m]["ci_high"])
    return patient


def _patient_counts(y: np.ndarray, groups: Any) -> dict[str, Any]:
    _, stratum = patient_strata(y, groups)
    return {"n_patients": int(stratum.size), "n_patients_positive": int(stratum.sum()),
            "ci_method": PATIENT_CI_METHOD, "image_ci_method": CI_METHOD}


def evaluate(y: Any, p: Any, threshold: float, n_bootstrap: int = 2000, ci_level: float = 0.95,
             seed: int = 0, groups: Any = None) -> dict[str, Any]:
    """Each metric at `threshold` as {"value", "ci_low", "ci_high"}, plus "confusion_matrix" [[tn, fp], [fn, tp]],
    "n", "n_positive" and "threshold".

    With `groups` (one patient id per image) the intervals are patient-level and each metric also holds the
    image-level "image_ci_low"/"image_ci_high"; "n_patients", "n_patients_positive", "ci_method" and
    "image_ci_method" are added (see `task_report`).
    """
    y, p = check_inputs(y, p)
    out: dict[str, Any] = _with_image_intervals(y, p, [float(threshold)], n_bootstrap, ci_level, seed, groups)[0]
    out.update(confusion_matrix=confusion(y, p, threshold), n=int(y.size), n_positive=int(y.sum()),
               threshold=float(threshold))
    if groups is not None:
        out.update(_patient_counts(y, groups))
    return out


def task_report(y: Any, p: Any, threshold: float, config: Any = None, n_bootstrap: int | None = None,
                ci_level: float | None = None, seed: int | None = None, groups: Any = None) -> dict[str, Any]:
    """One task's entry of `metrics.json`: metrics at the validation threshold and at 0.5, with intervals.

    Bootstrap settings come from `config` (n_bootstrap, ci_level, seed) unless given explicitly.

    Without `groups` each metric is {"value", "ci_low", "ci_high"} from the image-level stratified bootstrap
    (unchanged). With `groups` (the patient id of each image) the headline interval is patient-level and the
    image-level one is kept beside it:
    {"value", "ci_low", "ci_high", "image_ci_low", "image_ci_high"}, where ci_low/ci_high come from the cluster
    bootstrap of patients (method in the report's "ci_method" = PATIENT_CI_METHOD) and image_ci_low/high from
    the image bootstrap ("image_ci_method" = CI_METHOD), both with the same seed and number of resamples. The
    report then also holds "n_patients" and "n_patients_positive".
    """
    n_bootstrap = n_bootstrap if n_bootstrap is not None else getattr(config, "n_bootstrap", 2000)
    ci_level = ci_level if ci_level is not None else getattr(config, "ci_level", 0.95)
    seed = seed if seed is not None else getattr(config, "seed", 0)
    y, p = check_inputs(y, p)
    at_t, at_half = _with_image_intervals(y, p, [float(threshold), 0.5], n_bootstrap, ci_level, seed, groups)
    out = {
        "threshold": float(threshold),
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "at_threshold": at_t,
        "at_0.5": at_half,
        "confusion_matrix": confusion(y, p, threshold),
        "confusion_matrix_at_0.5": confusion(y, p, 0.5),
    }
    if groups is not None:
        out.update(_patient_counts(y, groups))
    return out
