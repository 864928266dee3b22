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


def _run_folder(tmp_path, probabilities, threshold):
    """A run folder holding one predictions file of the pneumonia task (test rows), as `run_task` writes it."""
    from cxr.evaluate import predictions

    n = len(probabilities)
    index = pd.DataFrame({"path": [f"test/{'PNEUMONIA' if i % 2 else 'NORMAL'}/{i}.jpeg" for i in range(n)],
                          "split": "test", "official_split": "test",
                          "label": ["PNEUMONIA" if i % 2 else "NORMAL" for i in range(n)],
                          "subtype": ["bacteria" if i % 2 else "normal" for i in range(n)],
                          "patient_id": [f"c{i // 2}" for i in range(n)]})
    frame = predictions.predictions_frame(index, np.arange(n), "test", "pneumonia", probabilities, None, threshold)
    predictions.write_predictions(frame, predictions.predictions_path(tmp_path, "pneumonia"))
    return tmp_path


def test_the_previous_run_comparison_pairs_the_committed_predictions_with_this_run(tmp_path):
    from cxr.config import Config
    from cxr.evaluate.document import PREVIOUS_RUN
    from cxr.pipeline import previous_run_comparison
    from cxr.reporting import describe_previous_run

    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    now = np.clip(y * 0.5 + rng.uniform(0.05, 0.45, 40), 0, 1)
    before = now.copy()
    before[[0, 2]] = 0.95  # two normals the previous run called pneumonia, this run normal
    run = _run_folder(tmp_path / "run", now, 0.5)
    old = pd.DataFrame({"task": "pneumonia", "split": "test", "path": [f"{i}.jpeg" for i in range(40)], "y": y,
                        "child": [f"c{i // 2}" for i in range(40)], "probability": before})
    old.to_csv(tmp_path / "previous.csv", index=False)
    previous = {**PREVIOUS_RUN, "predictions": tmp_path / "previous.csv", "thresholds": {"pneumonia": 0.5}}
    cfg = Config.preset("smoke")
    out = previous_run_comparison(cfg, run, {"pneumonia": 0.5}, previous)
    c = out["tasks"]["pneumonia"]
    assert c["n"] == 40 and c["unmatched"] == 0
    assert (c["normals"]["a_only"], c["normals"]["b_only"]) == (0, 2) and c["positives"]["a_only"] == 0
    assert c["auroc"]["difference"] > 0  # the previous run ranked two normals high
    text = describe_previous_run(out)
    assert "2 by the previous run only" in text and f"{c['auroc']['difference']:+.3f}" in text
    missing = {**previous, "predictions": tmp_path / "none.csv"}
    assert previous_run_comparison(cfg, run, {"pneumonia": 0.5}, missing) is None
    skipped = previous_run_comparison(cfg, run, {"pneumonia": 0.5, "subtype": 0.5}, previous)
    assert "subtype" in skipped["skipped"] and "pneumonia" in skipped["tasks"]  # no subtype rows: said, not hidden


def test_the_committed_previous_predictions_are_the_previous_run_s_test_rows():
    from cxr.evaluate.document import PREVIOUS_RUN
    from sklearn.metrics import roc_auc_score

    frame = pd.read_csv(PREVIOUS_RUN["predictions"])
    assert set(frame["split"]) == {"test"} and set(frame["task"]) == {"pneumonia", "subtype"}
    p = frame[frame["task"] == "pneumonia"]
    assert len(p) == 618  # the byte-identical test copies counted once (protocol v2)
    assert round(roc_auc_score(p["y"], p["probability"]), 3) == PREVIOUS_RUN["metrics"]["auroc"]["value"]
    called = p["probability"] >= PREVIOUS_RUN["thresholds"]["pneumonia"]
    assert (called.astype(int) == p["called"]).all()
    spec = 1 - called[p["y"] == 0].mean()
    assert round(spec, 3) == PREVIOUS_RUN["metrics"]["specificity"]["value"]


def test_the_comparison_lists_only_runs_before_the_documents_own_protocol():
    """The v2 run's document must not show itself as its own previous run; a v3 document shows both earlier runs."""
    from cxr.evaluate.document import FIRST_RUN, PREVIOUS_RUN, earlier_runs

    assert earlier_runs({"protocol": {"protocol_version": 3}}) == [PREVIOUS_RUN, FIRST_RUN]
    assert earlier_runs({"protocol": {"protocol_version": 2}}) == [FIRST_RUN]
    assert earlier_runs({"protocol": {"protocol_version": 1}}) == []
    assert earlier_runs({}) == [PREVIOUS_RUN, FIRST_RUN]
