"""Audits of the data that change what the study's numbers mean, computed from the index (never typed):

- `patient_id_evidence`: why a pneumonia person number is counted per subtype (`person5_bacteria` and
  `person5_virus` are two children): how the numbers of the training and test splits overlap;
- near duplicates: a perceptual hash of every decoded image (`perceptual_hash`, stored in the index), the pairs
  within a stated Hamming distance (`near_duplicate_pairs`), grouped like byte-identical copies by the split;
- `flow_counts`: the flow of images and children from the files found to the training folds and the test split.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn

from cxr.data.names import PNEUMONIA_FAMILIES, person_number

HASH_SIZE = 64  # the image is box-filtered to HASH_SIZE x HASH_SIZE before the DCT
HASH_FREQUENCIES = 16  # the lowest 16 x 16 DCT frequencies, without the constant one: 255 bits (+1 zero bit)
HASH_BITS = HASH_FREQUENCIES * HASH_FREQUENCIES


# ---------------------------------------------------------------------------------------------------------------
# Perceptual hash and near duplicates


def perceptual_hash(img: Image.Image) -> str:
    """A DCT perceptual hash of a grayscale image, as 64 hex digits (256 bits; the last bit is always 0).

    The image is squashed to 64 x 64 with a box filter; bit k says whether the k-th of the 255 lowest non-constant
    DCT frequencies (16 x 16 block, zig-zag not needed: row-major) lies above their median. Re-compression, blur,
    brightness and small shifts move few bits; different images differ in about half of them."""
    gray = img if img.mode == "L" else img.convert("L")
    small = np.asarray(gray.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX), dtype=np.float64)
    coefficients = dctn(small, norm="ortho")[:HASH_FREQUENCIES, :HASH_FREQUENCIES].ravel()[1:]
    bits = np.r_[coefficients > np.median(coefficients), False]
    return np.packbits(bits).tobytes().hex()


def hash_bits(hashes: Any) -> np.ndarray:
    """(n, 256) bool array of hex hashes from `perceptual_hash`."""
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hashes), -1), axis=1).astype(bool)


def hamming_distances(bits: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Pairwise Hamming distances (int) between the rows of `bits` (and `other`), by two matrix products."""
    a = bits.astype(np.float32)
    b = a if other is None else other.astype(np.float32)
    return np.rint(a @ (1.0 - b).T + (1.0 - a) @ b.T).astype(np.int32)


def near_duplicate_pairs(index: pd.DataFrame, max_distance: int, chunk: int = 2048) -> pd.DataFrame:
    """Every pair of images of `index` whose perceptual hashes differ in at most `max_distance` bits.

    Columns: a, b (row positions in `index`, a < b), path_a, path_b, distance, byte_identical (same sha1). Sorted
    by (a, b). The pairs found are grouped like byte-identical copies by `cxr.data.split` (one group, one split)."""
    bits = hash_bits(index["phash"].tolist())
    rows = []
    for start in range(0, len(bits), chunk):
        d = hamming_distances(bits[start:start + chunk], bits)
        i, j = np.nonzero(d <= max_distance)
        keep = j > i + start
        rows.append(np.c_[i[keep] + start, j[keep], d[i[keep], j[keep]]])
    pairs = np.concatenate(rows) if rows else np.zeros((0, 3), int)
    paths, sha = index["path"].to_numpy(), index["sha1"].to_numpy()
    out = pd.DataFrame({"a": pairs[:, 0], "b": pairs[:, 1]}).astype("int64")
    out["path_a"], out["path_b"] = paths[out["a"]], paths[out["b"]]
    out["distance"] = pairs[:, 2].astype("int64")
    out["byte_identical"] = sha[out["a"]] == sha[out["b"]]
    return out.sort_values(["a", "b"], ignore_index=True)


def nearest_distances(index: pd.DataFrame, chunk: int = 2048) -> np.ndarray:
    """The Hamming distance from each image to its nearest other image whose bytes differ (its sha1)."""
    bits, sha = hash_bits(index["phash"].tolist()), index["sha1"].to_numpy()
    out = np.empty(len(bits), np.int64)
    for start in range(0, len(bits), chunk):
        d = hamming_distances(bits[start:start + chunk], bits)
        d[sha[start:start + chunk, None] == sha[None, :]] = HASH_BITS + 1
        out[start:start + chunk] = d.min(axis=1)
    return out


def near_duplicate_summary(index: pd.DataFrame, pairs: pd.DataFrame, max_distance: int) -> dict[str, Any]:
    """What the audit found: pairs within `max_distance` (byte-identical or not; within one official split or
    across), and how far apart the closest images with different bytes are (the margin of the stated distance)."""
    split = index["official_split"].to_numpy()
    near = pairs[~pairs["byte_identical"]]
    nearest = nearest_distances(index) if len(index) > 1 else np.array([HASH_BITS])
    beyond = nearest[nearest > max_distance]
    return {
        "hash": f"DCT perceptual hash, {HASH_FREQUENCIES}x{HASH_FREQUENCIES} lowest frequencies of a "
                f"{HASH_SIZE}x{HASH_SIZE} box-filtered image ({HASH_BITS - 1} bits)",
        "max_distance": int(max_distance),
        "pairs": int(len(pairs)),
        "byte_identical_pairs": int(pairs["byte_identical"].sum()),
        "near_pairs": int(len(near)),
        "near_pairs_across_official_splits": int((split[near["a"]] != split[near["b"]]).sum()) if len(near) else 0,
        "closest_distinct_distance": int(nearest.min()),
        "closest_distance_beyond_threshold": int(beyond.min()) if len(beyond) else None,
        "images_with_a_distinct_image_within_threshold": int((nearest <= max_distance).sum()),
    }


# ---------------------------------------------------------------------------------------------------------------
# Patient ids


def _person_numbers(index: pd.DataFrame, split: str, subtype: str) -> set[int]:
    rows = index[index["official_split"].eq(split) & index["subtype"].eq(subtype)]
    return {n for n in map(person_number, rows["path"]) if n is not None}


def patient_id_evidence(index: pd.DataFrame, bin_width: int = 100) -> dict[str, Any]:
    """The counts that decide whether `personN_bacteria` and `personN_virus` are one child or two.

    If N numbered children, a child with images in both splits would sometimes keep its subtype; if N is counted
    per subtype, a number shared by the two splits must switch subtype, and bacterial and viral numbers coincide
    within training only by chance. Returns the numbers per (official split, subtype), how many training numbers
    reappear in test with the same and with the other subtype, and the coincidences of bacterial and viral
    numbers within training against two chance expectations: numbers uniform over the common range, and numbers
    as dense as observed in each block of `bin_width` (the numbering is not uniform)."""
    num = {(s, t): _person_numbers(index, s, t) for s in ("train", "test") for t in PNEUMONIA_FAMILIES}
    trb, trv, teb, tev = num["train", "bacteria"], num["train", "virus"], num["test", "bacteria"], num["test", "virus"]
    top = max([max(v) for v in (trb, trv) if v] or [1])
    edges = np.arange(0, top + bin_width + 1, bin_width)
    hb, _ = np.histogram(sorted(trb), edges)
    hv, _ = np.histogram(sorted(trv), edges)
    train_pneumonia = index[index["official_split"].isin(("train", "val")) & index["label"].eq("PNEUMONIA")]
    in_test = teb | tev  # a training image with such a number is excluded if one number were one child
    merged = int(sum(person_number(p) in in_test for p in train_pneumonia["path"]))
    return {
        "merged_ids_would_exclude": merged,
        "pneumonia_training_images": int(len(train_pneumonia)),
        "numbers": {f"{s}/{t}": len(v) for (s, t), v in num.items()},
        "train_in_test_same_subtype": {"bacteria": len(trb & teb), "virus": len(trv & tev)},
        "train_in_test_other_subtype": {"bacteria_to_virus": len(trb & tev), "virus_to_bacteria": len(trv & teb)},
        "train_bacteria_virus_coincidences": len(trb & trv),
        "chance_uniform": float(len(trb) * len(trv) / top) if top else 0.0,
        "chance_by_density": float((hb * hv / bin_width).sum()),
        "bin_width": int(bin_width),
    }


def describe_patient_ids(evidence: dict[str, Any]) -> str:
    """Two or three sentences from `patient_id_evidence`: the rule and why."""
    e = evidence
    same, other = e["train_in_test_same_subtype"], e["train_in_test_other_subtype"]
    n = e["numbers"]
    shared = other["bacteria_to_virus"] + other["virus_to_bacteria"]
    return (f"Of the {n['train/bacteria']:,} bacterial and {n['train/virus']:,} viral person numbers of the official "
            f"training split, {same['bacteria']} and {same['virus']} reappear in the test split with the same "
            f"subtype, while {shared} reappear with the other one ({other['bacteria_to_virus']} bacterial -> viral, "
            f"{other['virus_to_bacteria']} viral -> bacterial); within training, bacterial and viral numbers "
            f"coincide {e['train_bacteria_virus_coincidences']} times, where chance predicts "
            f"{e['chance_uniform']:.0f} (numbers uniform over their range) or {e['chance_by_density']:.0f} (as dense "
            f"as observed in blocks of {e['bin_width']}). The numbers are counted per subtype, so a child is "
            "`personN_bacteria` or `personN_virus`, never both."
            + (f" Reading `personN` as one child (as an earlier version of this study did) would have excluded "
               f"{e['merged_ids_would_exclude']:,} training images of other children "
               f"({e['merged_ids_would_exclude'] / e['pneumonia_training_images']:.0%} of the pneumonia training "
               "images) and merged unrelated children in the folds and intervals."
               if e.get("merged_ids_would_exclude") else ""))


# ---------------------------------------------------------------------------------------------------------------
# Flow of images and children


def flow_counts(inventory: pd.DataFrame, skipped: pd.DataFrame) -> pd.DataFrame:
    """The flow from the files found to the images used, in images and children (TRIPOD/CLAIM flow diagram).

    `inventory`: every readable image with its `split` (train/test/excluded) and `excluded_reason`; `skipped`:
    the files that were not kept, with their reason. One row per stage: stage, images, children, detail."""
    junk = skipped["reason"].str.startswith(("junk", "macOS", "nested duplicate", "folder outside", "file outside",
                                             "not an image",
                                             "unknown class", "inside a sub-folder"))
    unreadable = skipped[~junk & ~skipped["path"].str.endswith("/")]
    rows = [("files found (image files)", len(inventory) + len(unreadable), None, ""),
            ("unreadable (skipped)", len(unreadable), None,
             "; ".join(f"{k}: {v}" for k, v in unreadable["reason"].str.split(":").str[0].value_counts().items()))]
    rows.append(("readable images", len(inventory), inventory["patient_id"].nunique(), ""))
    excluded = inventory[inventory["split"].eq("excluded")]
    for reason, group in excluded.groupby("excluded_reason", sort=True):
        rows.append((f"excluded: {reason}", len(group), group["patient_id"].nunique(), ""))
    for split in ("train", "test"):
        part = inventory[inventory["split"].eq(split)]
        detail = ", ".join(f"{k} {v}" for k, v in part["label"].value_counts().sort_index().items())
        if split == "train" and "fold" in part:
            detail += f"; {part['fold'].nunique()} folds"
        rows.append((f"{'training (cross-validated)' if split == 'train' else 'official test'}", len(part),
                     part["patient_id"].nunique(), detail))
    frame = pd.DataFrame(rows, columns=["stage", "images", "children", "detail"])
    frame["children"] = frame["children"].astype("Int64")
    return frame


def describe_near_duplicates(summary: dict[str, Any]) -> str:
    """Two sentences from `near_duplicate_summary`: what the audit found and how far the stated distance is from
    the closest pair of different images."""
    s = summary
    found = (f"{s['pairs']} pairs of images lie within {s['max_distance']} of {HASH_BITS - 1} bits of each other; "
             f"{s['byte_identical_pairs']} of them are byte-identical copies and {s['near_pairs']} are near duplicates "
             f"({s['near_pairs_across_official_splits']} across the official splits)")
    beyond = s["closest_distance_beyond_threshold"]
    margin = (f"The closest two images with different bytes are {s['closest_distinct_distance']} bits apart"
              + (f" (the closest beyond the threshold: {beyond})" if beyond is not None and
                 beyond != s["closest_distinct_distance"] else ""))
    return (f"{found}. {margin}; a JPEG re-compression or a shift of a few pixels moves 2 to 20 bits, so the "
            "stated distance catches such copies with a margin. Every pair found is one group for the split (one "
            "fold, never train and test), and a training image within the distance of a test image is excluded.")


def describe_balance(inventory: pd.DataFrame) -> str:
    """One or two sentences on the class balance of the official splits and what it means."""
    share = inventory.groupby("official_split")["label"].apply(lambda s: s.eq("PNEUMONIA").mean())
    parts = [f"{split} {share[split]:.0%}" for split in ("train", "val", "test") if split in share]
    return (f"Pneumonia share per official split: {', '.join(parts)}. The test split is more balanced than the "
            "training children, and both are far from a clinic's prevalence: precision, calibration and the "
            "decision curves below depend on it.")


def describe_children(index: pd.DataFrame) -> str:
    """One sentence on how many images the children contribute, per class."""
    per = index.groupby(["label", "patient_id"]).size()
    parts = []
    for label, counts in per.groupby(level=0):
        parts.append(f"{label}: {len(counts):,} children, {counts.sum():,} images, {int((counts > 1).sum()):,} "
                     f"with more than one (at most {int(counts.max())})")
    return ("; ".join(parts) + ". Images of one child are not independent: the folds and every patient-level "
            "interval treat the child as the unit.")


def describe_sizes(inventory: pd.DataFrame) -> str:
    """One sentence on the original image sizes, and what a copy with one size cannot show."""
    sizes = inventory[["width", "height"]].drop_duplicates()
    if len(sizes) == 1:
        w, h = sizes.iloc[0]
        return (f"Every image of this copy is {w} x {h} px: the original sizes and aspect ratios (about 1000-2000 px "
                "wide in the Kaggle archive) are not in it, so neither this figure nor the error analysis can look "
                "at them. With the Kaggle archive they can; the full-resolution originals of normal images are "
                "larger than those of pneumonia images, which the 224-px copies keep as sharpness (section 2).")
    area = (inventory["width"] * inventory["height"] / 1e6).groupby(inventory["label"]).median()
    return ("Median original area: " + ", ".join(f"{k} {v:.1f} megapixels" for k, v in area.items())
            + "; every image is squashed to a square of the model's size, so a size difference between the classes "
            "survives as a difference in sharpness.")
