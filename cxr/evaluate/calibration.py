"""Probability calibration fitted on VALIDATION only: temperature scaling, Platt scaling, reliability tables.

Every fitting function takes validation labels and probabilities and nothing else, so a calibrator can never
see test labels; `calibrate_and_report` applies the validation fit to the test probabilities and only then
scores them. Logits are taken of probabilities clipped to [1e-7, 1 - 1e-7].
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from cxr.evaluate.metrics import check_inputs, expected_calibration_error

EPS = 1e-7
TEMPERATURE_BOUNDS = (0.05, 20.0)




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


def fit_platt(y_val: Any, p_val: Any, C: float = 1e4) -> tuple[float, float]:
    """Platt scaling on the validation logits: (a, b) with calibrated p = sigmoid(a * logit(p) + b).

    A scikit-learn `LogisticRegression` on the single feature logit(p), with weak regularisation (large C) so
    that almost separable validation sets still give a finite fit.
    """
    y, p = check_inputs(y_val, p_val)
    if len(np.unique(y)) < 2:
        raise ValueError("Platt scaling needs both classes in the validation labels")
    model = LogisticRegression(C=C, max_iter=1000).fit(logit(p)[:, None], y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


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


def calibration_metrics(y: Any, p: Any) -> dict[str, float]:
    """{"brier", "ece", "log_loss"} (log-loss on probabilities clipped to [EPS, 1 - EPS])."""
    y, p = check_inputs(y, p)
    return {"brier": float(skm.brier_score_loss(y, p, pos_label=1)), "ece": expected_calibration_error(y, p),
            "log_loss": _log_loss(y, logit(p))}


def calibration_report(y: Any, p_raw: Any, p_cal: Any) -> dict[str, dict[str, float]]:
    """{"before": calibration_metrics(y, p_raw), "after": calibration_metrics(y, p_cal)}."""
    return {"before": calibration_metrics(y, p_raw), "after": calibration_metrics(y, p_cal)}


def calibrate_and_report(y_val: Any, p_val: Any, y_test: Any, p_test: Any,
                         method: str = "temperature") -> dict[str, Any]:
    """Fit on validation, apply to test, then score both: a block for `metrics.json`.

    {"method", parameters ("temperature" or "a", "b"), "fitted_on": "validation",
     "validation": calibration_report, "test": calibration_report}. The test labels are used only for scoring,
    after the parameters are fixed.
    """
    params = fit_calibrator(y_val, p_val, method)
    return {**params, "fitted_on": "validation",
            "validation": calibration_report(y_val, p_val, apply_calibrator(params, p_val)),
            "test": calibration_report(y_test, p_test, apply_calibrator(params, p_test))}


def describe_calibration(block: dict[str, Any]) -> str:
    """Two sentences from a `calibrate_and_report` block: what the validation-fitted calibration did on test."""
    before, after = block["test"]["before"], block["test"]["after"]
    params = (f"T = {block['temperature']:.2f}" if block["method"] == "temperature"
              else f"a = {block['a']:.2f}, b = {block['b']:.2f}")
    verdict = ("improved" if after["ece"] < before["ece"] - 0.005 else
               "worsened" if after["ece"] > before["ece"] + 0.005 else "barely changed")
    text = (f"{block['method'].capitalize()} scaling fitted on validation ({params}) {verdict} test calibration: "
            f"expected calibration error {before['ece']:.3f} -> {after['ece']:.3f}, Brier score "
            f"{before['brier']:.3f} -> {after['brier']:.3f}, log-loss {before['log_loss']:.3f} -> "
            f"{after['log_loss']:.3f}.")
    if block["method"] == "temperature":
        text += (" Temperature scaling keeps the ranking and the 0.5 point, so it cannot remove a shift in "
                 "prevalence or acquisition between validation and test; what remains is that shift.")
    return text
