"""Probability calibration fitted on the SELECTION data only (the out-of-fold predictions): temperature scaling,
Platt scaling; and how calibrated a set of probabilities is: log-loss, Brier score, calibration intercept and slope
(with patient-level bootstrap intervals), a smoothed reliability curve with a bootstrap band, and the binned
reliability table.

Every fitting function takes the selection data's labels and probabilities (here: the out-of-fold predictions of
the training children; "validation" in the argument names) and nothing else, so a calibrator can never see test
labels; `calibrate_and_report` applies that fit to the test probabilities and only then
scores them. Logits are taken of probabilities clipped to [1e-7, 1 - 1e-7].

Calibration slope and intercept (Van Calster et al. 2019, BMC Med 17:230): the slope b of the logistic
recalibration logit P(y = 1) = a + b logit(p) (1 = ideal, below 1 = over-confident: predictions too extreme),
and the calibration-in-the-large intercept a of logit P(y = 1) = a + logit(p) (logit(p) as an offset, slope
fixed at 1; 0 = ideal, below 0 = predicted risks too high on average).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import SplineTransformer

from cxr.evaluate.metrics import check_inputs, expected_calibration_error
from cxr.evaluate.resample import bootstrap, percentile

EPS = 1e-7
TEMPERATURE_BOUNDS = (0.05, 20.0)
PLATT_C = 1e4  # weak L2 regularisation of the slope, so that almost separable sets still give a finite fit
CALIBRATION_CI_METHOD = ("BCa bootstrap (scipy.stats.bootstrap) of patients within each class (images without "
                         "patient ids); percentile where BCa is undefined")


def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [EPS, 1 - EPS] (finite for p = 0 or 1)."""
    return special.logit(np.clip(np.asarray(p, dtype="float64"), EPS, 1.0 - EPS))


def _log_loss(y: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits z, computed stably (log(1 + e^z) - y z)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y_val: Any, p_val: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T minimising the validation log-loss of sigmoid(logit(p) / T).

    T > 1 softens over-confident probabilities, T < 1 sharpens under-confident ones; the ranking (and AUROC) is
    unchanged. Searched over log T with `scipy.optimize.minimize_scalar` (bounded to `bounds`).
    """
    y, p = check_inputs(y_val, p_val)
    z = logit(p)
    res = optimize.minimize_scalar(lambda log_t: _log_loss(y, z / np.exp(log_t)), bounds=np.log(bounds),
                                   method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def apply_temperature(p: Any, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): calibrated probabilities, same order as p."""
    return special.expit(logit(p) / float(temperature))


def fit_platt(y_val: Any, p_val: Any, C: float = PLATT_C) -> tuple[float, float]:
    """Platt scaling on the validation logits: (a, b) with calibrated p = sigmoid(a * logit(p) + b).

    A scikit-learn `LogisticRegression` on the single feature logit(p), with weak regularisation (large C) so
    that almost separable validation sets still give a finite fit. A calibration map must not reverse the ranking:
    when the fitted slope is negative (scores that fall as the label rises: an uninformative or inverted model),
    the slope is set to 0 and only the intercept is fitted (every probability becomes the observed prevalence).
    """
    y, p = check_inputs(y_val, p_val)
    if len(np.unique(y)) < 2:
        raise ValueError("Platt scaling needs both classes in the validation labels")
    model = LogisticRegression(C=C, max_iter=1000).fit(logit(p)[:, None], y)
    a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    if a < 0:
        a, b = 0.0, float(special.logit(y.mean()))
    return a, b


def apply_platt(p: Any, a: float, b: float) -> np.ndarray:
    """sigmoid(a * logit(p) + b)."""
    return special.expit(float(a) * logit(p) + float(b))


def fit_calibrator(y_val: Any, p_val: Any, method: str = "temperature") -> dict[str, Any]:
    """The parameters of a calibrator fitted on validation: {"method", "temperature"} or {"method", "a", "b"}."""
    if method == "temperature":
        return {"method": method, "temperature": fit_temperature(y_val, p_val)}
    if method == "platt":
        a, b = fit_platt(y_val, p_val)
        return {"method": method, "a": a, "b": b}
    raise ValueError(f"unknown calibration method {method!r}; choose 'temperature' or 'platt'")


def apply_calibrator(params: dict[str, Any], p: Any) -> np.ndarray:
    """Apply the parameters of `fit_calibrator` to probabilities."""
    if params["method"] == "temperature":
        return apply_temperature(p, params["temperature"])
    return apply_platt(p, params["a"], params["b"])


def invert_calibrator(params: dict[str, Any], q: Any) -> np.ndarray:
    """The raw probability that the calibrator of `fit_calibrator` maps to the calibrated probability q (its
    inverse): sigmoid(T logit(q)) for temperature scaling, sigmoid((logit(q) - b) / a) for Platt scaling (NaN
    when a <= 0, where no increasing inverse exists)."""
    z = logit(q)
    if params["method"] == "temperature":
        return special.expit(float(params["temperature"]) * z)
    a = float(params["a"])
    return special.expit((z - float(params["b"])) / a) if a > 0 else np.full(np.shape(z), np.nan)


def reliability_table(y: Any, p: Any, n_bins: int = 10) -> pd.DataFrame:
    """One row per equal-width bin of p (the bins of `expected_calibration_error`; p = 1 in the last):
    bin, lower, upper, count, mean_predicted, observed_rate (NaN for an empty bin)."""
    y, p = check_inputs(y, p)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(bins, weights=p, minlength=n_bins) / count
        rate = np.bincount(bins, weights=y, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
                         "mean_predicted": mean_p, "observed_rate": rate})


def _logistic_newton(X: np.ndarray, y: np.ndarray, w: np.ndarray, offset: Any = 0.0, penalty: Any = 0.0,
                     n_iter: int = 60) -> np.ndarray:
    """Penalised logistic regressions for many weight vectors at once, by Newton's method: coefficients (B, k)
    maximising sum_i w_bi (y_i eta_bi - log(1 + e^eta_bi)) - 1/2 sum_j penalty_j beta_bj^2 with
    eta = offset + X beta, for X (n, k), y (n,), weights w (B, n).

    The bootstrap refits these 2,000 times; one `LogisticRegression` per resample would take far longer, so this is
    the same objective solved for all resamples at once (the tests check it against scikit-learn). Steps are capped
    at 5 per coefficient, so that almost separable resamples move steadily towards their (finite) penalised fit.
    """
    w = np.atleast_2d(np.asarray(w, float))
    k = X.shape[1]
    pen = np.broadcast_to(np.asarray(penalty, float), (k,))
    beta = np.zeros((w.shape[0], k))
    for _ in range(n_iter):
        mu = special.expit(offset + beta @ X.T)
        grad = (w * (y - mu)) @ X - pen * beta
        curv = w * mu * (1 - mu)
        hess = np.matmul((curv[:, :, None] * X).transpose(0, 2, 1), X) + np.diag(pen + 1e-10)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        step *= np.minimum(1.0, 5.0 / np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-300))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def _intercept_slope(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(2, B): the calibration intercept (slope fixed at 1, logit as offset) and slope (Platt's a, with the
    regularisation of `fit_platt`) for weights w (B, n) over logits z."""
    ones = np.ones((z.size, 1))
    intercept = _logistic_newton(ones, y, w, offset=z)[:, 0]
    slope = _logistic_newton(np.column_stack([ones, z]), y, w, penalty=[0.0, 1.0 / PLATT_C])[:, 1]
    return np.stack([intercept, slope])


def calibration_intercept_slope(y: Any, p: Any) -> dict[str, float]:
    """{"intercept", "slope"}: calibration-in-the-large and calibration slope (module docstring); NaN with a
    single class."""
    y, p = check_inputs(y, p)
    if len(np.unique(y)) < 2:
        return {"intercept": math.nan, "slope": math.nan}
    intercept, slope = _intercept_slope(logit(p), y.astype(float), np.ones((1, y.size)))[:, 0]
    return {"intercept": float(intercept), "slope": float(slope)}


def calibration_intervals(y: Any, p: Any, groups: Any = None, *, n_bootstrap: int, ci_level: float,
                          seed: int) -> dict[str, dict[str, float]]:
    """{"intercept": {value, ci_low, ci_high}, "slope": {...}}: the calibration intercept and slope with intervals
    from a bootstrap of patients within each class (`groups`: patient ids; images without), BCa where defined
    (CALIBRATION_CI_METHOD). NaN intervals with fewer than two patients in a class or no resamples."""
    y, p = check_inputs(y, p)
    values = calibration_intercept_slope(y, p)
    out = {k: {"value": v, "ci_low": math.nan, "ci_high": math.nan} for k, v in values.items()}
    z, yf = logit(p), y.astype(float)
    found = bootstrap(y, groups, lambda w: _intercept_slope(z, yf, w), n_bootstrap, ci_level, seed)
    if found is None:
        return out
    low, high, dist = found
    for i, key in enumerate(("intercept", "slope")):
        bca = (low[i], high[i])
        if np.isfinite(bca).all() and np.isfinite(dist[i]).all():
            out[key].update(ci_low=float(bca[0]), ci_high=float(bca[1]))
        else:
            lo, hi = percentile(dist[i], ci_level)
            out[key].update(ci_low=lo, ci_high=hi)
    return out


def smoothed_reliability(y: Any, p: Any, groups: Any = None, *, n_bootstrap: int, ci_level: float, seed: int,
                         n_points: int = 101, n_knots: int = 4, smoothing: float = 1.0) -> pd.DataFrame:
    """A smoothed reliability curve with a pointwise bootstrap band: columns predicted (a grid over the range of
    p), observed (the fitted P(y = 1) there), low, high.

    The curve is a penalised spline logistic regression of y on logit(p): logit P(y = 1) = a + b logit(p) + s(logit p),
    s a cubic B-spline (`sklearn.preprocessing.SplineTransformer`, `n_knots` knots at quantiles of logit(p),
    linear beyond them) whose coefficients carry a ridge penalty `smoothing`, so that with little data the curve
    shrinks towards the logistic recalibration line rather than wiggling. The band holds the central `ci_level` of
    the curves refitted on bootstrap resamples of patients within each class (`groups`; images without; no band
    with `n_bootstrap` = 0). Replaces the 10 equal-width bins of `reliability_table`, whose curve depends on where
    the bin edges fall and which leaves almost empty middle bins when most probabilities are near 0 or 1.
    """
    y, p = check_inputs(y, p)
    grid = np.linspace(p.min(), p.max(), n_points)
    out = pd.DataFrame({"predicted": grid, "observed": np.nan, "low": np.nan, "high": np.nan})
    if len(np.unique(y)) < 2:
        return out
    z, zg = logit(p), logit(grid)
    spline = SplineTransformer(n_knots=n_knots, degree=3, knots="quantile", extrapolation="linear").fit(z[:, None])

    def design(v: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(v.size), v, spline.transform(v[:, None])])

    X, Xg = design(z), design(zg)
    penalty = np.r_[0.0, 1.0 / PLATT_C, np.full(X.shape[1] - 2, smoothing)]
    yf = y.astype(float)

    def curves(w: np.ndarray) -> np.ndarray:  # (n_points, B)
        return special.expit(_logistic_newton(X, yf, w, penalty=penalty) @ Xg.T).T

    out["observed"] = curves(np.ones((1, y.size)))[:, 0]
    found = bootstrap(y, groups, curves, n_bootstrap, ci_level, seed, method="percentile")
    if found is not None:
        dist = found[2]
        alpha = 100 * (1 - ci_level) / 2
        out["low"], out["high"] = np.nanpercentile(dist, [alpha, 100 - alpha], axis=1)
    return out


def calibration_metrics(y: Any, p: Any) -> dict[str, float]:
    """{"brier", "ece", "log_loss", "intercept", "slope"} (log-loss on probabilities clipped to [EPS, 1 - EPS];
    intercept and slope of `calibration_intercept_slope`)."""
    y, p = check_inputs(y, p)
    return {"brier": float(skm.brier_score_loss(y, p, pos_label=1)), "ece": expected_calibration_error(y, p),
            "log_loss": _log_loss(y, logit(p)), **calibration_intercept_slope(y, p)}


def calibration_report(y: Any, p_raw: Any, p_cal: Any) -> dict[str, dict[str, float]]:
    """{"before": calibration_metrics(y, p_raw), "after": calibration_metrics(y, p_cal)}."""
    return {"before": calibration_metrics(y, p_raw), "after": calibration_metrics(y, p_cal)}


def calibrate_and_report(y_val: Any, p_val: Any, y_test: Any, p_test: Any, method: str = "temperature", *,
                         groups_test: Any = None, n_bootstrap: int, ci_level: float, seed: int) -> dict[str, Any]:
    """Fit on validation, apply to test, then score both: a block for `metrics.json`.

    {"method", parameters ("temperature" or "a", "b"), "fitted_on", "selection": calibration_report of the data it
     was fitted on, "test": calibration_report with "ci": {"before": calibration_intervals,
     "after": ...} (patient-level with `groups_test`), "ci_method"}. The test labels are used only for scoring,
    after the parameters are fixed.
    """
    params = fit_calibrator(y_val, p_val, method)
    p_cal = apply_calibrator(params, p_test)
    test = calibration_report(y_test, p_test, p_cal)
    settings = {"n_bootstrap": n_bootstrap, "ci_level": ci_level, "seed": seed}
    test["ci"] = {"before": calibration_intervals(y_test, p_test, groups_test, **settings),
                  "after": calibration_intervals(y_test, p_cal, groups_test, **settings)}
    return {**params, "fitted_on": "selection data (the out-of-fold predictions of the training children)",
            "selection": calibration_report(y_val, p_val, apply_calibrator(params, p_val)),
            "test": test, "ci_method": CALIBRATION_CI_METHOD}
