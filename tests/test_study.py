"""The study's other blocks on small synthetic inputs: the trivial baseline, the shift checks, the recipe ablation's
statistics and the protocol text."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr import ablation, reporting
from cxr.config import Config
from cxr.evaluate import baseline, shift


def _images(n: int, sharp: bool, seed: int) -> np.ndarray:
    """Smooth noise images; `sharp` ones keep fine detail (what separates the classes in the copy we have)."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    x = rng.normal(128, 40, (n, 48, 48))
    if not sharp:
        x = ndimage.gaussian_filter(x, sigma=(0, 2, 2))
    return np.clip(x, 0, 255).astype(np.uint8)


def test_image_statistics_and_the_trivial_baseline_find_a_sharpness_shortcut():
    x = np.concatenate([_images(40, True, 0), _images(40, False, 1)])
    y = np.r_[np.zeros(40), np.ones(40)]  # "normal" images sharper, as in the shared copy
    stats = baseline.image_statistics(x)
    assert list(stats.columns) == list(baseline.STATISTICS) and len(stats) == 80
    np.testing.assert_allclose(stats["brightness"], x.reshape(80, -1).mean(1), rtol=1e-5)
    assert (stats.loc[:39, "gradient"].min() > stats.loc[40:, "gradient"].max())
    fit = baseline.fit_baseline(stats, y, np.arange(80) % 4, seed=0)
    assert fit["oof_auroc"] > 0.95 and np.isfinite(fit["oof_p"]).all()
    assert set(fit["coefficients"]) == set(baseline.STATISTICS)
    alone = baseline.univariate_auroc(stats, y)
    assert alone["gradient"] > 0.95 and (alone >= 0.5).all()
    fitted = reporting.describe_baseline(fit["oof_auroc"], alone)
    assert "out-of-fold AUROC" in fitted and "alone, " in fitted and " reaches " in fitted
    on_test = reporting.describe_baseline(fit["oof_auroc"], alone, 0.9)  # the test reading: one sentence, no repeat
    assert on_test.startswith("The trivial baseline reaches AUROC 0.900 on the official test split")
    assert f"against {fit['oof_auroc']:.3f} out of fold" in on_test and "alone, " not in on_test


def test_id_blocks_count_false_positives_per_third_of_the_numbers():
    ids = [f"IM-{n:04d}" for n in range(1, 31)] + [f"NORMAL2-IM-{n:04d}" for n in range(100, 130)]
    frame = pd.DataFrame({"patient_id": ids + ["person1_virus"], "y": [0] * 60 + [1],
                          "decision": [1 if i < 3 else 0 for i in range(60)] + [1]})
    table = shift.id_blocks(frame)
    assert list(table["family"].unique()) == ["IM-", "NORMAL2-IM-"] and len(table) == 6
    first = table[(table["family"] == "IM-") & table["part"].str.startswith("1 ")].iloc[0]
    assert first["normals"] == 10 and first["called pneumonia"] == 3 and first["numbers"] == "1-10"
    assert first["ci_low"] < 0.3 < first["ci_high"]
    index = pd.DataFrame({"split": ["test", "test", "train"], "label": "NORMAL",
                          "patient_id": ["IM-0001", "IM-0111", "IM-0200"]})
    blocks = shift.test_id_blocks(index).set_index("split")
    assert blocks.loc["test", "lowest"] == 1 and blocks.loc["test", "highest"] == 111


def test_degrade_and_sharpness_reliance():
    x = _images(3, True, 2)
    for kind in ("blur", "downscale"):
        out = shift.degrade(x, kind)
        assert out.shape == x.shape and out.dtype == np.uint8
        assert baseline.image_statistics(out)["gradient"].lt(baseline.image_statistics(x)["gradient"]).all()
    with pytest.raises(ValueError, match="unknown degradation"):
        shift.degrade(x, "rotate")
    rng = np.random.default_rng(0)
    stats = pd.DataFrame({"gradient": rng.normal(size=200), "laplacian_energy": rng.normal(size=200)})
    y = np.r_[np.zeros(100), np.ones(100)]
    logit = -2 * stats["gradient"].to_numpy() + rng.normal(0, 0.5, 200)  # sharper reads as more normal
    table = shift.sharpness_reliance(logit, y, stats).set_index(["class", "statistic"])
    assert table.loc[(0, "gradient"), "spearman"] < -0.8 and table.loc[(1, "gradient"), "ci_high"] < 0
    assert abs(table.loc[(0, "laplacian_energy"), "spearman"]) < 0.3


def test_child_bootstrap_resamples_children_within_their_label():
    y = np.array([0, 0, 1, 1, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "d"])  # child a has two images
    w = ablation.child_bootstrap(y, groups, 200, seed=0)
    assert w.shape == (200, 6)
    np.testing.assert_array_equal(w[:, 0], w[:, 1])  # a child's images come together
    np.testing.assert_array_equal(w[:, 2], w[:, 3])
    assert (w[:, 0] + w[:, 5] == 2).all()  # the 2 negative children (a, d) drawn twice in all, per resample
    assert (w[:, 2] + w[:, 4] == 2).all()  # likewise the 2 positive children (b, c)
    assert (w[:, 0] == 2).any() and (w[:, 0] == 0).any()  # with replacement


def test_paired_log_loss_difference_and_its_interval():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(150), np.ones(150)].astype(int)
    groups = np.arange(300)
    good = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, 300), 0.01, 0.99)
    bad = np.clip(np.where(y == 1, 0.6, 0.4) + rng.normal(0, 0.05, 300), 0.01, 0.99)
    d = ablation.paired_log_loss(y, good, bad, groups, 500, seed=0)
    assert d["value"] < 0 and d["ci_high"] < 0
    same = ablation.paired_log_loss(y, good, good, groups, 500, seed=0)
    assert same == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_the_ablation_view_keeps_folds_and_holds_out_other_training_children():
    from cxr.data import Prepared

    n = 200
    index = pd.DataFrame({"path": [f"p{i}" for i in range(n)], "split": ["train"] * 160 + ["test"] * 40,
                          "fold": [i % 4 for i in range(160)] + [-1] * 40, "patient_id": [f"c{i // 2}" for i in range(n)],
                          "label": ["NORMAL", "PNEUMONIA"] * 100, "subtype": ["normal", "virus"] * 100})
    prepared = Prepared(index=index, skipped=pd.DataFrame(), images=np.zeros((n, 4, 4), np.uint8), root=None,
                        source=None)
    view, positions = ablation.subset(prepared, fraction=0.25, dev_images=30, seed=0)
    assert not index["split"].iloc[positions].eq("test").any()  # the official test is never in the view
    train, dev = view.index[view.index["split"] == "train"], view.index[view.index["split"] == "test"]
    assert not set(train["patient_id"]) & set(dev["patient_id"])
    assert 30 <= len(dev) <= 34 and set(train["fold"]) == {0, 1, 2, 3}
    again, _ = ablation.subset(prepared, fraction=0.25, dev_images=30, seed=0)
    pd.testing.assert_frame_equal(again.index, view.index)  # deterministic
    assert ablation.candidate_config(Config(), "resample").aug_resample == 0.5
    assert ablation.candidate_config(Config(aug_resample=0.9), "today").aug_resample == 0.0  # today's recipe
    with pytest.raises(ValueError, match="unknown candidate"):
        ablation.candidate_config(Config(), "bigger")


def test_the_protocol_text_follows_the_config():
    from cxr.reporting import describe_protocol

    text = describe_protocol(Config(n_folds=5, target_sensitivity=0.97, aug_resample=0.5,
                                    finetune_tasks=("pneumonia",)))
    assert "5-fold cross-validation" in text and "reaches 0.97" in text and "resampling path" in text
    assert "for pneumonia" in text
    assert "contiguous ID blocks" in text and "corner zones" in text and "counted once" in text  # protocol v2
    assert "specificity of 0.70 reported as met or missed" in text and "bacterial sensitivity" in text
    assert "reaches 0.90" in text and "falls below 0.50" in text
    v1 = describe_protocol(Config(fold_scheme="random", marker_zones=False, dedupe_test=False))
    assert "seeded by split_seed" in v1 and "corner zones" not in v1 and "counted once" not in v1


def test_the_mean_gradient_by_region_reads_where_the_classes_differ():
    from cxr.evaluate.baseline import gradient_by_region

    rng = np.random.default_rng(0)
    images = rng.integers(0, 40, (40, 64, 64)).astype(np.uint8)
    y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    images[y == 0, 20:50, 12:52] = rng.integers(0, 255, (20, 30, 40))  # normals: sharp texture in the lung box
    index = pd.DataFrame({"split": ["train"] * 40, "label": np.where(y == 1, "PNEUMONIA", "NORMAL")})
    table = gradient_by_region(images, index)
    assert table.loc["central lung box", "auroc"] == 1.0 and table.loc["outside the box", "auroc"] < 0.8
    assert (table["images"] == 40).all()
