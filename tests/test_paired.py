"""Paired comparison of two models on the same test images (`cxr.evaluate.paired`)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxr.evaluate import paired


def test_mcnemar_counts_the_discordant_calls_and_matches_the_binomial_test():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0])
    b = np.array([0, 0, 0, 1, 0, 1, 1, 0])
    out = paired.mcnemar(a, b)
    assert (out["a_only"], out["b_only"], out["n"]) == (3, 1, 8)
    assert out["p_value"] == pytest.approx(stats.binomtest(3, 4, 0.5).pvalue)
    assert paired.mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        paired.mcnemar(a, b[:-1])


def test_paired_auroc_sees_a_better_model_and_no_difference_between_a_model_and_itself():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(80, int), np.ones(80, int)]
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.15, y.size), 0, 1)
    poor = np.clip(y * 0.1 + rng.normal(0.45, 0.15, y.size), 0, 1)
    groups = np.repeat(np.arange(80), 2)  # two images per child, both of one class
    better = paired.paired_auroc(y, good, poor, groups, n_bootstrap=300)
    assert better["difference"] > 0.2 and better["ci_low"] > 0 and better["p_value"] < 0.01
    same = paired.paired_auroc(y, good, good, groups, n_bootstrap=100)
    assert same["difference"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0 and same["p_value"] == 1.0


def test_compare_predictions_matches_images_by_path_and_counts_the_unmatched():
    rows = [dict(task="pneumonia", split="test", path=f"{i}.jpeg", y=i % 2, child=f"c{i}", probability=p)
            for i, p in enumerate([0.1, 0.9, 0.2, 0.8, 0.6, 0.7])]
    now = pd.DataFrame(rows)
    before = now.copy()
    before.loc[4, "probability"] = 0.3  # the earlier run called this normal image normal
    before = pd.concat([before, pd.DataFrame([dict(task="pneumonia", split="test", path="x.jpeg", y=0, child="x",
                                                   probability=0.1)])])
    out = paired.compare_predictions(now, before, "pneumonia", 0.5, 0.5, n_bootstrap=50)
    assert out["n"] == 6 and out["unmatched"] == 1
    assert out["normals"]["a_only"] == 1 and out["normals"]["b_only"] == 0
    bad = before.copy()
    bad.loc[bad["path"] == "0.jpeg", "y"] = 1
    with pytest.raises(ValueError, match="disagree on the labels"):
        paired.compare_predictions(now, bad, "pneumonia", 0.5, 0.5)
