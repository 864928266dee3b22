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
