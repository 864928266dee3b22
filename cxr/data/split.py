"""The patient-level re-split: the official train (+ val) into train and val, grouped by patient id and by
identical bytes (connected components), stratified by subtype; the official test is never changed; the leakage
check; the per-class cap of the smoke mode; the split summary table."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cxr.config import CLASS_NAMES, SPLITS


def split_summary(index: pd.DataFrame, by: str = "split") -> pd.DataFrame:
    """Images and patients per split (`by`: "split" or "official_split") and label, with each split's pneumonia share."""
    images = pd.crosstab(index[by], index["label"]).reindex(columns=list(CLASS_NAMES), fill_value=0)
    patients = index.groupby([by, "label"])["patient_id"].nunique().unstack(fill_value=0)
    patients = patients.reindex(columns=list(CLASS_NAMES), fill_value=0)
    table = pd.concat({"images": images, "patients": patients}, axis=1)
    table[("images", "total")] = images.sum(axis=1)
    table[("patients", "total")] = index.groupby(by)["patient_id"].nunique()
    table[("pneumonia share", "")] = (images["PNEUMONIA"] / images.sum(axis=1)).round(3)
    order = [s for s in SPLITS if s in table.index]
    return table.reindex(order)[["images", "patients", "pneumonia share"]]


def _group_ids(index: pd.DataFrame) -> np.ndarray:
    """Integer group per row: rows sharing a patient id or a sha1 are in one group (connected components of the
    graph that links each row to the first row with the same patient id and the same sha1). Groups are numbered
    in the order of their first row, so the numbering (and with it the seeded split) does not depend on scipy's."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(index)
    rows = np.arange(n)
    src, dst = [], []
    for column in ("patient_id", "sha1"):
        key = index[column].to_numpy()
        first = pd.Series(rows).groupby(key, sort=False).transform("min").to_numpy()  # first row of each key
        src.append(rows)
        dst.append(first)
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first_row = np.unique(labels, return_index=True)  # first row of each component
    rank = np.empty(len(first_row), np.int64)
    rank[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
    return rank[labels]


def check_no_leakage(index: pd.DataFrame, patients_vs_test: bool = False) -> None:
    """Raise AssertionError when a patient is in both train and val, or a sha1 in two splits (any of the three).
    With `patients_vs_test`, patients shared with the official test count too."""
    splits = ["train", "val", "test"] if patients_vs_test else ["train", "val"]
    for column, names in (("patient_id", splits), ("sha1", ["train", "val", "test"])):
        sub = index[index["split"].isin(names)]
        crossing = sub.groupby(column)["split"].nunique()
        crossing = crossing[crossing > 1]
        if len(crossing):
            raise AssertionError(f"{len(crossing)} {column} values appear in two splits, "
                                 f"e.g. {list(crossing.index[:3])}")


def split_by_patient(index: pd.DataFrame, val_fraction: float = 0.15, seed: int = 42,
                     drop_test_patients: bool = False) -> pd.DataFrame:
    """Add a `split` column (train/val/test): the official train + val is re-split into train and val, grouped by
    patient and by identical sha1, stratified by subtype (so by label too) with scikit-learn's
    StratifiedGroupKFold (val is one of round(1/val_fraction) folds); the official test is kept as it is.

    Deterministic for a seed whatever the row order (rows are sorted by path; the result is sorted by path).
    Training images byte-identical to a test image are dropped (with a warning). The Kaggle file names reuse
    person numbers in train and test; those images are kept and reported unless `drop_test_patients`.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    index = index.sort_values("path", ignore_index=True).copy()
    is_test = index["official_split"].eq("test")
    test_sha1 = set(index.loc[is_test, "sha1"])
    drop = ~is_test & index["sha1"].isin(test_sha1)
    test_patients = set(index.loc[is_test, "patient_id"])
    shared_patients = ~is_test & index["patient_id"].isin(test_patients)
    if drop.any():
        warnings.warn(f"dropped {int(drop.sum())} training images byte-identical to test images", stacklevel=2)
    if shared_patients.any():
        message = (f"{int(shared_patients.sum())} training images carry a patient id "
                   f"({index.loc[shared_patients, 'patient_id'].nunique()} ids) that also appears in the official test")
        if drop_test_patients:
            drop |= shared_patients
            print(f"Note: {message}; left out of train/val so that no patient id is in two splits.")
        else:
            print(f"Note: {message} (Kaggle numbering; test kept unchanged, images kept).")
    index = index[~drop].reset_index(drop=True)
    is_test = index["official_split"].eq("test")

    index["split"] = np.where(is_test, "test", "train")
    pool = index[~is_test]
    groups = _group_ids(pool)
    mixed = pool.groupby(groups)["label"].nunique()
    if (mixed > 1).any():
        warnings.warn(f"{int((mixed > 1).sum())} groups of identical images carry both labels", stacklevel=2)
    n_groups = len(np.unique(groups))
    if n_groups >= 2:
        n_splits = int(min(max(2, round(1 / val_fraction)), n_groups))
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny data
            _, val_rows = next(folds.split(np.zeros(len(pool)), pool["subtype"].to_numpy(), groups))
        index.loc[pool.index[val_rows], "split"] = "val"
    check_no_leakage(index, patients_vs_test=drop_test_patients)
    return index


def cap_per_class(index: pd.DataFrame, max_per_class: int | None, seed: int = 42) -> pd.DataFrame:
    """At most `max_per_class` images per (official split, label), taking whole patients in a seeded order
    (deterministic whatever the row order). For the smoke mode."""
    if max_per_class is None:
        return index
    index = index.sort_values("path", ignore_index=True)
    keep = []
    for (split, label), group in index.groupby(["official_split", "label"], sort=True):
        if len(group) <= max_per_class:
            keep.extend(group.index)
            continue
        sizes = group.groupby("patient_id").size()
        order = np.random.default_rng([seed, len(split), len(label)]).permutation(len(sizes))
        chosen, total = [], 0
        for i in order:
            if total + sizes.iloc[i] <= max_per_class:
                chosen.append(sizes.index[i])
                total += int(sizes.iloc[i])
            if total == max_per_class:
                break
        keep.extend(group.index[group["patient_id"].isin(chosen)])
    return index.loc[sorted(keep)].reset_index(drop=True)
