"""cxr.evaluate: thresholds, metrics against scikit-learn, bootstrap intervals, metrics.json."""
from __future__ import annotations

import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr import evaluate as E
from cxr.evaluate import metrics as M
from cxr.config import Config

# 10 samples: 4 negatives, 6 positives; at threshold 0.5: tn=3, fp=1, fn=2, tp=4
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.45, 0.55, 0.7, 0.8, 0.9])


def synthetic(n: int, seed: int = 0, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * (2 * y - 1))))
    return y, p


def test_metric_values_hand_checked():
    m = E.metric_values(Y, P, 0.5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    # AUROC: 24 (pos, neg) pairs, the positive scores higher in all but 0.4<0.6, 0.45<0.6, 0.55<0.6
    assert m["auroc"] == pytest.approx(21 / 24)
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    assert E.confusion(Y, P, 0.5) == [[3, 1], [2, 4]]


def test_metric_values_match_sklearn():
    y, p = synthetic(300, seed=1)
    t = 0.37
    m = E.metric_values(y, p, t)
    yhat = (p >= t).astype(int)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat))
    assert m["f1"] == pytest.approx(skm.f1_score(y, yhat))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, yhat))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert set(m) == set(E.METRICS)


def test_vectorised_resample_metrics_match_sklearn():
    """The bootstrap's fast NumPy metrics equal scikit-learn's, ties and two thresholds included."""
    rng = np.random.default_rng(3)
    y, p = synthetic(200, seed=3)
    p = np.round(p, 2)  # many ties
    for _ in range(3):
        idx = rng.integers(0, len(y), len(y))
        yy, pp = y[idx], p[idx]
        neg, pos = pp[yy == 0], pp[yy == 1]
        fast = M._class_metrics(neg, pos, [0.5, 0.3])
        ordered_y = np.r_[np.zeros(len(neg), int), np.ones(len(pos), int)]
        ref = [v for t in (0.5, 0.3) for v in E.metric_values(ordered_y, np.r_[neg, pos], t).values()]
        np.testing.assert_allclose(fast, ref, atol=1e-12)


def test_undefined_metrics_are_nan_not_errors():
    m = E.metric_values([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert np.isnan(m["auroc"]) and np.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(2 / 3)
    m = E.metric_values([0, 1, 1], [0.1, 0.2, 0.3], 0.5)  # no positive prediction
    assert np.isnan(m["precision"]) and m["f1"] == 0.0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="length"):
        E.metric_values([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError, match="0/1"):
        E.metric_values([0, 2], [0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        E.metric_values([0, 1], [0.5, 1.5], 0.5)
    with pytest.raises(ValueError, match="both classes"):
        E.choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="policy"):
        E.choose_threshold(Y, P, policy="f1")


def test_youden_threshold_on_constructed_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.7, 0.8])
    # candidates: t=0.6 -> sens 3/4, spec 1 (J=.75); t=0.35 -> sens 1, spec 3/4 (J=.75); t=0.4 -> J=.5
    # ties go to the highest threshold
    assert E.choose_threshold(y, p) == pytest.approx(0.6)
    # separable data: the threshold is the lowest positive score, and it classifies perfectly
    y2 = np.array([0, 0, 1, 1])
    t = E.choose_threshold(y2, np.array([0.1, 0.3, 0.7, 0.9]))
    assert t == pytest.approx(0.7)
    assert E.metric_values(y2, [0.1, 0.3, 0.7, 0.9], t)["accuracy"] == 1.0


def test_youden_maximises_j_against_brute_force():
    y, p = synthetic(400, seed=5, shift=0.8)
    t = E.choose_threshold(y, p)
    def j(thr):
        yhat = p >= thr
        return yhat[y == 1].mean() + (~yhat[y == 0]).mean() - 1

    best = max(j(c) for c in np.unique(p))
    assert j(t) == pytest.approx(best)
    assert 0.0 < t < 1.0


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_policy_reaches_target_with_highest_threshold(target):
    y, p = synthetic(500, seed=7, shift=0.8)
    t = E.choose_threshold(y, p, policy="sensitivity", target_sensitivity=target)
    assert E.metric_values(y, p, t)["sensitivity"] >= target
    higher = np.unique(p[p > t])
    if len(higher):  # the next score up no longer reaches the target
        assert E.metric_values(y, p, higher[0])["sensitivity"] < target
    assert 0.0 < t < 1.0


def test_threshold_is_finite_probability_when_scores_saturate():
    t = E.choose_threshold([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0])
    assert np.isfinite(t) and 0.0 < t < 1.0
    assert E.metric_values([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], t)["accuracy"] == 1.0


def test_ece_calibrated_vs_miscalibrated():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # calibrated by construction
    assert E.expected_calibration_error(y, p) < 0.02
    assert E.expected_calibration_error(y, p ** 3) > 0.1  # overconfident toward 0
    # constant 0.9 on a 50% prevalence: ECE = |0.5 - 0.9| exactly
    assert E.expected_calibration_error([0, 1] * 50, [0.9] * 100) == pytest.approx(0.4)
    assert E.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0  # p = 1 lands in the last bin


def test_evaluate_structure_and_ci_contains_value():
    y, p = synthetic(300, seed=2)
    r = E.evaluate(y, p, 0.5, n_bootstrap=300, seed=0)
    assert r["n"] == 300 and r["n_positive"] == int(y.sum()) and r["threshold"] == 0.5
    (tn, fp), (fn, tp) = r["confusion_matrix"]
    assert tn + fp + fn + tp == 300 and fn + tp == y.sum()
    for m in E.METRICS:
        v = r[m]
        assert v["ci_low"] <= v["value"] <= v["ci_high"], m
        assert v["ci_low"] < v["ci_high"], m


def test_ci_narrows_with_more_samples_and_is_reproducible():
    small = E.evaluate(*synthetic(100, seed=4), 0.5, n_bootstrap=300, seed=1)
    large = E.evaluate(*synthetic(2000, seed=4), 0.5, n_bootstrap=300, seed=1)
    for m in ("auroc", "accuracy", "sensitivity"):
        assert (large[m]["ci_high"] - large[m]["ci_low"]) < (small[m]["ci_high"] - small[m]["ci_low"]) / 2
    again = E.evaluate(*synthetic(100, seed=4), 0.5, n_bootstrap=300, seed=1)
    assert again["auroc"] == small["auroc"]


def test_degenerate_resamples_do_not_crash():
    # a single negative: unstratified resamples would often hold one class; here no interval is possible
    r = E.evaluate([0, 1, 1, 1, 1], [0.2, 0.6, 0.7, 0.4, 0.9], 0.5, n_bootstrap=200)
    assert r["auroc"]["value"] == pytest.approx(1.0) and np.isnan(r["auroc"]["ci_low"])
    # two of each, and resamples with no positive prediction: precision's interval from defined resamples
    r = E.evaluate([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9], 0.5, n_bootstrap=200)
    assert np.isfinite(r["auroc"]["ci_low"]) and np.isfinite(r["precision"]["ci_high"])
    # one class only: values that exist are reported, the rest NaN
    r = E.evaluate([1, 1, 1], [0.2, 0.6, 0.9], 0.5, n_bootstrap=100)
    assert np.isnan(r["auroc"]["value"]) and r["sensitivity"]["value"] == pytest.approx(2 / 3)


def _document():
    cfg = Config.preset("smoke")
    y, p = synthetic(120, seed=8)
    tasks = {"pneumonia": E.task_report(y, p, 0.42, cfg), "subtype": E.task_report(*synthetic(60, seed=9), 0.5, cfg)}
    return E.metrics_document(E.protocol(cfg), tasks), cfg


def test_metrics_json_round_trip_and_schema(tmp_path):
    doc, cfg = _document()
    path = E.write_metrics(tmp_path / "run" / "metrics.json", doc)
    back = E.read_metrics(path)
    assert back == json.loads(json.dumps(doc))
    assert back["schema_version"] == E.SCHEMA_VERSION
    proto = back["protocol"]
    for key in ("split_seed", "val_fraction", "threshold_policy", "thresholds", "n_bootstrap", "ci_level",
                "image_size", "backbone"):
        assert key in proto, key
    assert proto["split_seed"] == cfg.seed and proto["thresholds"]["pneumonia"] == 0.42
    for name in ("pneumonia", "subtype"):
        task = back["tasks"][name]
        for key in ("threshold", "n", "n_positive", "at_threshold", "at_0.5", "confusion_matrix"):
            assert key in task, key
        for block in ("at_threshold", "at_0.5"):
            assert set(task[block]) == set(E.METRICS)
            assert set(task[block]["auroc"]) == {"value", "ci_low", "ci_high"}
    assert sorted(os.listdir(path.parent)) == ["metrics.json"]  # atomic write leaves no temporary file


def test_nan_is_written_as_null(tmp_path):
    cfg = Config.preset("smoke")
    doc = E.metrics_document(E.protocol(cfg), {"pneumonia": E.task_report([1, 1, 1], [0.2, 0.6, 0.9], 0.5, cfg)})
    text = E.write_metrics(tmp_path / "m.json", doc).read_text()
    assert "NaN" not in text
    assert json.loads(text)["tasks"]["pneumonia"]["at_threshold"]["auroc"]["value"] is None
    assert "n/a" in E.results_table(doc).loc[("pneumonia", "auroc"), "at_threshold"]


def test_metrics_document_rejects_incomplete_task():
    with pytest.raises(ValueError, match="task_report"):
        E.metrics_document({}, {"pneumonia": {"threshold": 0.5}})


def test_tables():
    doc, _ = _document()
    table = E.results_table(doc)
    assert len(table) == 2 * len(E.METRICS)
    assert list(table.columns) == ["threshold", "at_threshold", "at_0.5"]
    assert len(E.report_table(doc["tasks"]["pneumonia"])) == len(E.METRICS)
    comp = E.comparison_table(doc)
    assert "Kermany et al. 2018" in comp.index and "MedMNIST+ (Doerrich et al. 2024)" in comp.index
    assert comp.loc["Kermany et al. 2018", "AUROC"] == "0.968"
    assert comp.loc["MedMNIST+ (Doerrich et al. 2024)", "sensitivity"] == "n/a"
    assert "test partition" in comp.loc["Kermany et al. 2018", "protocol"]
    ours = doc["tasks"]["pneumonia"]["at_threshold"]["auroc"]["value"]
    assert comp.iloc[0]["AUROC"].startswith(f"{ours:.3f}")


def test_markdown_results_come_from_the_document(tmp_path):
    doc = json.loads(json.dumps(_document()[0]))
    auroc = doc["tasks"]["pneumonia"]["at_threshold"]["auroc"]
    text = E.markdown_results(doc, source="runs/x/metrics.json")
    assert f"{auroc['value']:.3f} [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]" in text
    assert "Kermany et al. 2018" in text and "0.968" in text and "runs/x/metrics.json" in text
    short = E.markdown_results(doc, headline=True)
    assert "Kermany et al. 2018" in short and "Brier" not in short
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline -->\nSTALE\n<!-- /headline -->\nrest\n")
    E.update_markdown(readme, short, "headline")
    new = readme.read_text()
    assert new.startswith("intro\n<!-- headline -->\n") and new.endswith("<!-- /headline -->\nrest\n")
    assert "STALE" not in new and "Kermany" in new
    with pytest.raises(ValueError, match="no <!-- results -->"):
        E.update_markdown(readme, short)


# --- patient-level (cluster) bootstrap ---------------------------------------------------------------------------

def test_weighted_resample_metrics_match_sklearn_on_expanded_sample():
    """The cluster bootstrap's weighted metrics equal scikit-learn's on the resample written out image by image."""
    rng = np.random.default_rng(11)
    y, p = synthetic(120, seed=11)
    p = np.round(p, 2)  # ties
    w = rng.integers(0, 4, (3, y.size))
    fast = M._weighted_metrics(p, y.astype(float), w, [0.5, 0.3])
    for b in range(3):
        yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
        ref = [v for t in (0.5, 0.3) for v in E.metric_values(yy, pp, t).values()]
        np.testing.assert_allclose(fast[:, b], ref, atol=1e-12)


def test_one_image_per_patient_gives_the_image_intervals():
    y, p = synthetic(150, seed=12)
    ids = np.random.default_rng(0).permutation(150) + 1000  # any ids, in any order
    r = E.task_report(y, p, 0.4, n_bootstrap=400, seed=3, groups=ids)
    plain = E.task_report(y, p, 0.4, n_bootstrap=400, seed=3)
    for block in ("at_threshold", "at_0.5"):
        for m in E.METRICS:
            v = r[block][m]
            assert v["ci_low"] == pytest.approx(v["image_ci_low"], abs=1e-12), m
            assert v["ci_high"] == pytest.approx(v["image_ci_high"], abs=1e-12), m
            assert v["image_ci_low"] == plain[block][m]["ci_low"] and v["value"] == plain[block][m]["value"]
    assert r["n_patients"] == 150 and r["n_patients_positive"] == int(y.sum())
    assert r["ci_method"] == E.PATIENT_CI_METHOD and r["image_ci_method"] == E.CI_METHOD


def test_identical_images_of_a_patient_widen_the_patient_intervals():
    y, p = synthetic(100, seed=13)
    k = 4  # every patient has 4 identical images
    yy, pp, ids = np.repeat(y, k), np.repeat(p, k), np.repeat(np.arange(100), k)
    r = E.evaluate(yy, pp, 0.5, n_bootstrap=500, seed=0, groups=ids)
    single = E.evaluate(y, p, 0.5, n_bootstrap=500, seed=0)
    for m in ("auroc", "accuracy", "sensitivity", "specificity", "brier"):
        patient, image = r[m]["ci_high"] - r[m]["ci_low"], r[m]["image_ci_high"] - r[m]["image_ci_low"]
        assert patient > 1.5 * image, m  # about sqrt(4) = 2x
        # copying images adds no information: the patient interval is that of the 100 distinct images
        assert patient == pytest.approx(single[m]["ci_high"] - single[m]["ci_low"], rel=0.25), m


def test_no_groups_keeps_the_old_report_exactly():
    y, p = synthetic(80, seed=14)
    r = E.task_report(y, p, 0.5, n_bootstrap=100, seed=0)
    assert set(r) == {"threshold", "n", "n_positive", "at_threshold", "at_0.5", "confusion_matrix",
                      "confusion_matrix_at_0.5"}
    assert set(r["at_threshold"]["auroc"]) == {"value", "ci_low", "ci_high"}


def test_mixed_patient_is_stratified_by_majority_and_grouped_report_serialises(tmp_path):
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1, 0, 0])
    p = np.array([0.1, 0.2, 0.8, 0.7, 0.9, 0.3, 0.6, 0.4, 0.35, 0.15])
    ids = np.array(["a", "a", "b", "b", "c", "c", "c", "d", "e", "f"])  # c: 2 positive, 1 negative image
    codes, stratum = E.patient_strata(y, ids)
    assert codes.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 4, 5] and stratum.tolist() == [0, 1, 1, 1, 0, 0]
    r = E.task_report(y, p, 0.5, n_bootstrap=200, seed=0, groups=ids)
    assert r["n_patients"] == 6 and r["n_patients_positive"] == 3
    doc = E.metrics_document({"ci_method": E.PATIENT_CI_METHOD}, {"pneumonia": r})
    back = E.read_metrics(E.write_metrics(tmp_path / "m.json", doc))
    assert set(back["tasks"]["pneumonia"]["at_threshold"]["auroc"]) == {"value", "ci_low", "ci_high",
                                                                        "image_ci_low", "image_ci_high"}
    with pytest.raises(ValueError, match="length"):
        E.task_report(y, p, 0.5, n_bootstrap=10, groups=ids[:-1])


def test_bootstrap_draws_are_the_draws_behind_the_intervals():
    y, p = synthetic(120, seed=15)
    ids = np.repeat(np.arange(60), 2)
    y = np.repeat(y[:60], 2)
    p = np.clip(np.repeat(p[:60], 2) + np.tile([0.0, 0.01], 60), 0, 1)
    draws = E.bootstrap_draws(y, p, 0.5, groups=ids, n_bootstrap=300, seed=2)
    r = E.evaluate(y, p, 0.5, n_bootstrap=300, seed=2, groups=ids)
    assert draws.shape == (300, len(E.METRICS))
    for m in ("sensitivity", "specificity", "auroc"):
        assert np.percentile(draws[m], 2.5) == pytest.approx(r[m]["ci_low"])
        assert np.percentile(draws[m], 97.5) == pytest.approx(r[m]["ci_high"])
    assert E.bootstrap_draws([0, 1], [0.2, 0.8], 0.5).empty  # too few for an interval


def test_interval_table_shows_both_intervals_and_their_ratio():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, y.size), 0, 1)
    groups = np.repeat(np.arange(20), 4)  # four images per patient
    report = E.task_report(y, p, 0.5, n_bootstrap=200, groups=groups)
    table = E.interval_table(report)
    assert list(table.columns) == ["value [patient-level 95% CI]", "image-level 95% CI", "width ratio"]
    auroc = report["at_threshold"]["auroc"]
    expected = (auroc["ci_high"] - auroc["ci_low"]) / (auroc["image_ci_high"] - auroc["image_ci_low"])
    assert table.loc["AUROC", "width ratio"] == pytest.approx(round(expected, 2))
    assert "20 patients" in table.index.name
    assert list(E.interval_table(E.task_report(y, p, 0.5, n_bootstrap=50)).columns) == ["value [95% CI]"]


def test_describe_calibration_says_what_happened_on_test():
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    true_val, true_test = np.where(y_val, 0.7, 0.3), np.where(y_test, 0.7, 0.3)
    sharpen = lambda q: 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))  # over-confident scores  # noqa: E731
    block = E.calibrate_and_report(y_val, sharpen(true_val), y_test, sharpen(true_test), "temperature")
    text = E.describe_calibration(block)
    assert text.startswith("Temperature scaling fitted on validation (T = ")
    assert "improved" in text and f"{block['test']['before']['ece']:.3f} -> {block['test']['after']['ece']:.3f}" in text
