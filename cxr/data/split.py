"""The patient-level re-split: the official train (+ val) into train and val, grouped by patient id and by
identical bytes (connected components), stratified by subtype; the official test is never changed; the leakage
check; the per-class cap of the smoke mode; the split summary table."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cxr.config import CLASS_NAMES, SPLITS
from cxr.data.sources import DataUnavailable

EXCLUDED = "excluded"  # the `split` of an image found and readable but left out of train/val/test (see its reason)
TEST_PATIENT = "patient id also in the official test"
TEST_COPY = "byte-identical to an official test image"


def split_summary(index: pd.DataFrame, by: str = "split") -> pd.DataFrame:
    """Images and patients per split (`by`: "split" or "official_split") and label, with each split's pneumonia share.
    By "split", excluded rows are left out; by "official_split", every image found counts."""
    if by == "split":
        index = index[index[by].isin(SPLITS)]
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
    """Add a `split` column (train/val/test/excluded) and an `excluded_reason` column (empty unless excluded): the
    official train + val is re-split into train and val, grouped by patient and by identical sha1, stratified by
    subtype (so by label too) with scikit-learn's StratifiedGroupKFold (val is one of round(1/val_fraction) folds);
    the official test is kept as it is.

    Every row is kept (the index is the inventory of what was found). Training images byte-identical to a test
    image are `excluded`; so are training images whose patient id is also in the official test when
    `drop_test_patients` (the Kaggle file names reuse person numbers; otherwise they are kept and reported).
    The train/val split is computed on the kept rows only. Deterministic for a seed whatever the row order (the
    result is sorted by path). A pool too small for round(1/val_fraction) folds is split into fewer folds (said
    in a note); one that cannot be split at all (fewer than 2 patients, or no class with 2 images) raises
    `DataUnavailable` saying how many images are needed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    index = index.sort_values("path", ignore_index=True).copy()
    is_test = index["official_split"].eq("test")
    reason = pd.Series("", index=index.index, dtype=object)
    copies = ~is_test & index["sha1"].isin(set(index.loc[is_test, "sha1"]))
    reason[copies] = TEST_COPY
    shared_patients = ~is_test & index["patient_id"].isin(set(index.loc[is_test, "patient_id"]))
    if copies.any():
        print(f"Note: {int(copies.sum())} training images are byte-identical to official test images; excluded.")
    if shared_patients.any():
        message = (f"{int(shared_patients.sum())} training images carry a patient id "
                   f"({index.loc[shared_patients, 'patient_id'].nunique()} ids) that also appears in the official test")
        if drop_test_patients:
            reason[shared_patients & ~copies] = TEST_PATIENT
            print(f"Note: {message}; excluded from train/val so that no patient id is in two splits.")
        else:
            print(f"Note: {message} (Kaggle numbering; test kept unchanged, images kept).")
    excluded = reason.ne("")
    kept = index[~excluded].reset_index(drop=True)
    is_test = kept["official_split"].eq("test")

    kept["split"] = np.where(is_test, "test", "train")
    pool = kept[~is_test]
    groups = _group_ids(pool)
    mixed = pool.groupby(groups)["label"].nunique()
    if (mixed > 1).any():
        print(f"Note: {int((mixed > 1).sum())} groups of identical images carry both labels.")
    n_groups = len(np.unique(groups))
    counts = pool["subtype"].value_counts()
    if n_groups < 2 or counts.max() < 2:
        raise DataUnavailable(
            f"Too few training images to split into train and validation: {len(pool)} image(s) of {n_groups} "
            f"patient(s) in the official train/val folders; at least 2 patients with 2 images of one class are needed "
            f"(in practice, 10 or more patients per class): add images to train/NORMAL and train/PNEUMONIA.")
    n_splits = int(min(max(2, round(1 / val_fraction)), n_groups))
    if (counts < n_splits).all():  # scikit-learn needs n_splits <= the largest class: fewer, larger folds
        wanted, n_splits = n_splits, int(counts.max())
        print(f"Note: only {len(pool)} training images ({n_groups} patients, largest class {counts.idxmax()} with "
              f"{counts.max()}): validation takes 1 of {n_splits} folds (about {1 / n_splits:.0%}) instead of 1 of "
              f"{wanted} ({val_fraction:.0%}); {wanted} or more images of a class give the usual split.")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny data
        _, val_rows = next(folds.split(np.zeros(len(pool)), pool["subtype"].to_numpy(), groups))
    kept.loc[pool.index[val_rows], "split"] = "val"
    for label in sorted(set(pool["label"])):
        missing = [s for s in ("train", "val") if not (kept["split"].eq(s) & kept["label"].eq(label)).any()]
        if missing:
            print(f"Note: no {label} image in {' or '.join(missing)}: too few {label} patients "
                  f"({pool.loc[pool['label'] == label, 'patient_id'].nunique()}) to have both; training needs both.")
    kept["excluded_reason"] = ""
    check_no_leakage(kept, patients_vs_test=drop_test_patients)
    out = index[excluded].assign(split=EXCLUDED, excluded_reason=reason[excluded])
    return pd.concat([kept, out]).sort_values("path", ignore_index=True)


def exclusion_summary(index: pd.DataFrame) -> str:
    """The exclusions of the split, one line per reason (a decision of the split, not a defect of the archive)."""
    if "split" not in index or not index["split"].eq(EXCLUDED).any():
        return "excluded by the split: none"
    ex = index[index["split"] == EXCLUDED]
    lines = [f"excluded by the split (kept in the index with split = {EXCLUDED!r}): {len(ex)} images"]
    for why, rows in ex.groupby("excluded_reason", sort=True):
        lines.append(f"  {why}: {len(rows)} images ({rows['patient_id'].nunique()} patient ids)")
    return "\n".join(lines)


def mark_excluded(index: pd.DataFrame, subset: pd.DataFrame, reason: str) -> pd.DataFrame:
    """`subset` (a split index) plus the rows of `index` that are not in it, as excluded with `reason`."""
    rest = index[~index["path"].isin(set(subset["path"]))].assign(split=EXCLUDED, excluded_reason=reason)
    return pd.concat([subset, rest]).sort_values("path", ignore_index=True)


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
