"""cxr.evaluate.calibration: temperature and Platt scaling fitted on validation only, reliability table, report."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import special
from sklearn import metrics as skm

from cxr.evaluate import calibration as C
from cxr.evaluate import expected_calibration_error


def calibrated_set(n: int, seed: int, sharpen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities q; returned probabilities sigmoid(sharpen * logit(q))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.5, 1.5, n)
    y = (rng.random(n) < special.expit(z)).astype(int)
    return y, special.expit(sharpen * z)


def test_temperature_above_one_for_overconfident_and_lowers_log_loss():
    y, p = calibrated_set(5000, seed=0, sharpen=3.0)
    t = C.fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.15)
    before, after = skm.log_loss(y, p), skm.log_loss(y, C.apply_temperature(p, t))
    assert after < before - 0.05
    assert C.calibration_metrics(y, C.apply_temperature(p, t))["ece"] < expected_calibration_error(y, p)


def test_temperature_near_one_on_calibrated_data_and_below_one_when_underconfident():
    y, p = calibrated_set(20000, seed=1)
    assert C.fit_temperature(y, p) == pytest.approx(1.0, abs=0.06)
    y, p = calibrated_set(5000, seed=2, sharpen=0.5)
    assert C.fit_temperature(y, p) == pytest.approx(0.5, rel=0.15)


def test_fit_never_sees_test_labels():
    """The fit takes validation only; scrambling the test labels changes the test scores, not the calibrator."""
    for name in ("fit_temperature", "fit_platt", "fit_calibrator"):
        assert list(inspect.signature(getattr(C, name)).parameters)[:2] == ["y_val", "p_val"]
    y_val, p_val = calibrated_set(2000, seed=3, sharpen=2.5)
    y_test, p_test = calibrated_set(1000, seed=4, sharpen=2.5)
    scrambled = np.random.default_rng(0).permutation(y_test)
    for method in ("temperature", "platt"):
        a = C.calibrate_and_report(y_val, p_val, y_test, p_test, method)
        b = C.calibrate_and_report(y_val, p_val, scrambled, p_test, method)
        params = [k for k in a if k in ("temperature", "a", "b")]
        assert params and all(a[k] == b[k] for k in params)
        assert a["fitted_on"] == "validation" and a["validation"] == b["validation"]
        assert a["test"]["after"]["log_loss"] != b["test"]["after"]["log_loss"]
        assert a["test"]["after"]["log_loss"] < a["test"]["before"]["log_loss"]


def test_calibration_keeps_the_ranking():
    y, p = calibrated_set(500, seed=5, sharpen=3.0)
    for q in (C.apply_temperature(p, 2.7), C.apply_platt(p, 0.4, -0.3)):
        assert skm.roc_auc_score(y, q) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        order = np.argsort(p, kind="stable")
        assert (np.diff(q[order]) > 0).all()
    # saturated probabilities stay finite, inside (0, 1) and ordered (below 1e-7 they are clipped, so tied)
    extremes = np.array([0.0, 1e-9, 1e-6, 0.5, 1 - 1e-6, 1.0])
    q = C.apply_temperature(extremes, 2.7)
    assert np.isfinite(q).all() and (q > 0).all() and (q < 1).all() and (np.diff(q) >= 0).all()
    assert q[3] == pytest.approx(0.5) and q[0] == q[1] < q[2]


def test_platt_recovers_slope_and_intercept():
    rng = np.random.default_rng(6)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < special.expit(0.5 * z - 0.7)).astype(int)
    a, b = C.fit_platt(y, special.expit(z))
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.7, abs=0.08)
    with pytest.raises(ValueError, match="both classes"):
        C.fit_platt([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="method"):
        C.fit_calibrator([0, 1], [0.2, 0.3], "isotonic")


def test_reliability_table_by_hand_and_consistent_with_ece():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.95, 0.92, 1.0])
    t = C.reliability_table(y, p)
    assert len(t) == 10 and t["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert t.loc[9, "mean_predicted"] == pytest.approx((0.95 + 0.92 + 1.0) / 3)
    assert t.loc[9, "observed_rate"] == pytest.approx(2 / 3) and np.isnan(t.loc[5, "observed_rate"])
    filled = t.dropna()
    ece = (filled["count"] * (filled["observed_rate"] - filled["mean_predicted"]).abs()).sum() / len(y)
    assert ece == pytest.approx(expected_calibration_error(y, p))


def test_calibration_report_structure():
    y, p = calibrated_set(300, seed=7, sharpen=3.0)
    r = C.calibration_report(y, p, C.apply_temperature(p, 3.0))
    assert set(r) == {"before", "after"} and set(r["before"]) == {"brier", "ece", "log_loss"}
    assert r["before"]["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert r["before"]["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-6)
