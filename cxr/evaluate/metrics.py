"""Test metrics and their bootstrap intervals: image-level (stratified by class) and patient-level (cluster).

Every metric comes from scikit-learn except the expected calibration error (10 equal-width bins). The bootstrap is
`scipy.stats.bootstrap`, resampling **within each class** (a stratified bootstrap, as in pROC, so that every
resample holds both classes and AUROC is always defined); with patient ids (`groups`) patients are resampled
instead of images (a cluster bootstrap) and that interval is the headline. The interval drawn from the bootstrap
depends on the metric (CI_METHODS), chosen by simulation (`cxr.evaluate.uncertainty.method_comparison`: 1,000
simulated test sets in each of 7 designs, 60-400 positive and 40-234 negative patients, 1-5 correlated images per
patient, sensitivity 0.95-0.99, AUROC 0.96-0.9975), because percentile intervals under-cover near 0 and 1:

- proportions (accuracy, sensitivity, specificity, precision): the Wilson score interval on the effective sample
  size n / deff, where the design effect deff is the bootstrap variance over the binomial variance p(1-p)/n (at
  least 1); when the proportion is 0 or 1 the bootstrap has no variance to compare, and deff is the clustering
  bound sum(m_i^2) / sum(m_i) over the patients' image counts m_i (1 with one image per patient). Coverage of
  sensitivity and specificity 94.0-96.7% in every design (percentile 71-97%, BCa 70-97%: both fail when the
  sample sensitivity is 1);
- AUROC: a normal interval on the logit scale with the bootstrap standard error (delta method), which stays inside
  (0, 1) and is skewed away from 1; where every resample has the same AUROC (an AUROC of 1: separated classes),
  Newcombe's score interval for the Mann-Whitney statistic (Hanley-McNeil variance with N* = (n0 + n1) / 2;
  Newcombe 2006, Stat Med 25:559-573) widened by the clustering bound of the design effect, so that a perfect
  AUROC still gets an interval below 1. Near 1 no bootstrap-variance interval reaches 95%: this one covered
  92.8-93.9% at an AUROC of 0.99 (96.9% with 100 patients, where the score interval takes over), 91.9% at 0.9975
  and 94.0% at 0.96, about as BCa did (91.6-94.3%) and better than the percentile interval (82.8-93.7%);
- the others (AUPRC, F1, balanced accuracy, Brier score, ECE): BCa (`scipy.stats.bootstrap(method="BCa")`), or
  the percentile interval of the defined resamples where BCa is undefined (a constant distribution, or a metric
  undefined in some resamples).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from sklearn import metrics as skm

METRICS = ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy",
           "brier", "ece")
METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC (average precision)", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
    "specificity": "Specificity", "precision": "Precision (PPV)", "f1": "F1", "balanced_accuracy": "Balanced accuracy",
    "brier": "Brier score", "ece": "Expected calibration error",
}
PROPORTIONS = ("accuracy", "sensitivity", "specificity", "precision")
WILSON_ESS = ("Wilson score interval on the effective sample size n / deff (deff = bootstrap variance / binomial "
              "variance, at least 1; for a proportion of 0 or 1, deff = sum of squared image counts per patient / "
              "images)")
AUROC_LOGIT = ("normal interval on the logit scale with the bootstrap standard error; where the AUROC is 0 or 1 "
               "(every resample alike), Newcombe's score interval (Hanley-McNeil variance, N* = (n0 + n1) / 2) times "
               "the clustering design effect")
BCA = "BCa bootstrap; percentile of the defined resamples where BCa is undefined"
CI_METHODS = {m: WILSON_ESS if m in PROPORTIONS else AUROC_LOGIT if m == "auroc" else BCA for m in METRICS}
CI_METHOD = ("image bootstrap (scipy.stats.bootstrap), resampling images within each class (stratified); "
             "per metric: Wilson on the effective sample size for proportions, logit-scale normal interval for AUROC, "
             "BCa otherwise (ci_methods)")
PATIENT_CI_METHOD = ("cluster bootstrap (scipy.stats.bootstrap), resampling patients within each class (stratified by "
                     "the patient's label; every image of a drawn patient enters the resample); per metric: Wilson "
                     "on the effective sample size for proportions, logit-scale normal interval for AUROC, BCa "
                     "otherwise (ci_methods)")


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
                   seed: int, method: str = "BCa") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, distribution) of a stratified bootstrap over two unpaired samples (`method` as in scipy: "BCa"
    or "percentile"; the distribution is the same for both with the same seed). Undefined intervals are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on NaN or a constant distribution; handled by the callers
        res = stats.bootstrap(samples, statistic, paired=False, vectorized=True, batch=250,
                              n_resamples=n_bootstrap, confidence_level=ci_level, method=method,
                              random_state=seed)
    low, high = np.asarray(res.confidence_interval.low, float), np.asarray(res.confidence_interval.high, float)
    return low, high, np.asarray(res.bootstrap_distribution, float)


def _codes_resampler(y: np.ndarray, groups: Any, weighted: Callable[[np.ndarray], np.ndarray]
                     ) -> tuple[tuple[np.ndarray, np.ndarray], Any] | None:
    """The two class samples (codes of the negative and of the positive patients) and a vectorised statistic that
    turns a resample of codes into per-image weights (how often its patient was drawn) and returns
    `weighted(weights)` for weights (B, n). None with fewer than two patients in a class. `groups=None`: every
    image is its own patient."""
    codes, stratum = patient_strata(y, np.arange(y.size) if groups is None else groups)
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
        out = np.asarray(weighted(weights))
        return out.reshape(out.shape[0], *lead)

    return (neg, pos), statistic


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
    yf = y.astype(float)
    return _codes_resampler(y, groups, lambda w: _weighted_metrics(p, yf, w, thresholds))


# ---------------------------------------------------------------------------------------------------------------
# Intervals from a bootstrap distribution
# ---------------------------------------------------------------------------------------------------------------

def _z(ci_level: float) -> float:
    return float(stats.norm.ppf(0.5 + ci_level / 2))


def wilson_bounds(p: float, n: float, ci_level: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed on n (possibly fractional, effective) trials."""
    if not (np.isfinite(p) and np.isfinite(n) and n > 0):
        return math.nan, math.nan
    z2 = _z(ci_level) ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_design_effect(codes: np.ndarray, mask: np.ndarray | None = None) -> float:
    """sum(m_i^2) / sum(m_i) over the image counts m_i of each patient (among the images in `mask`): the design
    effect when all images of a patient agree (1 with one image per patient); NaN without images."""
    m = np.bincount(codes if mask is None else codes[mask])
    return float((m ** 2).sum() / m.sum()) if m.sum() else math.nan


def wilson_ess_interval(value: float, draws: Any, n: float, cluster_deff: float = 1.0,
                        ci_level: float = 0.95) -> tuple[float, float]:
    """Wilson interval of a proportion `value` on n trials at the effective sample size n / deff.

    deff = var(draws) / (p (1 - p) / n), at least 1: the variance the (cluster) bootstrap found over the binomial
    one. When `value` is 0 or 1 the binomial variance is 0, and p is taken at the Wilson centre instead; when the
    draws do not vary, deff = `cluster_deff` (see `cluster_design_effect`). NaN draws (a resample where the
    proportion is undefined) are left out.
    """
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not (np.isfinite(value) and n > 0) or d.size < 2:
        return math.nan, math.nan
    var = float(d.var(ddof=1))
    z2 = _z(ci_level) ** 2
    edge = value <= 0.0 or value >= 1.0
    ref = (n * value + z2 / 2) / (n + z2) if edge else value
    deff = var / (ref * (1 - ref) / n) if var > 1e-15 else cluster_deff
    if edge:
        deff = max(deff, cluster_deff)
    return wilson_bounds(value, n / max(deff, 1.0), ci_level)


def _newcombe_variance(theta: Any, n_pos: float, n_neg: float) -> Any:
    """Hanley-McNeil variance of the Mann-Whitney AUROC with Newcombe's N* = (n0 + n1) / 2 for both class sizes."""
    n_star = (n_pos + n_neg) / 2
    return theta * (1 - theta) / (n_pos * n_neg) * (1 + (n_star - 1) * ((1 - theta) / (2 - theta)
                                                                        + theta / (1 + theta)))


def auroc_score_interval(value: float, draws: Any, n_pos: float, n_neg: float, cluster_deff: float = 1.0,
                         ci_level: float = 0.95) -> tuple[float, float]:
    """Newcombe's score interval for AUROC: the theta with (value - theta)^2 <= z^2 deff V(theta), V the
    Hanley-McNeil variance with N* (`_newcombe_variance`), deff = var(draws) / V(value) (the clustering, and the
    departure of the scores from Hanley-McNeil's model, that the bootstrap sees), or `cluster_deff` when the draws
    do not vary. Finite also for an AUROC of 0 or 1, where `auroc_interval` uses it. (Hanley-McNeil overstates the
    variance of well-separated binormal scores: with deff held at 1 or more it covered 96.6-99.8% in the simulation
    at 20-115% more width; with the bootstrap deff 91.1-93.9%, `uncertainty.method_comparison`.)"""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not (np.isfinite(value) and n_pos > 0 and n_neg > 0) or d.size < 2:
        return math.nan, math.nan
    var = float(d.var(ddof=1))
    v0 = _newcombe_variance(value, n_pos, n_neg)
    deff = var / v0 if var > 1e-15 and v0 > 0 else cluster_deff
    z2 = _z(ci_level) ** 2

    def gap(theta: float) -> float:
        return (value - theta) ** 2 - z2 * deff * _newcombe_variance(theta, n_pos, n_neg)

    tiny = 1e-12
    low = optimize.brentq(gap, 0.0, min(value, 1 - tiny)) if value > tiny else 0.0
    high = optimize.brentq(gap, max(value, tiny), 1.0) if value < 1 - tiny else 1.0
    return float(low), float(high)


def logit_interval(value: float, draws: Any, ci_level: float = 0.95) -> tuple[float, float]:
    """expit(logit(value) -/+ z se / (value (1 - value))), se the standard deviation of the (defined) draws: a
    normal interval on the logit scale (delta method). NaN when value is 0 or 1 or the draws do not vary."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    se = float(d.std(ddof=1)) if d.size > 1 else math.nan
    if not (np.isfinite(value) and 0.0 < value < 1.0 and se > 1e-12):
        return math.nan, math.nan
    half = _z(ci_level) * se / (value * (1 - value))
    centre = math.log(value / (1 - value))
    return float(special.expit(centre - half)), float(special.expit(centre + half))


def auroc_interval(value: float, draws: Any, n_pos: float, n_neg: float, cluster_deff: float = 1.0,
                   ci_level: float = 0.95) -> tuple[float, float]:
    """The AUROC interval of CI_METHODS: `logit_interval`, or where it is undefined (an AUROC of 0 or 1, draws that
    do not vary) `auroc_score_interval` with the clustering design effect `cluster_deff`."""
    low, high = logit_interval(value, draws, ci_level)
    if np.isfinite(low) or not np.isfinite(value):
        return low, high
    return auroc_score_interval(value, np.full(2, value), n_pos, n_neg, cluster_deff, ci_level)


def _percentile(draws: np.ndarray, ci_level: float) -> tuple[float, float]:
    d = draws[np.isfinite(draws)]
    if d.size == 0:
        return math.nan, math.nan
    alpha = 100 * (1 - ci_level) / 2
    low, high = np.percentile(d, [alpha, 100 - alpha])
    return float(low), float(high)


def _metric_interval(metric: str, value: float, draws: np.ndarray, bca: tuple[float, float], y: np.ndarray,
                     p: np.ndarray, threshold: float, codes: np.ndarray, ci_level: float
                     ) -> tuple[float, float, bool]:
    """(low, high, fell_back) of one metric by its CI_METHODS rule; fell_back: BCa was undefined (percentile)."""
    if not np.isfinite(value):
        return math.nan, math.nan, False
    if metric in PROPORTIONS:
        called = p >= threshold
        mask = {"accuracy": np.ones(y.size, bool), "sensitivity": y == 1, "specificity": y == 0,
                "precision": called}[metric]
        return (*wilson_ess_interval(value, draws, int(mask.sum()), cluster_design_effect(codes, mask), ci_level),
                False)
    if metric == "auroc":
        return (*auroc_interval(value, draws, int(y.sum()), int((1 - y).sum()), cluster_design_effect(codes),
                                ci_level), False)
    if np.isfinite(bca).all() and np.isfinite(draws).all():
        return float(bca[0]), float(bca[1]), False
    return (*_percentile(draws, ci_level), True)


def _bootstrap(y: np.ndarray, p: np.ndarray, thresholds: list[float], n_bootstrap: int, ci_level: float,
               seed: int, groups: Any = None, bca: bool = True
               ) -> tuple[list[dict[str, dict[str, float]]], list[list[str]]]:
    """({metric: {value, ci_low, ci_high}} for each threshold, and per threshold the metrics whose BCa interval
    was undefined), from one stratified bootstrap.

    Values are scikit-learn's on the full sample. Without `groups` the positives' and the negatives' scores
    are resampled separately (two samples, `paired=False`): every resample keeps the class counts, so AUROC is
    always defined and the interval reflects the test set's own prevalence (the stratified bootstrap of pROC).
    With `groups` (patient ids) PATIENTS are resampled within their class instead (a cluster bootstrap, see
    `patient_strata`), each drawn patient bringing all its images. With one image per patient both give the same
    resamples and the same intervals for the same seed. Each interval follows CI_METHODS (module docstring).
    `bca=False` skips BCa's jackknife (the BCa metrics then fall back to percentile intervals): for simulations
    of the other metrics only.
    """
    values = [_metric_values(y, p, t) for t in thresholds]
    results = [{m: {"value": v[m], "ci_low": math.nan, "ci_high": math.nan} for m in METRICS} for v in values]
    fallbacks: list[list[str]] = [[] for _ in thresholds]
    setup = _resampler(y, p, thresholds, groups)
    if n_bootstrap <= 1 or setup is None:
        return results, fallbacks  # no interval without resamples or with (almost) a single class
    low, high, dist = _run_bootstrap(*setup, n_bootstrap, ci_level, seed, method="BCa" if bca else "percentile")
    if not bca:
        low[:], high[:] = math.nan, math.nan
    codes = patient_strata(y, np.arange(y.size) if groups is None else groups)[0]
    for j, (t, r) in enumerate(zip(thresholds, results)):
        for i, m in enumerate(METRICS):
            k = j * len(METRICS) + i
            lo, hi, fell = _metric_interval(m, r[m]["value"], dist[k], (low[k], high[k]), y, p, t, codes, ci_level)
            r[m]["ci_low"], r[m]["ci_high"] = lo, hi
            if fell:
                fallbacks[j].append(m)
    return results, fallbacks


def bootstrap_draws(y: Any, p: Any, threshold: float, *, n_bootstrap: int, seed: int,
                    groups: Any = None) -> pd.DataFrame:
    """The bootstrap distribution behind the intervals: one row per resample, one column per metric (METRICS).

    The same resamples as `task_report` with the same `groups`, `n_bootstrap` and `seed` (patient-level with
    `groups`, image-level without), e.g. for PPV/NPV across prevalences (`cxr.evaluate.clinical.prevalence_curves`)
    from the `sensitivity` and `specificity` columns. Empty when no interval can be computed.
    """
    y, p = check_inputs(y, p)
    setup = _resampler(y, p, [float(threshold)], groups)
    if n_bootstrap <= 1 or setup is None:
        return pd.DataFrame(columns=list(METRICS), dtype=float)
    _, _, dist = _run_bootstrap(*setup, n_bootstrap, 0.95, seed, method="percentile")
    return pd.DataFrame(dist.T, columns=list(METRICS)).rename_axis("resample")


def _with_image_intervals(y: np.ndarray, p: np.ndarray, thresholds: list[float], n_bootstrap: int,
                          ci_level: float, seed: int, groups: Any
                          ) -> tuple[list[dict[str, dict[str, float]]], list[list[str]]]:
    """Patient-level intervals as the headline (ci_low, ci_high) and the image-level ones beside them
    (image_ci_low, image_ci_high); the image-level ones alone when `groups` is None. With the headline's
    BCa fallbacks (see `_bootstrap`)."""
    image, image_fallbacks = _bootstrap(y, p, thresholds, n_bootstrap, ci_level, seed)
    if groups is None:
        return image, image_fallbacks
    patient, fallbacks = _bootstrap(y, p, thresholds, n_bootstrap, ci_level, seed, groups=groups)
    for pat, img in zip(patient, image):
        for m in METRICS:
            pat[m].update(image_ci_low=img[m]["ci_low"], image_ci_high=img[m]["ci_high"])
    return patient, fallbacks


def _patient_counts(y: np.ndarray, groups: Any) -> dict[str, Any]:
    _, stratum = patient_strata(y, groups)
    return {"n_patients": int(stratum.size), "n_patients_positive": int(stratum.sum()),
            "ci_method": PATIENT_CI_METHOD, "image_ci_method": CI_METHOD}


def task_report(y: Any, p: Any, threshold: float, *, n_bootstrap: int, ci_level: float, seed: int,
                groups: Any = None) -> dict[str, Any]:
    """One task's entry of `metrics.json`: metrics at the validation threshold and at 0.5, with intervals.

    The bootstrap settings are the caller's (a `Config`'s n_bootstrap, ci_level and seed). Each metric is
    {"value", "ci_low", "ci_high"}, its interval drawn from the bootstrap by the rule in "ci_methods"
    ({metric: method}, CI_METHODS). Without `groups` the bootstrap resamples images within each class. With
    `groups` (the patient id of each image) the headline interval is patient-level and the image-level one is
    kept beside it: {"value", "ci_low", "ci_high", "image_ci_low", "image_ci_high"}, where ci_low/ci_high come
    from the cluster bootstrap of patients ("ci_method" = PATIENT_CI_METHOD) and image_ci_low/high from the image
    bootstrap ("image_ci_method" = CI_METHOD), both with the same seed, number of resamples and per-metric rule;
    the report then also holds "n_patients" and "n_patients_positive". "ci_fallbacks" ({block: [metric, ...]},
    only when not empty) lists headline intervals where BCa was undefined and the percentile interval was used.
    """
    y, p = check_inputs(y, p)
    (at_t, at_half), fallbacks = _with_image_intervals(y, p, [float(threshold), 0.5], n_bootstrap, ci_level, seed,
                                                       groups)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "at_threshold": at_t,
        "at_0.5": at_half,
        "confusion_matrix": confusion(y, p, threshold),
        "confusion_matrix_at_0.5": confusion(y, p, 0.5),
        "ci_methods": dict(CI_METHODS),
    }
    fell = {block: f for block, f in zip(("at_threshold", "at_0.5"), fallbacks) if f}
    if fell:
        out["ci_fallbacks"] = fell
    if groups is not None:
        out.update(_patient_counts(y, groups))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Per child
# ---------------------------------------------------------------------------------------------------------------

def child_table(y: Any, p: Any, groups: Any) -> pd.DataFrame:
    """One row per child (patient id, in order of first appearance): y = 1 if any of its images is positive,
    p = the highest probability of its images (so the child is called positive at threshold t when any image
    is), n_images."""
    y, p = check_inputs(y, p)
    g = np.asarray(groups).reshape(-1)
    if g.shape != y.shape:
        raise ValueError(f"groups and labels differ in length: {g.size} vs {y.size}")
    frame = pd.DataFrame({"child": g, "y": y, "p": p})
    out = frame.groupby("child", sort=False).agg(y=("y", "max"), p=("p", "max"), n_images=("y", "size"))
    return out


def child_report(y: Any, p: Any, groups: Any, threshold: float, *, n_bootstrap: int, ci_level: float,
                 seed: int) -> dict[str, Any]:
    """`task_report` of the children (`child_table`): every metric at the threshold and at 0.5, AUROC of the
    children's highest probabilities, intervals from resampling children within their label (one row per child,
    so the image bootstrap of `task_report` is a bootstrap of children). Adds "unit": "child", "n_images";
    "n" and "n_positive" count children."""
    table = child_table(y, p, groups)
    out = task_report(table["y"].to_numpy(), table["p"].to_numpy(), threshold, n_bootstrap=n_bootstrap,
                      ci_level=ci_level, seed=seed)
    out.update(unit="child", n_images=int(table["n_images"].sum()))
    return out
