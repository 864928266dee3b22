"""cxr.evaluate.calibration: temperature and Platt scaling fitted on validation only, reliability table, report."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import optimize, special
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from cxr import reporting
from cxr.evaluate import calibration as C
from cxr.evaluate import expected_calibration_error


NO_BOOTSTRAP = {"n_bootstrap": 0, "ci_level": 0.95, "seed": 0}


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
        a = C.calibrate_and_report(y_val, p_val, y_test, p_test, method, **NO_BOOTSTRAP)
        b = C.calibrate_and_report(y_val, p_val, scrambled, p_test, method, **NO_BOOTSTRAP)
        params = [k for k in a if k in ("temperature", "a", "b")]
        assert params and all(a[k] == b[k] for k in params)
        assert a["fitted_on"].startswith("selection data") and a["selection"] == b["selection"]
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
    assert set(r) == {"before", "after"}
    assert set(r["before"]) == {"brier", "ece", "log_loss", "intercept", "slope"}
    assert r["before"]["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert r["before"]["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-6)


def test_invert_calibrator_is_the_inverse_of_apply():
    q = np.array([0.01, 0.2, 0.5, 0.8, 0.99])
    for params in ({"method": "temperature", "temperature": 2.5}, {"method": "platt", "a": 0.4, "b": -0.7}):
        np.testing.assert_allclose(C.apply_calibrator(params, C.invert_calibrator(params, q)), q, rtol=1e-9)
    assert C.invert_calibrator({"method": "temperature", "temperature": 2.5}, 0.5) == pytest.approx(0.5)
    assert np.isnan(C.invert_calibrator({"method": "platt", "a": -0.1, "b": 0.0}, 0.5))


def test_slope_and_intercept_on_calibrated_overconfident_and_shifted_scores():
    y, p = calibrated_set(20000, seed=8)
    r = C.calibration_intercept_slope(y, p)
    assert r["slope"] == pytest.approx(1.0, abs=0.05) and r["intercept"] == pytest.approx(0.0, abs=0.05)
    y, p = calibrated_set(20000, seed=9, sharpen=2.0)  # over-confident: logits twice as extreme as the truth
    r = C.calibration_intercept_slope(y, p)
    assert r["slope"] == pytest.approx(0.5, abs=0.03) and r["slope"] < 1
    y, p = calibrated_set(20000, seed=10)
    r = C.calibration_intercept_slope(y, special.expit(special.logit(p) + 1.0))  # every risk too high
    assert r["intercept"] == pytest.approx(-1.0, abs=0.06) and r["slope"] == pytest.approx(1.0, abs=0.05)
    assert np.isnan(C.calibration_intercept_slope([1, 1], [0.2, 0.3])["slope"])


def test_vectorised_fits_match_scikit_learn_and_scipy():
    """The bootstrap's Newton fits equal Platt's scikit-learn fit (slope) and a 1-D maximum likelihood (intercept),
    also with integer resampling weights."""
    y, p = calibrated_set(400, seed=11, sharpen=1.7)
    z = C.logit(p)
    w = np.random.default_rng(0).integers(0, 3, (3, y.size))
    fits = C._intercept_slope(z, y.astype(float), w)
    for b in range(3):
        yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
        tight = LogisticRegression(C=C.PLATT_C, tol=1e-12, max_iter=10000).fit(C.logit(pp)[:, None], yy)
        assert fits[1, b] == pytest.approx(tight.coef_[0, 0], rel=1e-6)  # fit_platt's model, fully converged
        assert fits[1, b] == pytest.approx(C.fit_platt(yy, pp)[0], rel=1e-3)
        zz = C.logit(pp)
        best = optimize.minimize_scalar(lambda a: C._log_loss(yy, zz + a), bounds=(-5, 5), method="bounded",
                                        options={"xatol": 1e-9}).x
        assert fits[0, b] == pytest.approx(best, abs=1e-5)


def test_calibration_intervals_cover_and_widen_with_copied_patients():
    y, p = calibrated_set(300, seed=12, sharpen=2.0)
    r = C.calibration_intervals(y, p, n_bootstrap=300, ci_level=0.95, seed=0)
    assert r["slope"]["ci_low"] < 0.5 < r["slope"]["ci_high"] < 1  # truth 0.5, clearly over-confident
    assert r["intercept"]["ci_low"] < r["intercept"]["value"] < r["intercept"]["ci_high"]
    k = 3  # three identical images per patient: no more information, so about the same interval
    copied = C.calibration_intervals(np.repeat(y, k), np.repeat(p, k), np.repeat(np.arange(300), k),
                                     n_bootstrap=300, ci_level=0.95, seed=0)
    naive = C.calibration_intervals(np.repeat(y, k), np.repeat(p, k), n_bootstrap=300, ci_level=0.95, seed=0)
    width = {name: x["slope"]["ci_high"] - x["slope"]["ci_low"] for name, x in
             (("single", r), ("patients", copied), ("images", naive))}
    assert width["patients"] == pytest.approx(width["single"], rel=0.25) and width["images"] < 0.75 * width["single"]
    assert np.isnan(C.calibration_intervals([0, 1, 1], [0.2, 0.6, 0.9], n_bootstrap=50, ci_level=0.95,
                                            seed=0)["slope"]["ci_low"])  # a single negative: no interval


def test_smoothed_reliability_follows_the_diagonal_when_calibrated():
    y, p = calibrated_set(4000, seed=13)
    curve = C.smoothed_reliability(y, p, n_bootstrap=100, ci_level=0.95, seed=0)
    assert list(curve.columns) == ["predicted", "observed", "low", "high"] and len(curve) == 101
    assert curve["predicted"].min() == p.min() and curve["predicted"].max() == pytest.approx(p.max())
    middle = curve[curve["predicted"].between(0.05, 0.95)]
    assert (middle["observed"] - middle["predicted"]).abs().max() < 0.05
    assert ((middle["low"] <= middle["predicted"] + 0.01) & (middle["predicted"] - 0.01 <= middle["high"])).all()
    assert (curve["low"] <= curve["observed"]).all() and (curve["observed"] <= curve["high"]).all()
    # over-confident scores: observed rates pulled towards the middle (below the diagonal at high predictions)
    y, p = calibrated_set(4000, seed=14, sharpen=3.0)
    curve = C.smoothed_reliability(y, p, n_bootstrap=0, ci_level=0.95, seed=0)
    at = curve.set_index("predicted")["observed"]
    assert at[(at.index > 0.9) & (at.index < 0.99)].max() < 0.9 and at[(at.index > 0.01) & (at.index < 0.1)].min() > 0.1
    assert curve["low"].isna().all()  # no band without resamples
    assert C.smoothed_reliability([1, 1], [0.2, 0.3], n_bootstrap=10, ci_level=0.95, seed=0)["observed"].isna().all()


def test_describe_calibration_reads_blocks_from_metrics_json_old_and_new():
    y, p = calibrated_set(400, seed=15, sharpen=2.5)
    block = C.calibrate_and_report(y[:200], p[:200], y[200:], p[200:], "platt", n_bootstrap=50, ci_level=0.95,
                                   seed=0)
    text = reporting.describe_calibration(block)
    assert text.startswith("Platt scaling fitted on the out-of-fold predictions (a = ") and "calibration slope" in text
    assert "After calibration, slope: " in text
    block["test"]["after"]["slope"] = None  # NaN is written to metrics.json as null
    assert "-> n/a (ideal 1)" in reporting.describe_calibration(block) and "slope: undefined" in reporting.describe_calibration(block)
    old = {**block, "test": {k: {m: v for m, v in block["test"][k].items() if m not in ("slope", "intercept")}
                             for k in ("before", "after")}}
    text = reporting.describe_calibration(old)  # a block from before slope and intercept were reported
    assert "slope" not in text and "log-loss" in text and "expected calibration error" in text
