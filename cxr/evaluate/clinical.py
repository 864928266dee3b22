"""What an operating point means in a clinic: PPV/NPV across prevalences and decision curves (net benefit).

PPV and NPV follow from sensitivity, specificity and prevalence by Bayes' rule; their intervals come from
bootstrap draws of sensitivity and specificity (e.g. the patient-level draws of
`cxr.evaluate.bootstrap_draws`), each draw carried through Bayes' rule, so the prevalence itself is taken as known.
Net benefit follows Vickers & Elkin (2006), Med Decis Making 26:565-574: NB(pt) = TP/n - FP/n * pt / (1 - pt),
where the threshold probability pt expresses how many false positives one true positive is worth.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxr.evaluate.metrics import check_inputs

DEFAULT_PREVALENCES = np.round(np.linspace(0.01, 0.99, 99), 2)
CLINICAL_PREVALENCES = (0.05, 0.10, 0.20, 0.30)  # plausible shares of pneumonia among children imaged for it


def ppv_npv(sensitivity: Any, specificity: Any, prevalence: Any) -> tuple[np.ndarray, np.ndarray]:
    """(PPV, NPV) by Bayes' rule, broadcast over the inputs:
    PPV = se*pi / (se*pi + (1-sp)(1-pi)), NPV = sp(1-pi) / (sp(1-pi) + (1-se)*pi); NaN where 0/0."""
    se, sp, pi = (np.asarray(a, dtype="float64") for a in (sensitivity, specificity, prevalence))
    tp, fp = se * pi, (1 - sp) * (1 - pi)
    tn, fn = sp * (1 - pi), (1 - se) * pi
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fp), tn / (tn + fn)


def _interval(draws: np.ndarray, ci_level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = 100 * (1 - ci_level) / 2
    with warnings.catch_warnings():  # a quantity undefined in every draw (NPV at specificity 0) is NaN, said so
        warnings.simplefilter("ignore", RuntimeWarning)
        return tuple(np.nanpercentile(draws, [alpha, 100 - alpha], axis=0))  # type: ignore[return-value]


def prevalence_curves(sens_draws: Any, spec_draws: Any, prevalences: Sequence[float] = DEFAULT_PREVALENCES,
                      point: tuple[float, float] | None = None, ci_level: float = 0.95) -> pd.DataFrame:
    """PPV and NPV of one operating point across prevalences, with percentile intervals over the draws.

    `sens_draws`, `spec_draws`: paired bootstrap draws (same resamples); `point`: the (sensitivity, specificity)
    measured on the whole test set (default: the draws' medians). Columns: prevalence, ppv, ppv_low, ppv_high,
    npv, npv_low, npv_high.
    """
    se, sp = np.asarray(sens_draws, float).reshape(-1, 1), np.asarray(spec_draws, float).reshape(-1, 1)
    if se.shape != sp.shape or se.size == 0:
        raise ValueError("need paired, non-empty sensitivity and specificity draws")
    pi = np.asarray(prevalences, float).reshape(1, -1)
    if point is None:
        point = (float(np.nanmedian(se)), float(np.nanmedian(sp)))
    ppv, npv = ppv_npv(point[0], point[1], pi[0])
    ppv_d, npv_d = ppv_npv(se, sp, pi)
    (ppv_lo, ppv_hi), (npv_lo, npv_hi) = _interval(ppv_d, ci_level), _interval(npv_d, ci_level)
    return pd.DataFrame({"prevalence": pi[0], "ppv": ppv, "ppv_low": ppv_lo, "ppv_high": ppv_hi,
                         "npv": npv, "npv_low": npv_lo, "npv_high": npv_hi})


def net_benefit(y: Any, p: Any, thresholds: Any) -> np.ndarray:
    """Net benefit of treating when p >= pt, at each threshold probability pt in (0, 1):
    TP/n - FP/n * pt / (1 - pt) (Vickers & Elkin 2006)."""
    y, p = check_inputs(y, p)
    pt = np.asarray(thresholds, float).reshape(-1)
    if ((pt <= 0) | (pt >= 1)).any():
        raise ValueError("threshold probabilities must lie in (0, 1)")
    treat = p[None, :] >= pt[:, None]
    tp, fp = (treat & (y == 1)).sum(1), (treat & (y == 0)).sum(1)
    return tp / y.size - fp / y.size * pt / (1 - pt)


def treat_all_net_benefit(prevalence: Any, thresholds: Any) -> np.ndarray:
    """Net benefit of treating everyone: pi - (1 - pi) * pt / (1 - pt)."""
    pi, pt = np.asarray(prevalence, float), np.asarray(thresholds, float)
    return pi - (1 - pi) * pt / (1 - pt)


def decision_curve(y: Any, p: Any, thresholds: Any = None) -> pd.DataFrame:
    """Decision curve of the model's probabilities: columns threshold, model, treat_all, treat_none (= 0).

    Meaningful only when p is calibrated for the population (use calibrated probabilities), and at the test
    set's own prevalence.
    """
    y, p = check_inputs(y, p)
    pt = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, float).reshape(-1)
    return pd.DataFrame({"threshold": pt, "model": net_benefit(y, p, pt),
                         "treat_all": treat_all_net_benefit(y.mean(), pt), "treat_none": np.zeros(pt.size)})


def operating_point_net_benefit(sensitivity: Any, specificity: Any, prevalence: Any, pt: Any) -> np.ndarray:
    """Net benefit of a fixed operating point: se * pi - (1 - sp)(1 - pi) * pt / (1 - pt), broadcast."""
    se, sp, pi, pt = (np.asarray(a, dtype="float64") for a in (sensitivity, specificity, prevalence, pt))
    return se * pi - (1 - sp) * (1 - pi) * pt / (1 - pt)


def operating_point_curve(sens_draws: Any, spec_draws: Any, prevalence: float, thresholds: Any = None,
                          point: tuple[float, float] | None = None, ci_level: float = 0.95) -> pd.DataFrame:
    """Decision curve of the chosen operating point at a given prevalence, with intervals over the draws:
    columns threshold, model, model_low, model_high, treat_all, treat_none."""
    se, sp = np.asarray(sens_draws, float).reshape(-1, 1), np.asarray(spec_draws, float).reshape(-1, 1)
    pt = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, float).reshape(-1)
    if point is None:
        point = (float(np.nanmedian(se)), float(np.nanmedian(sp)))
    low, high = _interval(operating_point_net_benefit(se, sp, prevalence, pt[None, :]), ci_level)
    return pd.DataFrame({"threshold": pt, "model": operating_point_net_benefit(*point, prevalence, pt),
                         "model_low": low, "model_high": high,
                         "treat_all": treat_all_net_benefit(prevalence, pt), "treat_none": np.zeros(pt.size)})


def net_benefit_table(sens_draws: Any, spec_draws: Any, prevalences: Sequence[float] = CLINICAL_PREVALENCES,
                      test_prevalence: float | None = None, thresholds: Any = None,
                      point: tuple[float, float] | None = None, ci_level: float = 0.95) -> pd.DataFrame:
    """`operating_point_curve` at each prevalence of `prevalences` and at the test set's own (`test_prevalence`,
    when given), stacked: columns prevalence, population ("assumed" or "test"), threshold, model, model_low,
    model_high, treat_all, treat_none. The same paired draws of sensitivity and specificity (e.g. the
    patient-level `cxr.evaluate.bootstrap_draws` of the test set) are carried to every prevalence."""
    rows = [(float(pi), "assumed") for pi in prevalences]
    if test_prevalence is not None:
        rows.append((float(test_prevalence), "test"))
    parts = [operating_point_curve(sens_draws, spec_draws, pi, thresholds, point, ci_level)
             .assign(prevalence=pi, population=kind) for pi, kind in rows]
    table = pd.concat(parts, ignore_index=True)
    return table[["prevalence", "population", "threshold", "model", "model_low", "model_high", "treat_all",
                  "treat_none"]]
