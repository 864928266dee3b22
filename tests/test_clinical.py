"""cxr.evaluate.clinical: PPV/NPV by Bayes' rule across prevalences, net benefit and decision curves, descriptions."""
from __future__ import annotations

import numpy as np
import pytest

from cxr import reporting
from cxr.evaluate import clinical as K

Y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.4, 0.15])


def test_ppv_npv_by_hand():
    ppv, npv = K.ppv_npv(0.9, 0.8, 0.1)
    assert ppv == pytest.approx(0.09 / (0.09 + 0.18))  # = 1/3
    assert npv == pytest.approx(0.72 / (0.72 + 0.01))
    ppv, npv = K.ppv_npv([0.9, 1.0], [0.8, 0.5], [0.5, 0.2])
    assert ppv == pytest.approx([0.45 / 0.55, 0.2 / 0.6]) and npv == pytest.approx([0.4 / 0.45, 1.0])


def test_ppv_npv_equal_the_confusion_matrix_at_the_sample_prevalence():
    t = 0.5
    tp, fp = ((P >= t) & (Y == 1)).sum(), ((P >= t) & (Y == 0)).sum()
    tn, fn = ((P < t) & (Y == 0)).sum(), ((P < t) & (Y == 1)).sum()
    ppv, npv = K.ppv_npv(tp / (tp + fn), tn / (tn + fp), Y.mean())
    assert ppv == pytest.approx(tp / (tp + fp)) and npv == pytest.approx(tn / (tn + fn))


def test_net_benefit_by_hand():
    # pt = 0.25: treat p >= 0.25 -> TP 2 (0.9, 0.6), FP 3 (0.7, 0.3, 0.4): 2/10 - 3/10 * (1/3) = 0.1
    # pt = 0.5: TP 2, FP 1 (0.7): 0.2 - 0.1 = 0.1;  pt = 0.8: TP 1, FP 0: 0.1
    np.testing.assert_allclose(K.net_benefit(Y, P, [0.25, 0.5, 0.8]), [0.1, 0.1, 0.1])
    # pt = 0.1: TP 3, FP 6 (0.7, 0.3, 0.1, 0.1, 0.4, 0.15; p >= pt includes the ties): 0.3 - 0.6 / 9
    np.testing.assert_allclose(K.net_benefit(Y, P, [0.1]), [0.3 - 0.6 / 9])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        K.net_benefit(Y, P, [0.0])


def test_treat_all_and_decision_curve():
    assert K.treat_all_net_benefit(0.3, 0.25) == pytest.approx(0.3 - 0.7 / 3)
    assert K.treat_all_net_benefit(0.3, 0.3) == pytest.approx(0.0)  # treat-all crosses zero at pt = prevalence
    dc = K.decision_curve(Y, P, [0.1, 0.25, 0.5])
    assert list(dc.columns) == ["threshold", "model", "treat_all", "treat_none"]
    np.testing.assert_allclose(dc["treat_all"], K.treat_all_net_benefit(0.3, [0.1, 0.25, 0.5]))
    assert (dc["treat_none"] == 0).all()
    full = K.decision_curve(Y, P)
    assert (np.diff(full["treat_all"]) < 0).all()  # falls with the threshold probability
    # a model that treats everyone equals treat-all; a perfect one earns the prevalence at every threshold
    np.testing.assert_allclose(K.net_benefit(Y, np.ones(10), full["threshold"]), full["treat_all"])
    np.testing.assert_allclose(K.net_benefit(Y, Y.astype(float), full["threshold"]), 0.3)


def test_operating_point_net_benefit_equals_counting():
    yhat = (P >= 0.5).astype(float)
    sens, spec = yhat[Y == 1].mean(), 1 - yhat[Y == 0].mean()
    pt = np.array([0.05, 0.3, 0.6])
    np.testing.assert_allclose(K.operating_point_net_benefit(sens, spec, Y.mean(), pt), K.net_benefit(Y, yhat, pt))


def draws(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.beta(900, 40, n), rng.beta(60, 40, n)  # sensitivity ~0.96, specificity ~0.6


def test_prevalence_curves_monotone_with_intervals():
    se, sp = draws()
    curves = K.prevalence_curves(se, sp, point=(0.96, 0.6))
    assert list(curves.columns) == ["prevalence", "ppv", "ppv_low", "ppv_high", "npv", "npv_low", "npv_high"]
    assert (np.diff(curves["ppv"]) > 0).all() and (np.diff(curves["npv"]) < 0).all()
    assert (np.diff(curves["ppv_low"]) > 0).all() and (np.diff(curves["npv_high"]) < 0).all()
    assert (curves["ppv_low"] <= curves["ppv"]).all() and (curves["ppv"] <= curves["ppv_high"]).all()
    assert (curves["npv_low"] <= curves["npv"]).all() and (curves["npv"] <= curves["npv_high"]).all()
    row = curves.set_index("prevalence").loc[0.1]
    assert row.ppv == pytest.approx(K.ppv_npv(0.96, 0.6, 0.1)[0])
    text = reporting.describe_prevalence(curves)
    assert f"PPV {row.ppv:.2f} ({row.ppv_low:.2f}-{row.ppv_high:.2f})" in text and "10% prevalence" in text
    with pytest.raises(ValueError, match="paired"):
        K.prevalence_curves(se, sp[:-1])


def test_operating_point_curve_and_descriptions():
    se, sp = draws()
    curve = K.operating_point_curve(se, sp, prevalence=0.3, point=(0.96, 0.6))
    assert (np.diff(curve["model"]) < 0).all()  # spec < 1: false positives cost more as pt rises
    assert (curve["model_low"] <= curve["model"]).all() and (curve["model"] <= curve["model_high"]).all()
    text = reporting.describe_decision_curve(curve)
    # beats treat-none while se*pi > (1-sp)(1-pi) w, i.e. w < 0.288/0.28; beats treat-all for pt above ~0.02
    better = curve[(curve.model > curve.treat_all) & (curve.model > 0)]["threshold"]
    assert f"{better.min():.2f}-{better.max():.2f}" in text and "lower interval bound" in text
    useless = K.decision_curve(Y, np.full(10, 0.5), [0.2, 0.4, 0.6])
    assert "does not beat" in reporting.describe_decision_curve(useless)


def test_net_benefit_table_across_prevalences_and_its_description():
    se, sp = draws()
    table = K.net_benefit_table(se, sp, test_prevalence=0.625, point=(0.96, 0.6), thresholds=[0.05, 0.1, 0.3])
    assert list(table.columns) == ["prevalence", "population", "threshold", "model", "model_low", "model_high",
                                   "treat_all", "treat_none"]
    assert table["prevalence"].unique().tolist() == [0.05, 0.1, 0.2, 0.3, 0.625]
    assert table.groupby("prevalence")["population"].first().to_dict() == {
        0.05: "assumed", 0.1: "assumed", 0.2: "assumed", 0.3: "assumed", 0.625: "test"}
    for pi, part in table.groupby("prevalence"):
        one = K.operating_point_curve(se, sp, pi, [0.05, 0.1, 0.3], point=(0.96, 0.6))
        np.testing.assert_allclose(part[one.columns].to_numpy(float), one.to_numpy(float))
    # by hand: at 10% prevalence and pt = 0.1, NB = 0.96 * 0.1 - 0.4 * 0.9 * (1/9) = 0.056
    row = table[(table.prevalence == 0.1) & (table.threshold == 0.1)].iloc[0]
    assert row.model == pytest.approx(0.096 - 0.04) and row.treat_all == pytest.approx(0.0)
    assert (table["model_low"] <= table["model"]).all() and (table["model"] <= table["model_high"]).all()
    assert len(K.net_benefit_table(se, sp)) == 4 * 99  # the default grid, no test prevalence
    text = reporting.describe_net_benefit_table(table)
    assert "at 5% (assumed)" in text and "62% (the test set)" in text
    for caveat in ("carry over unchanged", "threshold probability", "not an external validation"):
        assert caveat in text
