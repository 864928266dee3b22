"""Protocol v2's operating rules: the bacterial polarity of the second task, the co-primary targets of the first,
the rule cross-fitted over the folds, and test copies counted once."""
import itertools

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


def test_the_committed_cross_fitted_tables_follow_from_their_thresholds_and_counts():
    """doc/metrics.json's cross-fitted tables, rebuilt: the counts behind each fold's sensitivity and specificity
    recovered from the committed numbers, a dataset with those counts around the committed thresholds, and the
    shared `cross_fitted` of it (specificity as 1 - the share of class 0 called) gives the committed table, value
    for value; `count_kept` (the fold check's counted share) is the other rounding of the same share."""
    import json

    from conftest import REPO
    from cxr.io import to_json

    doc = json.loads((REPO / "doc" / "metrics.json").read_text())
    for task in ("pneumonia", "subtype"):
        rows = doc["tasks"][task]["operating_point"]["cross_fitted"]
        splits = [_splits(row) for row in rows[:-1]]  # a fold's shares may allow more than one split of its images
        tables = []
        for choice in itertools.product(*splits):
            ys, ps, folds = [], [], []
            for f, (((n_neg, kept), (n_pos, found)), row) in enumerate(zip(choice, rows)):
                t = row["threshold"]
                ys += [0] * n_neg + [1] * n_pos
                ps += [t / 2] * kept + [(1 + t) / 2] * (n_neg + found - kept) + [t / 2] * (n_pos - found)
                folds += [f] * (n_neg + n_pos)
            chosen = iter([row["threshold"] for row in rows[:-1]])
            table = thresholds.cross_fitted(np.array(ys), np.array(ps), np.array(folds), lambda y, p: next(chosen))
            tables.append(to_json(table))
        assert rows in tables, task  # the split whose pooled row is the committed one gives every row exactly
    called = np.array([True, False, False])  # 1 of 3 normals called: 2/3 counted, 1 - 1/3 otherwise
    y, p, folds = np.r_[0, 0, 0, 1, 0, 0, 0, 1], np.tile([0.9, 0.1, 0.1, 0.9], 2), np.r_[0, 0, 0, 0, 1, 1, 1, 1]
    counted = thresholds.cross_fitted(y, p, folds, lambda y_, p_: 0.5, count_kept=True)
    plain = thresholds.cross_fitted(y, p, folds, lambda y_, p_: 0.5)
    assert counted["specificity"].iloc[0] == (~called).mean() and plain["specificity"].iloc[0] == 1 - called.mean()
    assert counted["specificity"].iloc[0] != plain["specificity"].iloc[0]  # the last bit


def _splits(row: dict) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Every ((class 0, of them not called), (class 1, of them called)) split of a fold's `n` images whose
    shares, as `cross_fitted` computes them by default, are the row's sensitivity and specificity."""
    out = []
    for n_neg in range(1, row["n"]):
        n_pos = row["n"] - n_neg
        called_neg, found = round((1 - row["specificity"]) * n_neg), round(row["sensitivity"] * n_pos)
        if 1 - called_neg / n_neg == row["specificity"] and found / n_pos == row["sensitivity"]:
            out.append(((n_neg, n_neg - called_neg), (n_pos, found)))
    assert out, row
    return out
