"""The patient-level split: the official test is kept as it is; the training children (official train + val) are
split into `n_folds` cross-validation folds, grouped by child, by identical bytes and by near-duplicate images
(connected components), stratified by subtype (the "random" scheme) or in contiguous ID blocks of every file-name
family, periods of time as the official test is cut (the "blocks" scheme). Training images that are copies
(byte-identical or near duplicates) of a test image, or (optionally) carry a test child's id, are excluded. Also
the leakage check, the per-class cap of the smoke mode and the summary tables."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cxr.config import CLASS_NAMES, OFFICIAL_SPLITS, SPLITS
from cxr.data.names import ID_FAMILIES, OTHER, id_family  # `split.id_family`, `split.OTHER` stay importable
from cxr.data.sources import DataUnavailable

EXCLUDED = "excluded"  # the `split` of an image found and readable but left out of train/test (see its reason)
TEST_PATIENT = "patient id also in the official test"
TEST_COPY = "byte-identical to an official test image"
TEST_NEAR_COPY = "near duplicate of an official test image"
TEST_DUPLICATE = "byte-identical to another official test image of the same class (counted once)"
NO_FOLD = -1  # the `fold` of test and excluded rows
FOLD_SCHEMES = ("random", "blocks")  # `split_by_patient(scheme=...)`, `Config.fold_scheme`
FAMILIES = ID_FAMILIES  # the file-name families of the archive (`id_family`, `cxr.data.names`)


def split_summary(index: pd.DataFrame, by: str = "split") -> pd.DataFrame:
    """Images and children per split (`by`: "split", "official_split" or "fold") and label, with each row's
    pneumonia share. By "split" or "fold", excluded rows are left out; by "official_split", every image found
    counts."""
    if by == "split":
        index = index[index[by].isin(SPLITS)]
    if by == "fold":
        index = index[index["split"].eq("train")]
    images = pd.crosstab(index[by], index["label"]).reindex(columns=list(CLASS_NAMES), fill_value=0)
    patients = index.groupby([by, "label"])["patient_id"].nunique().unstack(fill_value=0)
    patients = patients.reindex(columns=list(CLASS_NAMES), fill_value=0)
    table = pd.concat({"images": images, "children": patients}, axis=1)
    table[("images", "total")] = images.sum(axis=1)
    table[("children", "total")] = index.groupby(by)["patient_id"].nunique()
    table[("pneumonia share", "")] = (images["PNEUMONIA"] / images.sum(axis=1)).round(3)
    order = sorted(table.index) if by == "fold" else [s for s in (*SPLITS, *OFFICIAL_SPLITS) if s in table.index]
    return table.reindex(list(dict.fromkeys(order)))[["images", "children", "pneumonia share"]]


def _group_ids(index: pd.DataFrame, pairs: np.ndarray | None = None) -> np.ndarray:
    """Integer group per row: rows sharing a patient id or a sha1, or linked by a near-duplicate pair (row
    positions (a, b)), are in one group (connected components). Groups are numbered in the order of their first
    row, so the numbering (and with it the seeded split) does not depend on scipy's."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(index)
    rows = np.arange(n)
    src, dst = [], []
    for column in ("patient_id", "sha1"):
        key = index[column].to_numpy()
        src.append(rows)
        dst.append(pd.Series(rows).groupby(key, sort=False).transform("min").to_numpy())  # first row of each key
    if pairs is not None and len(pairs):
        src.append(np.asarray(pairs)[:, 0])
        dst.append(np.asarray(pairs)[:, 1])
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first_row = np.unique(labels, return_index=True)  # first row of each component
    rank = np.empty(len(first_row), np.int64)
    rank[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
    return rank[labels]


def _pairs_between(index: pd.DataFrame, near: pd.DataFrame | None) -> np.ndarray:
    """The near-duplicate pairs of `near` (paths) as row positions of `index` (pairs with a row outside dropped)."""
    if near is None or near.empty:
        return np.zeros((0, 2), np.int64)
    where = pd.Series(np.arange(len(index)), index=index["path"].to_numpy())
    both = near["path_a"].isin(where.index) & near["path_b"].isin(where.index)
    return np.c_[where.loc[near.loc[both, "path_a"]].to_numpy(), where.loc[near.loc[both, "path_b"]].to_numpy()]


def check_no_leakage(index: pd.DataFrame, patients_vs_test: bool = False, near: pd.DataFrame | None = None) -> None:
    """Raise AssertionError when a child (patient id), a sha1 or a near-duplicate pair (`near`, from
    `cxr.data.audit.near_duplicate_pairs`) spans two folds of the training split or the training and the test
    split. With `patients_vs_test`, children shared by training and test count too."""
    kept = index[index["split"].isin(SPLITS)]
    unit = np.where(kept["split"].eq("test"), "test", "fold" + kept["fold"].astype(str))
    for column in ("patient_id", "sha1"):
        sub = pd.DataFrame({"key": kept[column].to_numpy(), "unit": unit})
        if column == "patient_id" and not patients_vs_test:
            sub = sub[unit != "test"]
        crossing = sub.groupby("key")["unit"].nunique()
        crossing = crossing[crossing > 1]
        if len(crossing):
            raise AssertionError(f"{len(crossing)} {column} values appear in two folds or splits, "
                                 f"e.g. {list(crossing.index[:3])}")
    pairs = _pairs_between(kept.reset_index(drop=True), near)
    apart = unit[pairs[:, 0]] != unit[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    if apart.any():
        raise AssertionError(f"{int(apart.sum())} near-duplicate pairs span two folds or splits, e.g. "
                             f"{kept['path'].iloc[pairs[apart][0, 0]]}")


def _contiguous_cut(sizes: np.ndarray, k: int) -> np.ndarray:
    """Fold 0..k-1 of each of n >= k items in their order: k contiguous, non-empty runs whose sums (images) are
    as close to equal as the cut points allow (each cut at the item boundary nearest to j/k of the total)."""
    n = len(sizes)
    cumulative = np.cumsum(sizes)
    before = cumulative[:-1]  # images before the boundary b = 1..n-1
    cuts = [1 + int(np.argmin(np.abs(before - j * cumulative[-1] / k))) for j in range(1, k)]
    for j in range(len(cuts)):  # strictly increasing, every run non-empty
        cuts[j] = max(cuts[j], (cuts[j - 1] if j else 0) + 1)
    for j in reversed(range(len(cuts))):
        cuts[j] = min(cuts[j], (cuts[j + 1] if j + 1 < len(cuts) else n) - 1)
    return np.searchsorted(np.asarray(cuts, np.int64), np.arange(n), side="right")


def block_folds(pool: pd.DataFrame, groups: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold 0..n_folds-1 of each row of `pool` (needs `path`) in contiguous ID blocks, as the official test is cut:
    within each file-name family (`id_family`), the groups (`groups`, one integer per row: children with their
    byte copies and near duplicates, `_group_ids`) are sorted by their smallest ID number and cut into `n_folds`
    contiguous runs of about equal image counts, so fold f is the f-th period of time of every family (fold 0 the
    earliest IDs). A group spanning families goes with the family of its first member (by path). A family with
    fewer groups than folds gives one group to each of the least-filled folds, in ID order; groups of other
    file names are dealt, largest first, to the least-filled fold. Deterministic and independent of row order.
    A copy linking two children far apart in ID puts the later child's images inside the earlier one's block
    (the group is never split), so that family's ranges then overlap by those images."""
    groups = np.asarray(groups)
    if len(groups) != len(pool):
        raise ValueError(f"groups has {len(groups)} entries for {len(pool)} rows")
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, not {n_folds!r}")
    if not len(pool):
        return np.zeros(0, np.int64)
    paths = pool["path"].astype(str).to_numpy()
    family, number = zip(*(id_family(p) for p in paths))
    rows = pd.DataFrame({"group": groups, "path": paths, "family": family, "number": number})
    rows = rows.sort_values(["path", "group"], kind="stable")
    head = rows.drop_duplicates("group").set_index("group")  # the first member (by path) of each group
    own = rows[rows["family"].to_numpy() == head.loc[rows["group"], "family"].to_numpy()]
    table = pd.DataFrame({"family": head["family"], "first_path": head["path"],
                          "start": own.groupby("group")["number"].min().reindex(head.index),
                          "images": rows.groupby("group").size().reindex(head.index)})
    fold = pd.Series(NO_FOLD, index=table.index, dtype=np.int64)
    load = np.zeros(n_folds, np.int64)
    ordered = {f: table[table["family"] == f].sort_values(["start", "first_path"]) for f in FAMILIES}
    big = [f for f in FAMILIES if len(ordered[f]) >= n_folds]
    small = [f for f in FAMILIES if 0 < len(ordered[f]) < n_folds]
    for f in big:
        sizes = ordered[f]["images"].to_numpy()
        cut = _contiguous_cut(sizes, n_folds)
        fold[ordered[f].index] = cut
        load += np.bincount(cut, weights=sizes, minlength=n_folds).astype(np.int64)
    for f in small:
        chosen = np.sort(np.argsort(load, kind="stable")[:len(ordered[f])])
        fold[ordered[f].index] = chosen
        load[chosen] += ordered[f]["images"].to_numpy()
    others = table[table["family"] == OTHER].sort_values(["images", "first_path"], ascending=[False, True])
    for g, size in others["images"].items():
        f = int(np.argmin(load))
        fold[g] = f
        load[f] += size
    return fold.loc[groups].to_numpy()


def fold_blocks(index: pd.DataFrame) -> pd.DataFrame:
    """Per fold and file-name family (`id_family`) of the training rows of a split index (`split_by_patient`):
    the ID range (`first_id`, `last_id`; empty for "other"), `images` and `children`. With the "blocks" scheme
    each fold is one contiguous ID range of every family."""
    if "fold" not in index or "split" not in index:
        raise ValueError("fold_blocks needs a split index (the `split` and `fold` columns of split_by_patient)")
    train = index[index["split"].eq("train")]
    family, number = zip(*(id_family(p) for p in train["path"])) if len(train) else ((), ())
    rows = pd.DataFrame({"fold": train["fold"].astype(int).to_numpy(),
                         "family": pd.Categorical(family, categories=[*FAMILIES, OTHER]),
                         "number": pd.array(number, dtype="Int64"), "patient_id": train["patient_id"].to_numpy()})
    rows.loc[rows["family"] == OTHER, "number"] = pd.NA
    table = rows.groupby(["fold", "family"], observed=True).agg(
        first_id=("number", "min"), last_id=("number", "max"), images=("patient_id", "size"),
        children=("patient_id", "nunique"))
    return table.sort_index()


def split_by_patient(index: pd.DataFrame, n_folds: int, seed: int, drop_test_patients: bool = False,
                     near: pd.DataFrame | None = None, scheme: str = "random",
                     dedupe_test: bool = False) -> pd.DataFrame:
    """Add `split` (train/test/excluded), `fold` (0..k-1 for training rows, -1 otherwise) and `excluded_reason`
    (empty unless excluded): the official test is kept as it is; the official train + val become the training
    children, assigned to `n_folds` folds grouped by patient id, identical sha1 and near-duplicate pairs (`near`:
    paths, from `cxr.data.audit.near_duplicate_pairs`). `scheme` "random": stratified by subtype (so by label
    too), with scikit-learn's StratifiedGroupKFold seeded by `seed`; "blocks": contiguous ID blocks of every
    file-name family, as the official test is cut (`block_folds`; `seed` unused), so that a held-out fold is a
    period of time apart from the others, as the test is.

    Every row is kept (the index is the inventory of what was found). Training images byte-identical to, or near
    duplicates of, a test image are `excluded`; so are training images whose patient id is also in the official
    test when `drop_test_patients`. With `dedupe_test` (protocol v2), a test image byte-identical to another test
    image of the same label is counted once: the first path of each such group is kept, the others are `excluded`
    (so no test image counts twice in a metric). The folds are computed on the kept rows only. Deterministic for a seed
    whatever the row order (the result is sorted by path). A pool too small for `n_folds` folds is split into
    fewer (said in a note); one that cannot be split at all raises `DataUnavailable` saying what is needed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if scheme not in FOLD_SCHEMES:
        raise ValueError(f"unknown fold scheme {scheme!r}; choose one of {FOLD_SCHEMES}")
    index = index.sort_values("path", ignore_index=True).copy()
    is_test = index["official_split"].eq("test")
    reason = pd.Series("", index=index.index, dtype=object)
    copies = ~is_test & index["sha1"].isin(set(index.loc[is_test, "sha1"]))
    reason[copies] = TEST_COPY
    if dedupe_test:
        repeat = is_test & index.duplicated(["sha1", "label"], keep="first")  # sorted by path: the first path stays
        reason[repeat] = TEST_DUPLICATE
        if repeat.any():
            print(f"Note: {int(repeat.sum())} official test images are byte-identical to another test image of the "
                  "same class; each is counted once (the first path kept).")
    pairs = _pairs_between(index, near)
    if len(pairs):
        cross = is_test.to_numpy()[pairs[:, 0]] != is_test.to_numpy()[pairs[:, 1]]
        train_side = np.where(is_test.to_numpy()[pairs[cross, 0]], pairs[cross, 1], pairs[cross, 0])
        near_copy = pd.Series(False, index=index.index)
        near_copy.iloc[train_side] = True
        reason[near_copy & ~copies] = TEST_NEAR_COPY
    shared_patients = ~is_test & index["patient_id"].isin(set(index.loc[is_test, "patient_id"]))
    if copies.any():
        print(f"Note: {int(copies.sum())} training images are byte-identical to official test images; excluded.")
    if reason.eq(TEST_NEAR_COPY).any():
        print(f"Note: {int(reason.eq(TEST_NEAR_COPY).sum())} training images are near duplicates of official test "
              "images; excluded.")
    if shared_patients.any():
        message = (f"{int(shared_patients.sum())} training images carry a patient id "
                   f"({index.loc[shared_patients, 'patient_id'].nunique()} ids) that also appears in the official test")
        if drop_test_patients:
            reason[shared_patients & reason.eq("")] = TEST_PATIENT
            print(f"Note: {message}; excluded so that no child is in two splits.")
        else:
            print(f"Note: {message} (test kept unchanged, images kept).")
    excluded = reason.ne("")
    kept = index[~excluded].reset_index(drop=True)
    is_test = kept["official_split"].eq("test")
    kept["split"] = np.where(is_test, "test", "train")
    kept["fold"] = NO_FOLD
    pool = kept[~is_test]
    groups = _group_ids(pool.reset_index(drop=True), _pairs_between(pool.reset_index(drop=True), near))
    mixed = pool.groupby(groups)["label"].nunique()
    if (mixed > 1).any():
        print(f"Note: {int((mixed > 1).sum())} groups of identical images carry both labels.")
    n_groups = len(np.unique(groups))
    counts = pool["subtype"].value_counts()
    if n_groups < 2 or counts.max() < 2:
        raise DataUnavailable(
            f"Too few training images for cross-validation: {len(pool)} image(s) of {n_groups} child(ren) in the "
            "official train/val folders; at least 2 children with 2 images of one class are needed (in practice, "
            "10 or more children per class): add images to train/NORMAL and train/PNEUMONIA.")
    k = int(min(n_folds, n_groups))
    if scheme == "random" and (counts < k).all():  # scikit-learn needs n_splits <= the largest class
        k = int(counts.max())
    if k < n_folds:
        print(f"Note: only {len(pool)} training images ({n_groups} children, largest class {counts.idxmax()} with "
              f"{counts.max()}): {k} cross-validation folds instead of {n_folds}.")
    if scheme == "blocks":
        fold = block_folds(pool, groups, k)
    else:
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        fold = np.full(len(pool), NO_FOLD)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny data
            for f, (_, held_out) in enumerate(folds.split(np.zeros(len(pool)), pool["subtype"].to_numpy(), groups)):
                fold[held_out] = f
    kept.loc[pool.index, "fold"] = fold
    for label in sorted(set(pool["label"])):
        short = [f for f in range(k) if not (kept["fold"].eq(f) & kept["label"].eq(label)).any()]
        if short:
            print(f"Note: no {label} image in fold(s) {short}: too few {label} children "
                  f"({pool.loc[pool['label'] == label, 'patient_id'].nunique()}) for {k} folds.")
    kept["excluded_reason"] = ""
    check_no_leakage(kept, patients_vs_test=drop_test_patients, near=near)
    out = index[excluded].assign(split=EXCLUDED, fold=NO_FOLD, excluded_reason=reason[excluded])
    return pd.concat([kept, out]).sort_values("path", ignore_index=True)


def exclusion_summary(index: pd.DataFrame) -> str:
    """The exclusions of the split, one line per reason (a decision of the split, not a defect of the archive)."""
    if "split" not in index or not index["split"].eq(EXCLUDED).any():
        return "excluded by the split: none"
    ex = index[index["split"] == EXCLUDED]
    lines = [f"excluded by the split (kept in the index with split = {EXCLUDED!r}): {len(ex)} images"]
    for why, rows in ex.groupby("excluded_reason", sort=True):
        lines.append(f"  {why}: {len(rows)} images ({rows['patient_id'].nunique()} children)")
    return "\n".join(lines)


def mark_excluded(index: pd.DataFrame, subset: pd.DataFrame, reason: str) -> pd.DataFrame:
    """`subset` (a split index) plus the rows of `index` that are not in it, as excluded with `reason`."""
    rest = index[~index["path"].isin(set(subset["path"]))].assign(split=EXCLUDED, fold=NO_FOLD, excluded_reason=reason)
    return pd.concat([subset, rest]).sort_values("path", ignore_index=True)


def cap_per_class(index: pd.DataFrame, max_per_class: int | None, seed: int) -> pd.DataFrame:
    """At most `max_per_class` images per (official split, label), taking whole children in a seeded order
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
