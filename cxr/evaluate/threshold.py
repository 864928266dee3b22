"""Operating-point policies that a saturated validation set can pin down, and their stability under resampling.

`choose` is the one chooser; its defaults are the Config's (`threshold_policy`, `threshold_tolerance`,
`target_sensitivity`), and the study's operating point is `cxr.pipeline.operating_point`, which passes its
Config's settings. Every policy reads validation labels and probabilities only:

- "sensitivity": the highest threshold whose validation sensitivity reaches `target_sensitivity`.
- "specificity": the lowest threshold whose validation specificity reaches `target_specificity` (the rule that
  keeps class 0's sensitivity: bacterial vs viral, where class 0 is bacterial).
- "youden": maximal Youden's J = sensitivity + specificity - 1 (ties to the highest threshold). When the
  validation classes are almost separated (AUROC near 1), J is maximal (or within one error of it) over a wide range
  of thresholds, and its argmax jumps from one model or resample to the next.
- "plateau": the middle (median by length in logit space) of the thresholds whose J is within `tolerance` of
  the maximum: thresholds whose sensitivity + specificity is within `tolerance` of the best are treated as equally
  good (0.05: about two standard errors of J on a validation set with a few hundred images per class).
  `tolerance="one_error"` gives 1 / n_minority, the J cost of one more error in the smaller class. (How the
  policies moved in simulations: doc/design.md, "Operating point, calibration and evaluation".)
- "calibrated": the raw probability at which the calibrated probability reaches `target` (0.5, or the validation
  prevalence), found by inverting THE calibrator fitted on validation and saved with the model
  (`cxr.evaluate.calibration.fit_calibrator`, passed as `calibrator`), so the operating point and the saved model's
  calibrated probabilities agree. With Platt scaling, sigmoid((logit(target) - b) / a); with temperature scaling,
  sigmoid(T logit(target)): 0.5 stays 0.5, so only target="prevalence" moves the threshold.

The threshold is one of the validation scores or a point between them, kept inside the open interval (0, 1) so
that it stays a usable probability.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import special
from sklearn import metrics as skm

from cxr.config import THRESHOLD_POLICIES, Config
from cxr.evaluate.calibration import fit_calibrator, invert_calibrator, logit
from cxr.evaluate.metrics import check_inputs, weighted_rates
from cxr.evaluate.resample import resample_indices

POLICIES = THRESHOLD_POLICIES  # defined once, with the Config
EPS = 1e-6
DEFAULT_TOLERANCE = Config.threshold_tolerance  # the Config's default, not a second one


def _roc_point(y: np.ndarray, p: np.ndarray, policy: str, target_sensitivity: float,
               target_specificity: float = 0.9) -> float:
    """The "youden", "sensitivity" or "specificity" threshold: one of the validation scores (as
    `sklearn.metrics.roc_curve` gives them), clipped into (0, 1)."""
    fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)
    if policy == "youden":
        i = int(np.argmax(tpr - fpr))
    elif policy == "specificity":
        if not 0.0 < target_specificity <= 1.0:
            raise ValueError("target_specificity must lie in (0, 1]")
        i = int(np.flatnonzero(fpr <= 1.0 - target_specificity + 1e-12)[-1])  # fpr starts at 0: one always exists
    else:
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError("target_sensitivity must lie in (0, 1]")
        i = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])  # tpr ends at 1, so one always exists
    return float(np.clip(thresholds[i], EPS, 1.0 - EPS))  # thresholds[0] is +inf in scikit-learn


def _plateau(y: np.ndarray, p: np.ndarray, tolerance: float | str) -> float:
    """The logit-space middle of the near-optimal thresholds (see module docstring).

    J is a step function of the threshold: scikit-learn's roc_curve threshold k (descending scores) classifies
    like every t in (thr[k + 1], thr[k]]. The near-optimal set is the union of those intervals whose J is within
    `tolerance` of the maximum; the threshold chosen is its median by length in logit space (half of the
    near-optimal logit range lies below it), which is inside the set even when the set has gaps, and depends on
    the whole set rather than only on its two ends.
    """
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    if tolerance == "one_error":
        tolerance = 1.0 / min(int(y.sum()), int((1 - y).sum()))
    z = logit(np.clip(thr, 0.0, 1.0))
    upper, lower = z[1:], np.r_[z[2:], z[-1]]  # interval of roc threshold k = 1..end (k = 0 is +inf: all negative)
    good = j[1:] >= j.max() - tolerance - 1e-12
    length = np.where(good, upper - lower, 0.0)
    if length.sum() <= 0:  # a single near-optimal threshold (no gap): take it
        return float(np.clip(special.expit(upper[good].max()), EPS, 1 - EPS))
    below = np.cumsum(length[::-1])[::-1] - length  # near-optimal length below each interval (ascending z)
    k = int(np.flatnonzero(below <= length.sum() / 2).min())  # the interval holding the median
    middle = lower[k] + (length.sum() / 2 - below[k])
    return float(np.clip(special.expit(middle), EPS, 1 - EPS))


def choose(y_val: Any, p_val: Any, policy: str = Config.threshold_policy,
           tolerance: float | str = DEFAULT_TOLERANCE, target: float | str = 0.5,
           target_sensitivity: float = Config.target_sensitivity,
           calibrator: dict[str, Any] | None = None,
           target_specificity: float = Config.target_specificity) -> float:
    """The decision threshold (positive when p >= threshold) of `policy`, from validation data only, in (0, 1).

    `policy`: one of POLICIES (module docstring; default the Config's). `target_sensitivity`: for "sensitivity";
    `target_specificity`: for "specificity".
    `tolerance`: for "plateau" (a J difference, or "one_error"). `target`: for "calibrated", the calibrated
    probability at which to call positive: 0.5 (fewest errors at the validation prevalence) or "prevalence"
    (the validation prevalence: the Bayes threshold for equal weight on sensitivity and specificity, Youden's aim).
    `calibrator`: for "calibrated", the parameters of `cxr.evaluate.calibration.fit_calibrator` (any method)
    fitted on this validation set, the calibrator saved with the model; the threshold is its inverse at `target`.
    A Platt fit whose slope is not positive (an untrained model) has no inverse: the plateau rule is used instead.
    """
    y, p = check_inputs(y_val, p_val)
    if len(np.unique(y)) < 2:
        raise ValueError("choosing a threshold needs both classes in the validation labels")
    if policy in ("youden", "sensitivity", "specificity"):
        return _roc_point(y, p, policy, target_sensitivity, target_specificity)
    if policy == "plateau":
        return _plateau(y, p, tolerance)
    if policy == "calibrated":
        if calibrator is None:
            raise ValueError("the 'calibrated' policy needs the calibrator fitted on validation (fit_calibrator)")
        if calibrator["method"] == "platt" and not calibrator["a"] > 1e-9:
            return _plateau(y, p, tolerance)  # the scores do not rise with the label: no calibrated cut exists
        cut = float(y.mean()) if target == "prevalence" else float(target)
        return float(np.clip(invert_calibrator(calibrator, cut), EPS, 1 - EPS))
    raise ValueError(f"unknown threshold policy {policy!r}; choose one of {POLICIES}")


def _sens_spec(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    r = weighted_rates(y, p, np.ones((1, y.size)), t)
    return float(r["sensitivity"][0]), float(r["specificity"][0])


def stability(y_val: Any, p_val: Any, policy: str | Sequence[str] = ("youden", "plateau"), n_boot: int = 200,
              seed: int = 0, groups: Any = None, calibrator: dict[str, Any] | None = None,
              **kw: Any) -> pd.DataFrame:
    """How the chosen threshold moves under bootstrap resampling of the validation set (patient-grouped when
    `groups` is given). Each policy sees the same resamples. For "calibrated", the calibrator's method
    (`calibrator["method"]`, required then) is refitted on each resample, as the whole rule would be.

    One row per (policy, resample): threshold, logit (of the threshold), sensitivity and specificity on the
    resample (what the policy sees), full_sensitivity and full_specificity on the whole validation set at that
    threshold (how much the operating point itself moves).
    """
    y, p = check_inputs(y_val, p_val)
    policies = [policy] if isinstance(policy, str) else list(policy)
    if "calibrated" in policies and calibrator is None:
        raise ValueError("the 'calibrated' policy needs the calibrator fitted on validation (fit_calibrator)")
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_boot):
        idx = resample_indices(y, groups, rng)
        for name in policies:
            refit = fit_calibrator(y[idx], p[idx], calibrator["method"]) if name == "calibrated" else None
            t = choose(y[idx], p[idx], name, calibrator=refit, **kw)
            rows.append((name, b, t, float(special.logit(t)), *_sens_spec(y[idx], p[idx], t), *_sens_spec(y, p, t)))
    return pd.DataFrame(rows, columns=["policy", "resample", "threshold", "logit", "sensitivity", "specificity",
                                       "full_sensitivity", "full_specificity"])


def stability_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per policy: median and IQR of the threshold, SD of its logit, and the 2.5-97.5% range of the full
    validation sensitivity and specificity at the resampled thresholds."""
    g = table.groupby("policy", sort=False)
    def q(column: str, level: float) -> pd.Series:
        return g[column].quantile(level)

    return pd.DataFrame({"threshold_median": q("threshold", 0.5), "threshold_q25": q("threshold", 0.25),
                         "threshold_q75": q("threshold", 0.75), "logit_sd": g["logit"].std(),
                         "sensitivity_low": q("full_sensitivity", 0.025),
                         "sensitivity_high": q("full_sensitivity", 0.975),
                         "specificity_low": q("full_specificity", 0.025),
                         "specificity_high": q("full_specificity", 0.975)})


def cross_fitted(y: Any, p: Any, folds: Any, rule: Any, *, count_kept: bool = False) -> pd.DataFrame:
    """The operating rule cross-fitted: for each fold f, the threshold `rule(y, p)` chosen on the out-of-fold
    predictions of the OTHER folds, applied to fold f's. One row per fold (fold, n, threshold, sensitivity,
    specificity on the held-out fold) and a last row "pooled" (every held-out call together), so a reader sees how
    the rule transfers to children it was not chosen on, as it must transfer to the test.

    count_kept: the specificity as the share of class 0 not called (`cxr.foldcheck`'s, doc/fold_check.json)
    instead of 1 - the share called (the study's, metrics.json); equal but for the rounding of the last bit, each
    kept so that its committed numbers are reproduced exactly."""
    y, p = check_inputs(y, p)
    folds = np.asarray(folds)
    if folds.shape != y.shape:
        raise ValueError(f"folds has {folds.size} entries for {y.size} predictions")
    rows, called = [], np.zeros(y.size, bool)
    for f in np.unique(folds):
        held = folds == f
        if len(np.unique(y[~held])) < 2:
            raise ValueError(f"the folds other than {f} hold one class only: no rule can be chosen on them")
        t = float(rule(y[~held], p[~held]))
        called[held] = p[held] >= t
        sens = float(called[held][y[held] == 1].mean()) if (y[held] == 1).any() else float("nan")
        spec = _specificity(called[held][y[held] == 0], count_kept) if (y[held] == 0).any() else float("nan")
        rows.append({"fold": str(f), "n": int(held.sum()), "threshold": t, "sensitivity": sens, "specificity": spec})
    rows.append({"fold": "pooled", "n": int(y.size), "threshold": float("nan"),
                 "sensitivity": float(called[y == 1].mean()), "specificity": _specificity(called[y == 0], count_kept)})
    return pd.DataFrame(rows)


def _specificity(called: np.ndarray, count_kept: bool) -> float:
    """The share of class-0 cases not called positive: counted, or as 1 - the share called (`cross_fitted`)."""
    return float((~called).mean()) if count_kept else float(1 - called.mean())
