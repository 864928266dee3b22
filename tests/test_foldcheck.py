"""The fold check on a toy dataset in the Kaggle naming: block and random folds side by side, the operating point
cross-fitted (never chosen on the fold it is judged on), and the stamp counterfactual on the OOF normals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr import foldcheck
from cxr.config import Config
from cxr.data import Prepared
from cxr.data.markers import paste_stamp


def toy(n: int = 48, stamp_on_pneumonia: bool = True) -> Prepared:
    rng = np.random.default_rng(0)
    rows, images = [], []
    for i in range(n):
        label = "NORMAL" if i % 2 else "PNEUMONIA"
        img = rng.integers(0, 60, (64, 64)).astype(np.uint8)
        if label == "PNEUMONIA":
            img[24:40, 24:40] = 160
            if stamp_on_pneumonia and i % 4 == 0:
                img = paste_stamp(img)
            name, pid, sub = f"person{i}_bacteria_{i}.jpeg", f"person{i}_bacteria", "bacteria"
        else:
            name, pid, sub = f"IM-{i:04d}-0001.jpeg", f"IM-{i:04d}", "normal"
        rows.append({"path": f"train/{label}/{name}", "official_split": "train", "split": "train", "fold": 0,
                     "label": label, "subtype": sub, "patient_id": pid, "sha1": f"h{i}"})
        images.append(img)
    return Prepared(index=pd.DataFrame(rows), skipped=pd.DataFrame(), images=np.stack(images), root=None, source=None)


def test_cross_fitting_never_chooses_on_the_fold_it_judges():
    y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    fold = np.tile([0, 1], 20)
    p = np.where(y == 1, 0.8, 0.2)
    p[(fold == 0) & (y == 1)] = 0.6  # fold 0's positives score lower than fold 1's
    table = foldcheck.cross_fitted(y, p, fold, target=1.0)
    # fold 0's threshold comes from fold 1 (0.8): all of fold 0's positives are missed, which choosing on fold 0
    # itself would have hidden
    assert table.loc[table["fold"] == "0", "threshold"].iloc[0] == pytest.approx(0.8)
    assert table.loc[table["fold"] == "0", "sensitivity"].iloc[0] == 0.0
    assert table.loc[table["fold"] == "pooled", "images"].iloc[0] == 40


def test_fold_check_compares_the_designs_and_runs_the_counterfactual():
    prepared = toy()
    config = Config(backbone="tiny_cnn", weights=None, image_size=64, batch_size=8, n_folds=2, seed=0)
    doc = foldcheck.fold_check(config, prepared)
    assert [(d["fold_scheme"], d["marker_zones"]) for d in doc["designs"]] == [
        ("random", False), ("blocks", False), ("random", True), ("blocks", True)]
    for d in doc["designs"]:
        assert d["images"] == 48 and 0.0 <= d["oof_auroc"] <= 1.0
        assert d["worst_fold_specificity"] <= d["specificity"] + 1e-9
        cf = d["counterfactual"]
        assert cf["n"] >= 0 and (cf["n"] == 0 or 0.0 <= cf["changed_share"] <= 1.0)
    blocks = [d for d in doc["designs"] if d["fold_scheme"] == "blocks"][0]
    # block folds: each fold one contiguous id range per family
    fold = foldcheck.folds_for(prepared, prepared.rows("train"), "blocks", 2, 0)
    ids = prepared.index["path"].str.extract(r"(\d+)")[0].astype(int).to_numpy()
    for family in ("person", "IM-"):
        sel = prepared.index["path"].str.contains(family).to_numpy()
        assert ids[sel][fold[sel] == 0].max() < ids[sel][fold[sel] == 1].min()
    assert set(foldcheck.table(doc).columns) >= {"fold scheme", "marker zones", "specificity", "stamp flips"}
    assert doc["n_folds"] == 2 and blocks["images"] == 48
