"""Uncertainty beyond the fixed-threshold intervals of `cxr.evaluate.metrics`: the uncertainty of the operating
point itself (a threshold-resampling bootstrap of selection and test patients: the rule re-applied, nothing
retrained), and the coverage simulations that chose the
interval methods of `metrics.CI_METHODS` (`method_comparison`: every method tried, on the same simulated test sets;
`coverage_simulation`: the package's own intervals, as `task_report` computes them).

The intervals of `task_report` are conditional on the threshold chosen on the selection data (the out-of-fold
predictions of the training children): they treat it as fixed. The
threshold is itself an estimate, so `threshold_uncertainty` re-chooses it on each bootstrap resample of the
selection patients with the pre-declared rule, and scores a resample of the test patients at that
threshold: the spread then holds both sources of variation. Its intervals are reported beside the conditional ones.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from cxr.evaluate.metrics import (BCA, CI_METHODS, auroc_score_interval, bootstrap_distribution, bootstrap_intervals,
                                  check_inputs, cluster_design_effect, logit_interval, metric_interval, metric_values,
                                  newcombe_variance, wilson_bounds, wilson_ess_interval, weighted_rates)
from cxr.evaluate.resample import patient_strata, percentile, resample_indices, resample_weights

NESTED_METRICS = ("threshold", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "ppv", "npv")
NESTED_CI_METHOD = ("threshold-resampling bootstrap (no retraining): selection patients resampled within each class "
                    "and the threshold re-chosen, "
                    "test patients resampled within each class and scored at it; Wilson on the effective sample "
                    "size (deff from the draws' variance) for sensitivity, specificity, accuracy, PPV and NPV, "
                    "percentile for the threshold and balanced accuracy; the conditional interval uses the same "
                    "test resamples at the fixed threshold")


# ---------------------------------------------------------------------------------------------------------------
# Threshold uncertainty
# ---------------------------------------------------------------------------------------------------------------

def _operating_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """NESTED_METRICS but the threshold, of weighted resamples w (B, n), each at its own threshold t (B,)."""
    r = weighted_rates(y, p, w, t)
    return {m: r["precision" if m == "ppv" else m] for m in NESTED_METRICS[1:]}


def threshold_uncertainty(y_sel: Any, p_sel: Any, groups_sel: Any, y_test: Any, p_test: Any, groups_test: Any,
                          choose: Callable[[np.ndarray, np.ndarray], float], *, n_bootstrap: int, ci_level: float,
                          seed: int) -> dict[str, Any]:
    """The test operating point with the uncertainty of its threshold: a threshold-resampling bootstrap (the
    declared rule re-applied to resampled out-of-fold predictions; nothing is retrained).

    `choose(y, p) -> threshold` is the pre-declared rule (e.g. `lambda y, p: threshold.choose(y, p, "plateau")`).
    On each of `n_bootstrap` draws the selection patients (`groups_sel`; images when None) are resampled within
    each class and the threshold re-chosen on the resample; the test patients are resampled within each class and
    scored at that threshold. The same test resamples scored at the threshold chosen on all selection data give
    the conditional (fixed-threshold) interval.

    Returns {"threshold": chosen on all selection data, "draws": DataFrame (one row per draw, NESTED_METRICS),
    "intervals": DataFrame (index NESTED_METRICS; value on the whole test set at the threshold, ci_low, ci_high
    of the nested bootstrap, conditional_ci_low, conditional_ci_high, width_ratio nested / conditional, method),
    "n_bootstrap", "ci_level", "ci_method"}. Proportions get Wilson intervals on the effective sample size of
    their draws (`metrics.wilson_ess_interval`), the threshold and balanced accuracy percentile intervals.
    """
    y_sel, p_sel = check_inputs(y_sel, p_sel)
    y_test, p_test = check_inputs(y_test, p_test)
    t_hat = float(choose(y_sel, p_sel))
    rng = np.random.default_rng(seed)
    thresholds = np.array([float(choose(y_sel[idx], p_sel[idx]))
                           for idx in (resample_indices(y_sel, groups_sel, rng) for _ in range(n_bootstrap))])
    w = resample_weights(y_test, groups_test, n_bootstrap, rng)
    nested = _operating_metrics(y_test, p_test, w, thresholds)
    fixed = _operating_metrics(y_test, p_test, w, np.full(n_bootstrap, t_hat))
    value = {k: float(v[0]) for k, v in _operating_metrics(y_test, p_test, np.ones((1, y_test.size)),
                                                           np.array([t_hat])).items()}
    codes = patient_strata(y_test, np.arange(y_test.size) if groups_test is None else groups_test)[0]
    called = p_test >= t_hat
    masks = {"sensitivity": y_test == 1, "specificity": y_test == 0, "accuracy": np.ones(y_test.size, bool),
             "ppv": called, "npv": ~called}
    rows = {"threshold": {"value": t_hat, **dict(zip(("ci_low", "ci_high"), percentile(thresholds, ci_level))),
                          "conditional_ci_low": t_hat, "conditional_ci_high": t_hat, "method": "percentile"}}
    for m in NESTED_METRICS[1:]:
        if m in masks:
            n, cdeff = int(masks[m].sum()), cluster_design_effect(codes, masks[m])
            nested_ci = wilson_ess_interval(value[m], nested[m], n, cdeff, ci_level)
            fixed_ci = wilson_ess_interval(value[m], fixed[m], n, cdeff, ci_level)
            method = "Wilson on the effective sample size"
        else:
            nested_ci, fixed_ci = percentile(nested[m], ci_level), percentile(fixed[m], ci_level)
            method = "percentile"
        rows[m] = {"value": value[m], "ci_low": nested_ci[0], "ci_high": nested_ci[1],
                   "conditional_ci_low": fixed_ci[0], "conditional_ci_high": fixed_ci[1], "method": method}
    intervals = pd.DataFrame.from_dict(rows, orient="index")
    with np.errstate(invalid="ignore", divide="ignore"):
        intervals.insert(5, "width_ratio", (intervals["ci_high"] - intervals["ci_low"])
                         / (intervals["conditional_ci_high"] - intervals["conditional_ci_low"]))
    draws = pd.DataFrame({"threshold": thresholds, **nested})[list(NESTED_METRICS)].rename_axis("draw")
    return {"threshold": t_hat, "draws": draws, "intervals": intervals, "n_bootstrap": int(n_bootstrap),
            "ci_level": float(ci_level), "ci_method": NESTED_CI_METHOD}


# ---------------------------------------------------------------------------------------------------------------
# Coverage simulation
# ---------------------------------------------------------------------------------------------------------------

def simulated_set(rng: np.random.Generator, n_positive: int, n_negative: int, sensitivity: float,
                  specificity: float, max_images: int = 1, icc: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, p, patient ids) of a test set with known truth: each patient has 1..max_images images (uniform), each
    image a latent score mu + u_patient + e_image with Var(u) = icc, Var(e) = 1 - icc, mu = Phi^-1(sensitivity)
    for positive and -Phi^-1(specificity) for negative patients, p = sigmoid(score). At the threshold 0.5 the
    image-level sensitivity and specificity are then `sensitivity` and `specificity`, and the AUROC is
    Phi((Phi^-1(sensitivity) + Phi^-1(specificity)) / sqrt(2))."""
    m = rng.integers(1, max_images + 1, n_positive + n_negative)
    label = np.r_[np.ones(n_positive, int), np.zeros(n_negative, int)]
    mu = np.where(label == 1, stats.norm.ppf(sensitivity), -stats.norm.ppf(specificity))
    u = rng.normal(0.0, math.sqrt(icc), label.size)
    patient = np.repeat(np.arange(label.size), m)
    z = (mu + u)[patient] + rng.normal(0.0, math.sqrt(1.0 - icc), patient.size)
    return label[patient], special.expit(z), patient


def coverage_simulation(*, n_sim: int, n_bootstrap: int, n_positive: int = 400, n_negative: int = 200,
                        sensitivity: float = 0.98, specificity: float = 0.90, max_images: int = 1, icc: float = 0.0,
                        metrics: Sequence[str] = ("sensitivity", "specificity", "auroc"), ci_level: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """How often the package's own intervals (the patient-level intervals of `task_report`, via
    `metrics.bootstrap_intervals`) cover the truth, over `n_sim` test sets of `simulated_set` (patients n_positive +
    n_negative; dataset s drawn with seed + s and bootstrapped with seed + s, so the result is deterministic).

    One row per metric: truth, coverage, below (share of intervals wholly below the truth), above, mean_width,
    method (CI_METHODS), n_sim, n_bootstrap. Truth is the population value at the threshold 0.5 (`simulated_set`).
    """
    truth = _truth(sensitivity, specificity)
    unknown = set(metrics) - set(truth)
    if unknown:
        raise ValueError(f"no known truth for {sorted(unknown)}; choose from {sorted(truth)}")
    bca = any(CI_METHODS[m] == BCA for m in metrics)  # the BCa jackknife only when a BCa metric is asked for
    low = {m: np.full(n_sim, np.nan) for m in metrics}
    high = {m: np.full(n_sim, np.nan) for m in metrics}
    for s in range(n_sim):
        y, p, patient = simulated_set(np.random.default_rng(seed + s), n_positive, n_negative, sensitivity,
                                      specificity, max_images, icc)
        (result,), _ = bootstrap_intervals(y, p, [0.5], n_bootstrap, ci_level, seed + s, groups=patient, bca=bca)
        for m in metrics:
            low[m][s], high[m][s] = result[m]["ci_low"], result[m]["ci_high"]
    rows = {m: {"truth": truth[m], "coverage": float(np.mean((low[m] <= truth[m]) & (truth[m] <= high[m]))),
                "below": float(np.mean(high[m] < truth[m])), "above": float(np.mean(low[m] > truth[m])),
                "mean_width": float(np.nanmean(high[m] - low[m])), "method": CI_METHODS[m], "n_sim": n_sim,
                "n_bootstrap": n_bootstrap} for m in metrics}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")


def _truth(sensitivity: float, specificity: float) -> dict[str, float]:
    return {"sensitivity": sensitivity, "specificity": specificity,
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "auroc": float(stats.norm.cdf((stats.norm.ppf(sensitivity) + stats.norm.ppf(specificity)) / math.sqrt(2)))}


def method_comparison(*, n_sim: int, n_bootstrap: int, n_positive: int = 400, n_negative: int = 200,
                      sensitivity: float = 0.98, specificity: float = 0.90, max_images: int = 1, icc: float = 0.0,
                      ci_level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The simulation behind CI_METHODS: coverage of every interval method tried, on the same simulated test sets
    and the same patient-level bootstrap (as `coverage_simulation`).

    Methods: "package" (CI_METHODS, what `task_report` reports), "percentile", "BCa" (scipy), "logit" (normal
    on the logit scale with the bootstrap standard error; percentile where undefined), and for proportions
    "wilson_images" (Wilson on the image count, ignoring clustering), for AUROC "newcombe_deff" (Newcombe's score
    interval with the design effect var(draws) / Hanley-McNeil variance) and "newcombe_deff_ge_1" (the same with
    the design effect held at 1 or more). One row per (metric, method): truth, coverage, below (share of intervals
    wholly below the truth), above, mean_width.
    """
    truth = _truth(sensitivity, specificity)
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for s in range(n_sim):
        y, p, patient = simulated_set(np.random.default_rng(seed + s), n_positive, n_negative, sensitivity,
                                      specificity, max_images, icc)
        (low,), (high,), (dist,) = bootstrap_distribution(y, p, [0.5], patient, n_bootstrap, ci_level, seed + s)
        values = metric_values(y, p, 0.5)
        codes = patient_strata(y, patient)[0]
        for m in truth:
            v, d = values[m], dist[m]
            logit_ci = logit_interval(v, d, ci_level)
            if not np.isfinite(logit_ci[0]):
                logit_ci = percentile(d, ci_level)
            found = {"package": metric_interval(m, v, d, (low[m], high[m]), y, p, 0.5, codes, ci_level)[:2],
                     "percentile": percentile(d, ci_level),
                     "BCa": (low[m], high[m]) if np.isfinite([low[m], high[m]]).all()
                     else percentile(d, ci_level),
                     "logit": logit_ci}
            if m in ("sensitivity", "specificity"):
                found["wilson_images"] = wilson_bounds(v, int((y == (m == "sensitivity")).sum()), ci_level)
            if m == "auroc":
                n1, n0 = int(y.sum()), int((1 - y).sum())
                found["newcombe_deff"] = auroc_score_interval(v, d, n1, n0, cluster_design_effect(codes), ci_level)
                var, v0 = float(np.nanvar(d, ddof=1)), float(newcombe_variance(v, n1, n0))
                deff = max(var / v0 if var > 0 and v0 > 0 else cluster_design_effect(codes), 1.0)
                found["newcombe_deff_ge_1"] = auroc_score_interval(v, np.r_[v, v], n1, n0, deff, ci_level)
            for method, ci in found.items():
                rows.setdefault((m, method), []).append(ci)
    out = []
    for (m, method), cis in rows.items():
        lo, hi = np.asarray(cis, float).T
        out.append({"metric": m, "method": method, "truth": truth[m],
                    "coverage": float(np.mean((lo <= truth[m]) & (truth[m] <= hi))),
                    "below": float(np.mean(hi < truth[m])), "above": float(np.mean(lo > truth[m])),
                    "mean_width": float(np.nanmean(hi - lo))})
    return pd.DataFrame(out).set_index(["metric", "method"])
