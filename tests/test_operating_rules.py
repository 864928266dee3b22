"""Protocol v2's operating rules: the bacterial polarity of the second task, the co-primary targets of the first,
the rule cross-fitted over the folds, and test copies counted once."""
import numpy as np
import pandas as pd
import pytest

from cxr import pipeline
from cxr.config import TASKS, Config
from cxr.data.split import EXCLUDED, TEST_DUPLICATE, split_by_patient
from cxr.evaluate import threshold as thresholds


def test_specificity_rule_keeps_class_zero_and_takes_the_lowest_such_threshold():
    y = np.array([0] * 10 + [1] * 10)
    p = np.r_[np.linspace(0.05, 0.60, 10), np.linspace(0.40, 0.95, 10)]
    t = thresholds.choose(y, p, "specificity", target_specificity=0.9)
    spec = np.mean(p[y == 0] < t)
    assert spec >= 0.9
    lower = p[p < t].max()  # one score lower and the specificity falls below the target
    assert np.mean(p[y == 0] < lower) < 0.9


def test_the_subtype_rule_is_bacterial_and_reports_no_point_when_viral_sensitivity_collapses():
    assert TASKS["subtype"].kept_class == 0 and TASKS["pneumonia"].kept_class == 1
    config = Config(target_specificity=0.9, subtype_min_sensitivity=0.5)
    y = np.array([0] * 20 + [1] * 20)
    good = np.r_[np.linspace(0.0, 0.5, 20), np.linspace(0.3, 1.0, 20)]
    t, fits = pipeline.rule_threshold(config, y, good, task="subtype")
    assert fits and np.mean(good[y == 0] < t) >= 0.9 and np.mean(good[y == 1] >= t) >= 0.5
    bad = np.r_[np.linspace(0.0, 1.0, 20), np.linspace(0.0, 1.0, 20)]  # no separation: no threshold serves both
    assert pipeline.rule_threshold(config, y, bad, task="subtype") == (0.5, False)
    rule = pipeline.task_rule(config, "subtype")
    assert rule["kept_class"] == "bacteria" and rule["policy"] == "specificity"


def test_cross_fitted_rule_is_chosen_without_the_held_out_fold():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    p = np.clip(np.r_[rng.normal(0.3, 0.15, 60), rng.normal(0.7, 0.15, 60)], 0.01, 0.99)
    folds = np.tile(np.arange(3), 40)
    seen = []

    def rule(y_, p_):
        seen.append(len(y_))
        return thresholds.choose(y_, p_, "sensitivity", target_sensitivity=0.95)

    table = thresholds.cross_fitted(y, p, folds, rule)
    assert seen == [80, 80, 80]  # each threshold from the two other folds only
    assert list(table["fold"]) == ["0", "1", "2", "pooled"]
    held = folds == 0
    t0 = thresholds.choose(y[~held], p[~held], "sensitivity", target_sensitivity=0.95)
    assert table.loc[0, "sensitivity"] == pytest.approx(np.mean(p[held & (y == 1)] >= t0))
    with pytest.raises(ValueError, match="entries"):
        thresholds.cross_fitted(y, p, folds[:-1], rule)


def test_rule_targets_report_met_and_missed_without_retuning():
    config = Config(target_sensitivity=0.95, min_specificity=0.70)
    oof = pipeline.Scores(np.arange(4), np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.9]),
                          np.array([0.1, 0.6, 0.7, 0.9]), np.arange(4))
    report = {"at_threshold": {"sensitivity": {"value": 0.97, "ci_low": 0.95, "ci_high": 0.99},
                               "specificity": {"value": 0.65, "ci_low": 0.6, "ci_high": 0.7}}}
    crossfit = pd.DataFrame([{"fold": "pooled", "sensitivity": 1.0, "specificity": 0.5}])
    rows = pipeline.rule_targets(config, "pneumonia", report, oof, 0.5, crossfit)
    assert [(r["metric"], r["target"], r["met_on_test"]) for r in rows] == [
        ("sensitivity", 0.95, True), ("specificity", 0.70, False)]
    assert rows[1]["oof"] == 0.5 and rows[1]["cross_fitted"] == 0.5


def test_byte_identical_test_images_are_counted_once():
    rows = []
    for i in range(8):
        rows.append(dict(path=f"train/NORMAL/IM-{100 + i:04d}-0001.jpeg", official_split="train", label="NORMAL",
                         subtype="normal", patient_id=f"IM-{100 + i:04d}", sha1=f"t{i}"))
        rows.append(dict(path=f"train/PNEUMONIA/person{100 + i}_bacteria_1.jpeg", official_split="train",
                         label="PNEUMONIA", subtype="bacteria", patient_id=f"person{100 + i}_bacteria", sha1=f"b{i}"))
    rows += [dict(path="test/NORMAL/NORMAL2-IM-0095-0001.jpeg", official_split="test", label="NORMAL",
                  subtype="normal", patient_id="NORMAL2-IM-0095", sha1="same"),
             dict(path="test/NORMAL/NORMAL2-IM-0096-0001.jpeg", official_split="test", label="NORMAL",
                  subtype="normal", patient_id="NORMAL2-IM-0096", sha1="same"),
             dict(path="test/PNEUMONIA/person1_virus_1.jpeg", official_split="test", label="PNEUMONIA",
                  subtype="virus", patient_id="person1_virus", sha1="v1")]
    index = pd.DataFrame(rows)
    kept = split_by_patient(index, 2, 0, dedupe_test=True)
    dropped = kept[kept["split"] == EXCLUDED]
    assert dropped["path"].tolist() == ["test/NORMAL/NORMAL2-IM-0096-0001.jpeg"]
    assert dropped["excluded_reason"].tolist() == [TEST_DUPLICATE]
    assert (split_by_patient(index, 2, 0)["split"] == "test").sum() == 3  # v1 counted both
    assert Config().dedupe_test
