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
    table = foldcheck.operating_table(y, p, fold, target=1.0)
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


# The fold check's operating point before it called the shared `cxr.evaluate.threshold.cross_fitted` (a literal
# copy of the retired `foldcheck.cross_fitted`): the shared rule must give the same table, number for number.
def _retired_cross_fitted(y: np.ndarray, p: np.ndarray, fold: np.ndarray, target: float) -> pd.DataFrame:
    from cxr.evaluate import threshold as thresholds

    rows, called = [], np.zeros(len(y), bool)
    for f in np.unique(fold):
        held = fold == f
        t = thresholds.choose(y[~held], p[~held], "sensitivity", target_sensitivity=target)
        called[held] = p[held] >= t
        rows.append({"fold": str(int(f)), "threshold": t, "images": int(held.sum()),
                     "sensitivity": float(called[held][y[held] == 1].mean()),
                     "specificity": float((~called[held])[y[held] == 0].mean())})
    rows.append({"fold": "pooled", "threshold": float("nan"), "images": len(y),
                 "sensitivity": float(called[y == 1].mean()), "specificity": float((~called)[y == 0].mean())})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(12))
def test_the_shared_cross_fitted_rule_gives_the_retired_tables_number_for_number(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(40, 400)), int(rng.integers(2, 6))
    y = (rng.random(n) < rng.uniform(0.3, 0.75)).astype(int)
    fold = rng.permutation(np.arange(n) % k)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    p[rng.random(n) < 0.1] = 0.5  # ties
    target = float(rng.choice([0.8, 0.9, 0.95, 1.0]))
    got, want = foldcheck.operating_table(y, p, fold, target), _retired_cross_fitted(y, p, fold, target)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_the_committed_fold_check_tables_follow_from_their_thresholds_and_counts(monkeypatch):
    """doc/fold_check.json cannot be recomputed here (frozen features of 5,216 images), but each of its tables can:
    the counts behind every fold's sensitivity and specificity are recovered from the committed numbers, a dataset
    with exactly those counts around the committed thresholds is built, and the fold check's table of it must be
    the committed one, value for value (the last bit included: a specificity taken as 1 - the share of normals
    called differs from the share of normals not called in 3 of the 20 committed rows)."""
    from cxr.evaluate import threshold as thresholds
    from cxr.io import to_json

    doc = foldcheck.load()
    assert len(doc["designs"]) == 4
    for design in doc["designs"]:
        rows = design["folds"]
        ys, ps, folds = [], [], []
        for f, row in enumerate(rows[:-1]):
            (n_neg, kept), (n_pos, found) = _counts(row)
            t = row["threshold"]
            ys += [0] * n_neg + [1] * n_pos
            ps += [t / 2] * kept + [(1 + t) / 2] * (n_neg - kept) + [(1 + t) / 2] * found + [t / 2] * (n_pos - found)
            folds += [f] * (n_neg + n_pos)
        chosen = iter(row["threshold"] for row in rows[:-1])
        monkeypatch.setattr(thresholds, "choose", lambda *args, **kwargs: next(chosen))
        table = foldcheck.operating_table(np.array(ys), np.array(ps), np.array(folds), 0.95)  # choose: replaced
        assert to_json(table) == rows
        assert design["sensitivity"] == rows[-1]["sensitivity"] and design["specificity"] == rows[-1]["specificity"]
        assert design["worst_fold_specificity"] == min(r["specificity"] for r in rows[:-1])


def _counts(row: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """((normals, normals not called), (positives, positives called)) of one fold row: the one split of its images
    whose shares, as numpy takes the mean of a boolean array, are the committed sensitivity and specificity."""
    found = []
    for n_neg in range(1, row["images"]):
        n_pos = row["images"] - n_neg
        kept, called = round(row["specificity"] * n_neg), round(row["sensitivity"] * n_pos)
        if kept / n_neg == row["specificity"] and called / n_pos == row["sensitivity"]:
            found.append(((n_neg, kept), (n_pos, called)))
    assert len(found) == 1, (row, found)
    return found[0]
