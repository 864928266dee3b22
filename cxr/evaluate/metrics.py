"""Test metrics and their bootstrap intervals: image-level (stratified by class) and patient-level (cluster).

Each metric is defined once, in REGISTRY (`Metric`: name, table label, point value, interval rule, and for a
proportion the images that are its trials); METRICS, METRIC_LABELS, CI_METHODS, the tables and the bootstrap
draws all follow from it. Point values are scikit-learn's (the expected calibration error: 10 equal-width bins);
the resamples of the bootstrap are scored by the vectorised weighted definitions of `weighted_draws` (the tests
check them against scikit-learn). The resamples come from `cxr.evaluate.resample.bootstrap`: patients (images
without patient ids) resampled within their class, so that every resample holds both classes and AUROC is always
defined; the patient-level interval is the headline. The interval drawn from the bootstrap depends on the metric
(CI_METHODS; the simulations that chose them are in doc/metrics_schema.md, "Interval methods"):

- proportions (accuracy, sensitivity, specificity, precision): the Wilson score interval on the effective sample
  size n / deff, where the design effect deff is the bootstrap variance over the binomial variance p(1-p)/n (at
  least 1); when the proportion is 0 or 1 the bootstrap has no variance to compare, and deff is the clustering
  bound sum(m_i^2) / sum(m_i) over the patients' image counts m_i (1 with one image per patient);
- AUROC: a normal interval on the logit scale with the bootstrap standard error (delta method), which stays inside
  (0, 1); where every resample has the same AUROC (an AUROC of 1: separated classes), Newcombe's score interval
  for the Mann-Whitney statistic (Hanley-McNeil variance with N* = (n0 + n1) / 2; Newcombe 2006, Stat Med
  25:559-573) widened by the clustering bound of the design effect, so that a perfect AUROC still gets an
  interval below 1;
- the others (AUPRC, F1, balanced accuracy, Brier score, ECE): BCa (`scipy.stats.bootstrap(method="BCa")`), or
  the percentile interval of the defined resamples where BCa is undefined (a constant distribution, or a metric
  undefined in some resamples).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from sklearn import metrics as skm

from cxr.evaluate.resample import bootstrap, patient_strata, percentile

WILSON_ESS = ("Wilson score interval on the effective sample size n / deff (deff = bootstrap variance / binomial "
              "variance, at least 1; for a proportion of 0 or 1, deff = sum of squared image counts per patient / "
              "images)")
AUROC_LOGIT = ("normal interval on the logit scale with the bootstrap standard error; where the AUROC is 0 or 1 "
               "(every resample alike), Newcombe's score interval (Hanley-McNeil variance, N* = (n0 + n1) / 2) times "
               "the clustering design effect")
BCA = "BCa bootstrap; percentile of the defined resamples where BCa is undefined"
INTERVAL_RULES = {"wilson_ess": WILSON_ESS, "auroc_logit": AUROC_LOGIT, "bca": BCA}


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
# The metrics
# ---------------------------------------------------------------------------------------------------------------

def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """ECE: the sample-weighted mean |observed positive rate - mean predicted probability| over equal-width bins."""
    y, p = check_inputs(y, p)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)  # p = 1.0 goes to the last bin
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=y, minlength=n_bins) - np.bincount(bins, weights=p, minlength=n_bins))
    return float(gap.sum() / count.sum())  # sum_b n_b/N * |mean_y_b - mean_p_b|


@dataclass(frozen=True)
class Metric:
    """One metric. `point(y, p, called)`: its value on a sample (labels, probabilities, calls p >= threshold);
    `interval`: its rule in INTERVAL_RULES; `trials(y, called)`: for a proportion, the images of its denominator;
    `both_classes`: undefined (NaN) unless both classes are present."""
    name: str
    label: str
    point: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    interval: str = "bca"
    trials: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    both_classes: bool = False


REGISTRY = (
    Metric("auroc", "AUROC", lambda y, p, c: skm.roc_auc_score(y, p), "auroc_logit", both_classes=True),
    Metric("auprc", "AUPRC (average precision)", lambda y, p, c: skm.average_precision_score(y, p),
           both_classes=True),
    Metric("accuracy", "Accuracy", lambda y, p, c: skm.accuracy_score(y, c), "wilson_ess",
           lambda y, c: np.ones(y.size, bool)),
    Metric("sensitivity", "Sensitivity", lambda y, p, c: skm.recall_score(y, c, pos_label=1, zero_division=np.nan),
           "wilson_ess", lambda y, c: y == 1),
    Metric("specificity", "Specificity", lambda y, p, c: skm.recall_score(y, c, pos_label=0, zero_division=np.nan),
           "wilson_ess", lambda y, c: y == 0),
    Metric("precision", "Precision (PPV)", lambda y, p, c: skm.precision_score(y, c, zero_division=np.nan),
           "wilson_ess", lambda y, c: c == 1),
    Metric("f1", "F1", lambda y, p, c: skm.f1_score(y, c, zero_division=np.nan)),
    Metric("balanced_accuracy", "Balanced accuracy", lambda y, p, c: skm.balanced_accuracy_score(y, c),
           both_classes=True),
    Metric("brier", "Brier score", lambda y, p, c: skm.brier_score_loss(y, p, pos_label=1)),
    Metric("ece", "Expected calibration error", lambda y, p, c: expected_calibration_error(y, p)),
)
BY_NAME = {m.name: m for m in REGISTRY}
METRICS = tuple(BY_NAME)
METRIC_LABELS = {m.name: m.label for m in REGISTRY}
PROPORTIONS = tuple(m.name for m in REGISTRY if m.interval == "wilson_ess")
CI_METHODS = {m.name: INTERVAL_RULES[m.interval] for m in REGISTRY}
_RULES_IN_WORDS = ("per metric: Wilson on the effective sample size for proportions, logit-scale normal interval "
                   "for AUROC, BCa otherwise (ci_methods)")
CI_METHOD = ("image bootstrap (scipy.stats.bootstrap), resampling images within each class (stratified); "
             + _RULES_IN_WORDS)
PATIENT_CI_METHOD = ("cluster bootstrap (scipy.stats.bootstrap), resampling patients within each class (stratified by "
                     "the patient's label; every image of a drawn patient enters the resample); " + _RULES_IN_WORDS)


def metric_values(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """All METRICS at one threshold (positive when p >= threshold); NaN where a metric is undefined
    (e.g. AUROC with a single class, precision with no positive prediction)."""
    y, p = check_inputs(y, p)
    called = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases are reported as NaN
        return {m.name: float(m.point(y, p, called)) if both or not m.both_classes else math.nan for m in REGISTRY}


def confusion(y: Any, p: Any, threshold: float) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] at `threshold` (rows: true class 0/1, columns: predicted class 0/1)."""
    y, p = check_inputs(y, p)
    return skm.confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).tolist()


def rates(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, np.ndarray]:
    """The metrics of (weighted) confusion counts, vectorised: accuracy, sensitivity, specificity, precision (PPV),
    f1, balanced_accuracy and npv; NaN where a denominator is 0."""
    tp, fp, fn, tn = (np.asarray(v, float) for v in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        return {"accuracy": (tp + tn) / (tp + fp + fn + tn), "sensitivity": sens, "specificity": spec,
                "precision": tp / (tp + fp), "f1": 2 * tp / (2 * tp + fp + fn), "balanced_accuracy": (sens + spec) / 2,
                "npv": tn / (tn + fn)}


def weighted_rates(y: np.ndarray, p: np.ndarray, w: np.ndarray, thresholds: Any) -> dict[str, np.ndarray]:
    """`rates` of weighted resamples w (B, n), each at its own threshold (B,) (or one threshold for all)."""
    w = np.asarray(w, float).reshape(-1, p.size)
    above = p[None, :] >= np.broadcast_to(np.asarray(thresholds, float).reshape(-1, 1), (w.shape[0], 1))
    pos, neg = w * (y == 1), w * (y == 0)
    tp, fp = (pos * above).sum(1), (neg * above).sum(1)
    return rates(tp, fp, pos.sum(1) - tp, neg.sum(1) - fp)


def weighted_draws(p: np.ndarray, y: np.ndarray, w: np.ndarray, thresholds: list[float]
                   ) -> list[dict[str, np.ndarray]]:
    """The METRICS of many weighted resamples at once: per threshold {metric: (B,)} for weights (B, n).

    A resample is the fixed sample (p, y) with integer weights w (how often each image was drawn): AUROC as the
    weighted Mann-Whitney statistic (ties half), AUPRC as step-wise average precision over the distinct scores,
    Brier and ECE (the bins of `expected_calibration_error`) as weighted means, the others from the weighted
    confusion counts (`rates`). With integer weights they equal scikit-learn's metrics on the expanded resample.
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
        tp_g, fp_g = np.cumsum(pos_g, axis=1), np.cumsum(neg_g, axis=1)
        precision_g = np.divide(tp_g, tp_g + fp_g, out=np.zeros_like(tp_g), where=tp_g + fp_g > 0)
        onehot = np.eye(10)[np.minimum((p * 10).astype(int), 9)]  # (n, 10): the bins of expected_calibration_error
        free = {"auroc": (pos_g * (neg_below + 0.5 * neg_g)).sum(1) / (w0 * w1),
                "auprc": (pos_g * precision_g).sum(1) / w1,
                "brier": (w * (p - y) ** 2).sum(1) / (w0 + w1),
                "ece": np.abs(wpos @ onehot - (w * p) @ onehot).sum(1) / (w0 + w1)}
    out = []
    for t in thresholds:
        above = (p >= t).astype(float)
        tp, fp = wpos @ above, wneg @ above
        named = {**free, **rates(tp, fp, w1 - tp, w0 - fp)}
        out.append({m: named[m] for m in METRICS})
    return out


def bootstrap_distribution(y: np.ndarray, p: np.ndarray, thresholds: list[float], groups: Any, n_bootstrap: int,
                           ci_level: float, seed: int, method: str = "BCa"
                           ) -> tuple[list[dict[str, float]], list[dict[str, float]], list[dict[str, Any]]] | None:
    """(scipy's low bounds, high bounds, the draws) per threshold, each {metric: ...}, of the METRICS under the
    stratified bootstrap of `resample.bootstrap` (patients with `groups`, images without); None: no resamples."""
    yf, k = y.astype(float), len(METRICS)

    def statistic(w: np.ndarray) -> np.ndarray:  # (len(thresholds) * len(METRICS), B)
        return np.stack([d[m] for d in weighted_draws(p, yf, w, thresholds) for m in METRICS])

    found = bootstrap(y, groups, statistic, n_bootstrap, ci_level, seed, method=method)
    if found is None:
        return None
    low, high, dist = (np.asarray(a).reshape(len(thresholds), k, -1) for a in found)
    return ([{m: float(v[0]) for m, v in zip(METRICS, block)} for block in low],
            [{m: float(v[0]) for m, v in zip(METRICS, block)} for block in high],
            [dict(zip(METRICS, block)) for block in dist])


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


def newcombe_variance(theta: Any, n_pos: float, n_neg: float) -> Any:
    """Hanley-McNeil variance of the Mann-Whitney AUROC with Newcombe's N* = (n0 + n1) / 2 for both class sizes."""
    n_star = (n_pos + n_neg) / 2
    return theta * (1 - theta) / (n_pos * n_neg) * (1 + (n_star - 1) * ((1 - theta) / (2 - theta)
                                                                        + theta / (1 + theta)))


def auroc_score_interval(value: float, draws: Any, n_pos: float, n_neg: float, cluster_deff: float = 1.0,
                         ci_level: float = 0.95) -> tuple[float, float]:
    """Newcombe's score interval for AUROC: the theta with (value - theta)^2 <= z^2 deff V(theta), V the
    Hanley-McNeil variance with N* (`newcombe_variance`), deff = var(draws) / V(value) (the clustering, and the
    departure of the scores from Hanley-McNeil's model, that the bootstrap sees), or `cluster_deff` when the draws
    do not vary. Finite also for an AUROC of 0 or 1, where `auroc_interval` uses it."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not (np.isfinite(value) and n_pos > 0 and n_neg > 0) or d.size < 2:
        return math.nan, math.nan
    var = float(d.var(ddof=1))
    v0 = newcombe_variance(value, n_pos, n_neg)
    deff = var / v0 if var > 1e-15 and v0 > 0 else cluster_deff
    z2 = _z(ci_level) ** 2

    def gap(theta: float) -> float:
        return (value - theta) ** 2 - z2 * deff * newcombe_variance(theta, n_pos, n_neg)

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


def metric_interval(metric: str, value: float, draws: np.ndarray, bca: tuple[float, float], y: np.ndarray,
                    p: np.ndarray, threshold: float, codes: np.ndarray, ci_level: float
                    ) -> tuple[float, float, bool]:
    """(low, high, fell_back) of one metric by its rule (REGISTRY, CI_METHODS) from its bootstrap `draws` and
    scipy's BCa bounds `bca`; `codes`: the patient code of each image (`patient_strata`); fell_back: BCa was
    undefined and the percentile interval of the defined draws was used."""
    if not np.isfinite(value):
        return math.nan, math.nan, False
    spec = BY_NAME[metric]
    if spec.interval == "wilson_ess":
        mask = spec.trials(y, (p >= threshold).astype(int))
        return (*wilson_ess_interval(value, draws, int(mask.sum()), cluster_design_effect(codes, mask), ci_level),
                False)
    if spec.interval == "auroc_logit":
        return (*auroc_interval(value, draws, int(y.sum()), int((1 - y).sum()), cluster_design_effect(codes),
                                ci_level), False)
    if np.isfinite(bca).all() and np.isfinite(draws).all():
        return float(bca[0]), float(bca[1]), False
    return (*percentile(draws, ci_level), True)


def bootstrap_intervals(y: np.ndarray, p: np.ndarray, thresholds: list[float], n_bootstrap: int, ci_level: float,
                        seed: int, groups: Any = None, bca: bool = True
                        ) -> tuple[list[dict[str, dict[str, float]]], list[list[str]]]:
    """({metric: {value, ci_low, ci_high}} for each threshold, and per threshold the metrics whose BCa interval
    was undefined), from one stratified bootstrap (`resample.bootstrap`) of checked inputs (`check_inputs`).

    Values are scikit-learn's on the full sample. Without `groups` images are resampled within their class (every
    resample keeps the class counts, so the interval reflects the test set's own prevalence: the stratified
    bootstrap of pROC); with `groups` (patient ids) PATIENTS within their class, each drawn patient bringing all
    its images. With one image per patient both give the same resamples for the same seed. Each interval follows
    CI_METHODS. `bca=False` skips BCa's jackknife (the BCa metrics then fall back to percentile intervals): for
    simulations of the other metrics only. No intervals (NaN) with fewer than two patients in a class or
    `n_bootstrap` <= 1.
    """
    results = [{m: {"value": v, "ci_low": math.nan, "ci_high": math.nan} for m, v in metric_values(y, p, t).items()}
               for t in thresholds]
    fallbacks: list[list[str]] = [[] for _ in thresholds]
    found = bootstrap_distribution(y, p, thresholds, groups, n_bootstrap, ci_level, seed,
                                   method="BCa" if bca else "percentile")
    if found is None:
        return results, fallbacks
    codes = patient_strata(y, np.arange(y.size) if groups is None else groups)[0]
    for t, result, fell_back, lo, hi, draws in zip(thresholds, results, fallbacks, *found):
        for m, entry in result.items():
            bca_bounds = (lo[m], hi[m]) if bca else (math.nan, math.nan)
            entry["ci_low"], entry["ci_high"], fell = metric_interval(m, entry["value"], draws[m], bca_bounds,
                                                                      y, p, t, codes, ci_level)
            if fell:
                fell_back.append(m)
    return results, fallbacks


def bootstrap_draws(y: Any, p: Any, threshold: float, *, n_bootstrap: int, seed: int,
                    groups: Any = None) -> pd.DataFrame:
    """The bootstrap distribution behind the intervals: one row per resample, one column per metric (METRICS).

    The same resamples as `task_report` with the same `groups`, `n_bootstrap` and `seed` (patient-level with
    `groups`, image-level without), e.g. for PPV/NPV across prevalences (`cxr.evaluate.clinical.prevalence_curves`)
    from the `sensitivity` and `specificity` columns. Empty when no interval can be computed.
    """
    y, p = check_inputs(y, p)
    found = bootstrap_distribution(y, p, [float(threshold)], groups, n_bootstrap, 0.95, seed, method="percentile")
    if found is None:
        return pd.DataFrame(columns=list(METRICS), dtype=float)
    return pd.DataFrame(found[2][0]).rename_axis("resample")


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
    thresholds = [float(threshold), 0.5]
    (at_t, at_half), fallbacks = bootstrap_intervals(y, p, thresholds, n_bootstrap, ci_level, seed)  # of images
    if groups is not None:  # the headline: patients; the image-level intervals beside it
        image = (at_t, at_half)
        (at_t, at_half), fallbacks = bootstrap_intervals(y, p, thresholds, n_bootstrap, ci_level, seed, groups=groups)
        for pat, img in zip((at_t, at_half), image):
            for m in METRICS:
                pat[m].update(image_ci_low=img[m]["ci_low"], image_ci_high=img[m]["ci_high"])
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
        _, stratum = patient_strata(y, groups)
        out.update(n_patients=int(stratum.size), n_patients_positive=int(stratum.sum()),
                   ci_method=PATIENT_CI_METHOD, image_ci_method=CI_METHOD)
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
