"""cxr.evaluate.threshold: operating-point policies on validation data and their stability under resampling."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import special

from cxr import evaluate as E, reporting
from cxr.evaluate import resample as R
from cxr.evaluate import threshold as T


def nearly_separable(seed: int = 10, n0: int = 170, n1: int = 510, k0: int = 3, k1: int = 6):
    """A saturated validation set like ours (680 images, AUROC > 0.99): two well separated bulks in logit space
    and a few images of each class scattered between them, where Youden's J has many near-equal maxima."""
    rng = np.random.default_rng(seed)
    z0 = np.r_[rng.normal(-4.5, 1.0, n0 - k0), rng.uniform(-2.5, 2.5, k0)]
    z1 = np.r_[rng.normal(4.5, 1.0, n1 - k1), rng.uniform(-2.5, 2.5, k1)]
    return np.r_[np.zeros(n0, int), np.ones(n1, int)], special.expit(np.r_[z0, z1])


def test_plateau_is_markedly_steadier_than_youden_on_a_saturated_validation_set():
    y, p = nearly_separable()
    assert E.metric_values(y, p, 0.5)["auroc"] > 0.99
    table = T.stability(y, p, ("youden", "plateau"), n_boot=60, seed=0)
    sd = table.groupby("policy")["logit"].std()
    iqr = table.groupby("policy")["logit"].quantile(0.75) - table.groupby("policy")["logit"].quantile(0.25)
    assert sd["plateau"] < 0.3 * sd["youden"]
    assert iqr["plateau"] < 0.3 * iqr["youden"]
    s = T.stability_summary(table)
    assert (s["sensitivity_low"] > 0.95).all() and (s["specificity_low"] > 0.9).all()
    text = reporting.describe_stability(table)
    assert "60 bootstrap resamples" in text and f"{s.loc['plateau', 'threshold_median']:.3f}" in text


def test_plateau_on_separable_data_is_the_logit_midpoint_of_the_gap():
    assert T.choose([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], "plateau", tolerance=0.0) == pytest.approx(0.5)
    mid = (special.logit(0.3) + special.logit(0.9)) / 2
    assert T.choose([0, 0, 1, 1], [0.1, 0.3, 0.9, 0.95], "plateau", tolerance=0.0) == pytest.approx(special.expit(mid))
    # Youden on the same data: the lowest positive score, the top of the plateau
    assert T.choose([0, 0, 1, 1], [0.1, 0.3, 0.9, 0.95], "youden") == pytest.approx(0.9)


def test_plateau_by_hand_with_a_dip_and_the_one_error_rule():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    z = np.array([-4.0, -3.0, -2.0, 1.0, -1.0, 2.5, 3.0, 4.0])
    p = special.expit(z)
    # J by threshold (positive when z >= t): (-3,-2] .5 | (-2,-1] .75 | (-1,1] .5 (a dip) | (1,2.5] .75 | (2.5,3] .5
    # tolerance 0: near-optimal set (-2,-1] and (1,2.5], logit length 1 + 1.5; its median lies 0.25 into the second
    t0 = T.choose(y, p, "plateau", tolerance=0.0)
    assert special.logit(t0) == pytest.approx(1.25)
    m = E.metric_values(y, p, t0)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(0.75)  # inside the set, not in the dip
    # one error in the smaller class (1/4): every J >= 0.5, i.e. (-3, 3]: middle 0
    assert special.logit(T.choose(y, p, "plateau", tolerance="one_error")) == pytest.approx(0.0, abs=1e-9)
    # Youden: the highest threshold with maximal J
    assert special.logit(T.choose(y, p, "youden")) == pytest.approx(2.5)


def test_calibrated_policy_inverts_the_saved_calibrator():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.5, 20000)
    y = (rng.random(z.size) < special.expit(0.6 * z - 1.2)).astype(int)  # calibrated p = 0.5 at z = 2
    p = special.expit(z)
    platt = E.fit_calibrator(y, p, "platt")
    t = T.choose(y, p, "calibrated", calibrator=platt)
    assert special.logit(t) == pytest.approx(2.0, abs=0.15)
    assert E.apply_calibrator(platt, t) == pytest.approx(0.5)  # the saved model calls 0.5 exactly there
    t_prev = T.choose(y, p, "calibrated", target="prevalence", calibrator=platt)
    assert special.logit(t_prev) == pytest.approx((special.logit(y.mean()) + 1.2) / 0.6, abs=0.15)
    # temperature scaling: 0.5 stays 0.5; the prevalence target moves to T * logit(prevalence)
    temp = E.fit_calibrator(y, p, "temperature")
    assert T.choose(y, p, "calibrated", calibrator=temp) == pytest.approx(0.5)
    t_temp = T.choose(y, p, "calibrated", target="prevalence", calibrator=temp)
    assert special.logit(t_temp) == pytest.approx(temp["temperature"] * special.logit(y.mean()))
    assert E.apply_calibrator(temp, t_temp) == pytest.approx(y.mean())
    # the calibrator given is the one used: no fit of its own
    other = {"method": "platt", "a": 1.0, "b": -1.0}
    assert special.logit(T.choose(y, p, "calibrated", calibrator=other)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="calibrator"):
        T.choose(y, p, "calibrated")
    with pytest.raises(ValueError, match="calibrator"):
        T.stability(y[:200], p[:200], "calibrated", n_boot=2)


@pytest.mark.parametrize("policy", T.POLICIES)
def test_thresholds_are_probabilities_even_when_scores_saturate(policy):
    for y, p in (([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]), nearly_separable(k0=0, k1=0)):
        calibrator = E.fit_calibrator(y, p, "platt") if policy == "calibrated" else None
        t = T.choose(y, p, policy, calibrator=calibrator)
        assert np.isfinite(t) and 0.0 < t < 1.0
        if policy not in ("sensitivity", "specificity"):  # these stop at their targets, not at a perfect cut
            assert E.metric_values(y, p, t)["balanced_accuracy"] == 1.0


def test_policies_read_validation_only_and_reject_bad_input():
    for f in (T.choose, T.stability):
        assert list(inspect.signature(f).parameters)[:2] == ["y_val", "p_val"]
    assert not any("test" in name for f in (T.choose, T.stability) for name in inspect.signature(f).parameters)
    with pytest.raises(ValueError, match="policy"):
        T.choose([0, 1], [0.2, 0.8], "f1")
    with pytest.raises(ValueError, match="both classes"):
        T.choose([1, 1], [0.2, 0.8])


def test_patient_grouped_resamples_keep_patients_whole():
    y = np.repeat([0, 0, 0, 1, 1, 1, 1], 3)
    ids = np.repeat(np.arange(7), 3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = R.resample_indices(y, ids, rng)
        counts = np.bincount(ids[idx], minlength=7)
        assert (counts % 3 == 0).all() and counts[:3].sum() == 9 and counts[3:].sum() == 12
    y, p = nearly_separable(k0=2, k1=4)
    ids = np.arange(y.size) // 2
    table = T.stability(y, p, "plateau", n_boot=10, groups=ids)
    assert len(table) == 10 and table["threshold"].between(0, 1, inclusive="neither").all()


def test_stability_refits_the_calibrator_on_each_resample():
    y, p = nearly_separable(k0=4, k1=8)
    platt = E.fit_calibrator(y, p, "platt")
    table = T.stability(y, p, ("plateau", "calibrated"), n_boot=15, seed=1, calibrator=platt)
    cal = table[table["policy"] == "calibrated"]["threshold"]
    assert len(cal) == 15 and cal.nunique() > 1  # refitted: the cut moves with the resample
    assert cal.median() == pytest.approx(T.choose(y, p, "calibrated", calibrator=platt), abs=0.15)
    temp = E.fit_calibrator(y, p, "temperature")  # temperature scaling cannot move the 0.5 cut
    table = T.stability(y, p, "calibrated", n_boot=5, calibrator=temp)
    assert np.allclose(table["threshold"], 0.5)
