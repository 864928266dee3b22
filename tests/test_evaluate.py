"""cxr.evaluate: thresholds, metrics against scikit-learn, bootstrap intervals, metrics.json."""
from __future__ import annotations

import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics as skm

from cxr import evaluate as E, reporting
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
        ordered_y = np.r_[np.zeros(len(neg), int), np.ones(len(pos), int)]
        draws = M.weighted_draws(np.r_[neg, pos], ordered_y.astype(float), np.ones((1, len(yy))), [0.5, 0.3])
        fast = [d[m][0] for d in draws for m in M.METRICS]
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
        E.choose([1, 1], [0.2, 0.3], "youden")
    with pytest.raises(ValueError, match="policy"):
        E.choose(Y, P, policy="f1")


def test_youden_threshold_on_constructed_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.7, 0.8])
    # candidates: t=0.6 -> sens 3/4, spec 1 (J=.75); t=0.35 -> sens 1, spec 3/4 (J=.75); t=0.4 -> J=.5
    # ties go to the highest threshold
    assert E.choose(y, p, "youden") == pytest.approx(0.6)
    # separable data: the threshold is the lowest positive score, and it classifies perfectly
    y2 = np.array([0, 0, 1, 1])
    t = E.choose(y2, np.array([0.1, 0.3, 0.7, 0.9]), "youden")
    assert t == pytest.approx(0.7)
    assert E.metric_values(y2, [0.1, 0.3, 0.7, 0.9], t)["accuracy"] == 1.0


def test_youden_maximises_j_against_brute_force():
    y, p = synthetic(400, seed=5, shift=0.8)
    t = E.choose(y, p, "youden")
    def j(thr):
        yhat = p >= thr
        return yhat[y == 1].mean() + (~yhat[y == 0]).mean() - 1

    best = max(j(c) for c in np.unique(p))
    assert j(t) == pytest.approx(best)
    assert 0.0 < t < 1.0


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_policy_reaches_target_with_highest_threshold(target):
    y, p = synthetic(500, seed=7, shift=0.8)
    t = E.choose(y, p, policy="sensitivity", target_sensitivity=target)
    assert E.metric_values(y, p, t)["sensitivity"] >= target
    higher = np.unique(p[p > t])
    if len(higher):  # the next score up no longer reaches the target
        assert E.metric_values(y, p, higher[0])["sensitivity"] < target
    assert 0.0 < t < 1.0


def test_threshold_is_finite_probability_when_scores_saturate():
    t = E.choose([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], "youden")
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


def at(y, p, threshold, n_bootstrap, seed=0, groups=None, ci_level=0.95):
    """The metrics at `threshold` of a task report (what the removed `evaluate.evaluate` returned)."""
    return E.task_report(y, p, threshold, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed,
                         groups=groups)["at_threshold"]


def test_task_report_structure_and_ci_contains_value():
    y, p = synthetic(300, seed=2)
    r = E.task_report(y, p, 0.4, n_bootstrap=300, ci_level=0.95, seed=0)
    assert r["n"] == 300 and r["n_positive"] == int(y.sum()) and r["threshold"] == 0.4
    (tn, fp), (fn, tp) = r["confusion_matrix"]
    assert tn + fp + fn + tp == 300 and fn + tp == y.sum()
    assert r["confusion_matrix_at_0.5"] == E.confusion(y, p, 0.5)
    assert r["ci_methods"] == E.CI_METHODS and "Wilson" in r["ci_methods"]["sensitivity"]
    assert "logit" in r["ci_methods"]["auroc"] and "BCa" in r["ci_methods"]["brier"]
    for block in ("at_threshold", "at_0.5"):
        for m in E.METRICS:
            v = r[block][m]
            assert v["ci_low"] <= v["value"] <= v["ci_high"], m
            assert v["ci_low"] < v["ci_high"], m
    assert "ci_fallbacks" not in r  # BCa is defined for every metric here


def test_ci_narrows_with_more_samples_and_is_reproducible():
    small = at(*synthetic(100, seed=4), 0.5, n_bootstrap=300, seed=1)
    large = at(*synthetic(2000, seed=4), 0.5, n_bootstrap=300, seed=1)
    for m in ("auroc", "accuracy", "sensitivity", "brier"):
        assert (large[m]["ci_high"] - large[m]["ci_low"]) < (small[m]["ci_high"] - small[m]["ci_low"]) / 2
    again = at(*synthetic(100, seed=4), 0.5, n_bootstrap=300, seed=1)
    assert again == small


def test_degenerate_resamples_do_not_crash():
    # a single negative: unstratified resamples would often hold one class; here no interval is possible
    r = at([0, 1, 1, 1, 1], [0.2, 0.6, 0.7, 0.4, 0.9], 0.5, n_bootstrap=200)
    assert r["auroc"]["value"] == pytest.approx(1.0) and np.isnan(r["auroc"]["ci_low"])
    # two of each, and resamples with no positive prediction: precision's interval from defined resamples;
    # AUROC 1 in every resample: a finite score interval, not the degenerate [1, 1]
    r = at([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9], 0.5, n_bootstrap=200)
    assert 0 < r["auroc"]["ci_low"] < 1 == r["auroc"]["ci_high"] and np.isfinite(r["precision"]["ci_high"])
    # one class only: values that exist are reported, the rest NaN
    r = at([1, 1, 1], [0.2, 0.6, 0.9], 0.5, n_bootstrap=100)
    assert np.isnan(r["auroc"]["value"]) and r["sensitivity"]["value"] == pytest.approx(2 / 3)
    # perfectly separated: every resample identical; finite intervals (percentile [1, 1] where BCa is undefined)
    y, p = np.repeat([0, 1], 12), np.r_[np.linspace(0.05, 0.3, 12), np.linspace(0.7, 0.95, 12)]
    groups = np.repeat(np.arange(8), 3)
    report = E.task_report(y, p, 0.5, n_bootstrap=200, ci_level=0.95, seed=0, groups=groups)
    for block in ("at_threshold", "at_0.5"):
        for m in E.METRICS:
            assert np.isfinite([report[block][m]["ci_low"], report[block][m]["ci_high"]]).all(), m
    assert set(report["ci_fallbacks"]["at_threshold"]) == {"auprc", "f1", "balanced_accuracy"}
    sens = report["at_threshold"]["sensitivity"]
    # a proportion of 1: Wilson on 12 images / deff 3 (all 3 images of a patient agree) = 4 effective trials
    assert sens["ci_low"] == pytest.approx(4 / (4 + 1.959964 ** 2), abs=1e-4) and sens["ci_high"] == 1.0
    assert sens["image_ci_low"] == pytest.approx(12 / (12 + 1.959964 ** 2), abs=1e-4)
    # a few dozen images, smoke-run size, with few resamples: no exception, every interval finite or NaN
    y, p = synthetic(30, seed=21)
    for n_bootstrap in (0, 1, 2, 5):
        r = E.task_report(y, p, 0.5, n_bootstrap=n_bootstrap, ci_level=0.95, seed=0, groups=np.arange(30) // 2)
        assert all(np.isnan(v["ci_low"]) or np.isfinite(v["ci_low"]) for v in r["at_threshold"].values())


def settings(cfg: Config) -> dict:
    return {"n_bootstrap": cfg.n_bootstrap, "ci_level": cfg.ci_level, "seed": cfg.seed}


def _document():
    cfg = Config.preset("smoke")
    y, p = synthetic(120, seed=8)
    tasks = {"pneumonia": E.task_report(y, p, 0.42, **settings(cfg)),
             "subtype": E.task_report(*synthetic(60, seed=9), 0.5, **settings(cfg))}
    return E.metrics_document(E.protocol(cfg), tasks), cfg


def test_metrics_json_round_trip_and_schema(tmp_path):
    doc, cfg = _document()
    path = E.write_metrics(tmp_path / "run" / "metrics.json", doc)
    back = E.read_metrics(path)
    assert back == json.loads(json.dumps(doc))
    assert back["schema_version"] == E.SCHEMA_VERSION
    proto = back["protocol"]
    for key in ("split_seed", "n_folds", "threshold_policy", "thresholds", "n_bootstrap", "ci_level", "ci_methods",
                "image_size", "backbone", "selection", "final_model"):
        assert key in proto, key
    assert proto["split_seed"] == cfg.split_seed and proto["thresholds"]["pneumonia"] == 0.42
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
    doc = E.metrics_document(E.protocol(cfg), {"pneumonia": E.task_report([1, 1, 1], [0.2, 0.6, 0.9], 0.5,
                                                                          **settings(cfg))})
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
    text = reporting.markdown_results(doc, source="runs/x/metrics.json")
    assert f"{auroc['value']:.3f} [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]" in text
    assert "Kermany et al. 2018" in text and "0.968" in text and "runs/x/metrics.json" in text
    short = reporting.markdown_results(doc, headline=True)
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
    draws = M.weighted_draws(p, y.astype(float), w, [0.5, 0.3])
    fast = np.stack([d[m] for d in draws for m in M.METRICS])
    for b in range(3):
        yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
        ref = [v for t in (0.5, 0.3) for v in E.metric_values(yy, pp, t).values()]
        np.testing.assert_allclose(fast[:, b], ref, atol=1e-12)


def test_one_image_per_patient_gives_the_image_intervals():
    y, p = synthetic(150, seed=12)
    ids = np.random.default_rng(0).permutation(150) + 1000  # any ids, in any order
    r = E.task_report(y, p, 0.4, n_bootstrap=400, ci_level=0.95, seed=3, groups=ids)
    plain = E.task_report(y, p, 0.4, n_bootstrap=400, ci_level=0.95, seed=3)
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
    r = at(yy, pp, 0.5, n_bootstrap=500, seed=0, groups=ids)
    single = at(y, p, 0.5, n_bootstrap=500, seed=0)
    for m in ("auroc", "accuracy", "sensitivity", "specificity", "brier"):
        patient, image = r[m]["ci_high"] - r[m]["ci_low"], r[m]["image_ci_high"] - r[m]["image_ci_low"]
        assert patient > 1.5 * image, m  # about sqrt(4) = 2x
        # copying images adds no information: the patient interval is that of the 100 distinct images
        assert patient == pytest.approx(single[m]["ci_high"] - single[m]["ci_low"], rel=0.25), m


def test_no_groups_keeps_the_old_report_and_names_the_methods():
    y, p = synthetic(80, seed=14)
    r = E.task_report(y, p, 0.5, n_bootstrap=100, ci_level=0.95, seed=0)
    assert set(r) == {"threshold", "n", "n_positive", "at_threshold", "at_0.5", "confusion_matrix",
                      "confusion_matrix_at_0.5", "ci_methods"}
    assert set(r["at_threshold"]["auroc"]) == {"value", "ci_low", "ci_high"}


def test_mixed_patient_is_stratified_by_majority_and_grouped_report_serialises(tmp_path):
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1, 0, 0])
    p = np.array([0.1, 0.2, 0.8, 0.7, 0.9, 0.3, 0.6, 0.4, 0.35, 0.15])
    ids = np.array(["a", "a", "b", "b", "c", "c", "c", "d", "e", "f"])  # c: 2 positive, 1 negative image
    codes, stratum = E.patient_strata(y, ids)
    assert codes.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 4, 5] and stratum.tolist() == [0, 1, 1, 1, 0, 0]
    r = E.task_report(y, p, 0.5, n_bootstrap=200, ci_level=0.95, seed=0, groups=ids)
    assert r["n_patients"] == 6 and r["n_patients_positive"] == 3
    doc = E.metrics_document({"ci_method": E.PATIENT_CI_METHOD}, {"pneumonia": r})
    back = E.read_metrics(E.write_metrics(tmp_path / "m.json", doc))
    assert set(back["tasks"]["pneumonia"]["at_threshold"]["auroc"]) == {"value", "ci_low", "ci_high",
                                                                        "image_ci_low", "image_ci_high"}
    with pytest.raises(ValueError, match="length"):
        E.task_report(y, p, 0.5, n_bootstrap=10, ci_level=0.95, seed=0, groups=ids[:-1])


def test_bootstrap_draws_are_the_draws_behind_the_intervals():
    y, p = synthetic(120, seed=15)
    ids = np.repeat(np.arange(60), 2)
    y = np.repeat(y[:60], 2)
    p = np.clip(np.repeat(p[:60], 2) + np.tile([0.0, 0.01], 60), 0, 1)
    draws = E.bootstrap_draws(y, p, 0.5, groups=ids, n_bootstrap=300, seed=2)
    r = at(y, p, 0.5, n_bootstrap=300, seed=2, groups=ids)
    assert draws.shape == (300, len(E.METRICS))
    codes = E.patient_strata(y, ids)[0]
    for m, mask in (("sensitivity", y == 1), ("specificity", y == 0)):  # Wilson on the draws' effective size
        expected = M.wilson_ess_interval(r[m]["value"], draws[m], mask.sum(), M.cluster_design_effect(codes, mask))
        assert (r[m]["ci_low"], r[m]["ci_high"]) == pytest.approx(expected)
    expected = M.logit_interval(r["auroc"]["value"], draws["auroc"])
    assert (r["auroc"]["ci_low"], r["auroc"]["ci_high"]) == pytest.approx(expected)
    assert E.bootstrap_draws([0, 1], [0.2, 0.8], 0.5, n_bootstrap=100, seed=0).empty  # too few for an interval


def test_interval_table_shows_both_intervals_and_their_ratio():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, y.size), 0, 1)
    groups = np.repeat(np.arange(20), 4)  # four images per patient
    report = E.task_report(y, p, 0.5, n_bootstrap=200, ci_level=0.95, seed=0, groups=groups)
    table = E.interval_table(report)
    assert list(table.columns) == ["value [patient-level 95% CI]", "image-level 95% CI", "width ratio",
                                   "interval method"]
    auroc = report["at_threshold"]["auroc"]
    expected = (auroc["ci_high"] - auroc["ci_low"]) / (auroc["image_ci_high"] - auroc["image_ci_low"])
    assert float(table.loc["AUROC", "width ratio"]) == pytest.approx(round(expected, 2))
    assert table.loc["Sensitivity", "interval method"] == report["ci_methods"]["sensitivity"]
    assert "20 children" in table.index.name
    plain = E.task_report(y, p, 0.5, n_bootstrap=50, ci_level=0.95, seed=0)
    assert list(E.interval_table(plain).columns) == ["value [patient-level 95% CI]", "interval method"]
    # with the nested bootstrap of the operating point, its interval stands beside the others
    sel_y = np.repeat([0, 1], 30)
    sel_p = np.clip(sel_y * 0.3 + rng.uniform(0, 0.7, sel_y.size), 0, 1)
    nested = E.threshold_uncertainty(sel_y, sel_p, None, y, p, groups, lambda a, b: E.choose(a, b, "youden"),
                                     n_bootstrap=100, ci_level=0.95, seed=0)
    report["threshold_uncertainty"] = {"intervals": nested["intervals"].to_dict(orient="index")}
    table = E.interval_table(report)
    iv = nested["intervals"].loc["specificity"]
    assert table.loc["Specificity", "95% CI with the threshold re-chosen"] == f"[{iv.ci_low:.3f}, {iv.ci_high:.3f}]"
    text = reporting.describe_report(report)
    assert "Re-choosing the threshold" in text and "false positives" in text


def test_describe_calibration_says_what_happened_on_test():
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    true_val, true_test = np.where(y_val, 0.7, 0.3), np.where(y_test, 0.7, 0.3)
    sharpen = lambda q: 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))  # over-confident scores  # noqa: E731
    block = E.calibrate_and_report(y_val, sharpen(true_val), y_test, sharpen(true_test), "temperature",
                                   groups_test=np.arange(400) // 2, n_bootstrap=200, ci_level=0.95, seed=0)
    text = reporting.describe_calibration(block)
    assert text.startswith("Temperature scaling fitted on the out-of-fold predictions (T = ")
    before, after, ci = block["test"]["before"], block["test"]["after"], block["test"]["ci"]
    assert "improved" in text and f"log-loss {before['log_loss']:.3f} -> {after['log_loss']:.3f}" in text
    assert f"Brier score {before['brier']:.3f} -> {after['brier']:.3f}" in text
    slope = ci["before"]["slope"]
    assert f"calibration slope {before['slope']:.2f} [{slope['ci_low']:.2f}, {slope['ci_high']:.2f}] ->" in text
    assert "calibration intercept" in text and "After calibration, slope: " in text
    assert f"{before['ece']:.3f} -> {after['ece']:.3f}" in text


# --- interval methods ----------------------------------------------------------------------------------------------

def test_sensitivity_near_one_gets_the_wilson_interval_not_the_percentile_one():
    """385/390 detected, one image per patient: the reviewer's example. The percentile bootstrap gave
    [0.975, 0.997]; the interval now is Wilson's [0.970, 0.995] (the design effect is 1 without clustering)."""
    y = np.r_[np.zeros(200, int), np.ones(390, int)]
    p = np.r_[np.full(200, 0.1), np.full(385, 0.9), np.full(5, 0.2)]
    r = E.task_report(y, p, 0.5, n_bootstrap=2000, ci_level=0.95, seed=0, groups=np.arange(y.size))
    sens = r["at_threshold"]["sensitivity"]
    wilson = stats.binomtest(385, 390).proportion_ci(0.95, method="wilson")
    assert (sens["ci_low"], sens["ci_high"]) == pytest.approx((wilson.low, wilson.high), abs=1e-3)
    assert sens["ci_low"] == pytest.approx(0.970, abs=5e-4) and sens["ci_high"] == pytest.approx(0.995, abs=5e-4)
    assert (sens["image_ci_low"], sens["image_ci_high"]) == (sens["ci_low"], sens["ci_high"])
    # the effective sample size shrinks with clustering: the same proportion on 130 patients of 3 identical images
    assert M.wilson_ess_interval(385 / 390, np.tile([0.985, 0.99], 5), 390, cluster_deff=3.0) == pytest.approx(
        M.wilson_bounds(385 / 390, 390, 0.95))  # draws that vary less than binomial: deff held at 1
    draws = np.random.default_rng(0).binomial(130, 385 / 390, 4000) / 130  # the variance of 130 patients
    low, high = M.wilson_ess_interval(385 / 390, draws, 390)
    assert (low, high) == pytest.approx(M.wilson_bounds(385 / 390, 130, 0.95), abs=2e-3)


def test_auroc_intervals():
    draws = np.random.default_rng(0).normal(0.95, 0.01, 2000)
    low, high = M.auroc_interval(0.95, draws, 300, 200)  # normal on the logit scale: se 0.01 / (0.95 * 0.05)
    assert special.logit(high) - special.logit(0.95) == pytest.approx(1.96 * draws.std(ddof=1) / 0.0475, rel=1e-3)
    assert special.logit(0.95) - special.logit(low) == pytest.approx(special.logit(high) - special.logit(0.95))
    assert 0.95 - low > high - 0.95  # skewed away from the bound at 1
    low, high = M.auroc_interval(1.0, np.ones(100), 50, 40)  # every resample 1: the score interval, below 1
    assert (low, high) == M.auroc_score_interval(1.0, np.ones(100), 50, 40) and 0.9 < low < 1.0 == high
    assert np.isnan(M.auroc_interval(float("nan"), draws, 300, 200)[0])
    low, high = M.auroc_score_interval(0.95, draws, 300, 200)
    assert low < 0.95 < high and high - low == pytest.approx(2 * 1.96 * 0.01, rel=0.1)
    assert 0.95 - low > high - 0.95  # skewed away from the bound at 1
    low, high = M.auroc_score_interval(1.0, np.ones(100), 50, 40)  # every resample 1: finite, below 1
    assert 0.9 < low < 1.0 and high == 1.0
    low4, _ = M.auroc_score_interval(1.0, np.ones(100), 50, 40, cluster_deff=4.0)
    assert low4 < low  # four images per patient: less information
    assert np.isnan(M.auroc_score_interval(float("nan"), draws, 300, 200)[0])


# --- per child -----------------------------------------------------------------------------------------------------

def test_child_table_and_report_by_hand():
    # child a: two negative images; b: one negative and one positive image (a positive child); c, d: one image each;
    # e: two positives, one of them missed
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0, 0])
    p = np.array([0.1, 0.6, 0.2, 0.3, 0.9, 0.4, 0.8, 0.2, 0.05, 0.3])
    ids = np.array(["a", "a", "b", "b", "c", "d", "e", "e", "f", "g"])
    table = E.child_table(y, p, ids)
    assert table.index.tolist() == list("abcdefg")
    assert table["y"].tolist() == [0, 1, 1, 0, 1, 0, 0]
    assert table["p"].tolist() == [0.6, 0.3, 0.9, 0.4, 0.8, 0.05, 0.3]
    assert table["n_images"].tolist() == [2, 2, 1, 1, 2, 1, 1]
    r = E.child_report(y, p, ids, 0.5, n_bootstrap=200, ci_level=0.95, seed=0)
    at_t = r["at_threshold"]
    # at 0.5: children called positive a (0.6), c, e; positives b, c, e -> tp 2 (c, e), fn 1 (b), fp 1 (a), tn 3
    assert r["unit"] == "child" and r["n"] == 7 and r["n_positive"] == 3 and r["n_images"] == 10
    assert r["confusion_matrix"] == [[3, 1], [1, 2]]
    assert at_t["sensitivity"]["value"] == pytest.approx(2 / 3) and at_t["specificity"]["value"] == pytest.approx(3 / 4)
    # AUROC of the children's maxima: positives 0.3, 0.9, 0.8 against negatives 0.6, 0.4, 0.05, 0.3
    assert at_t["auroc"]["value"] == pytest.approx((1.5 + 4 + 4) / 12)
    assert at_t["sensitivity"]["ci_low"] < 2 / 3 < at_t["sensitivity"]["ci_high"]
    assert r["at_0.5"]["accuracy"]["value"] == at_t["accuracy"]["value"]
    # resampling children: the same as the image bootstrap of the child table
    plain = E.task_report(table["y"], table["p"], 0.5, n_bootstrap=200, ci_level=0.95, seed=0)
    assert plain["at_threshold"] == at_t
    with pytest.raises(ValueError, match="length"):
        E.child_table(y, p, ids[:-1])
