"""The data audit and the marker audit in words, written from their numbers (`cxr.data.audit`,
`cxr.data.markers`): the patient-id rule, the near duplicates, the class balance, the children, the image sizes, the
burned-in stamp."""
from __future__ import annotations

from typing import Any

import pandas as pd

from cxr.data.audit import HASH_BITS


# ---------------------------------------------------------------------------------------------------------------
# The data audit (`cxr.data.audit`)


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


# ---------------------------------------------------------------------------------------------------------------
# The burned-in markers (`cxr.data.markers`)


def describe_markers(finding: dict[str, Any]) -> str:
    """The finding in words, from `marker_finding`."""
    f = finding
    text = (f"The acquisition stamp (bold \"R\" top left, \"KV\" text bottom right) is on "
            f"{f['train_pneumonia_stamped']} of {f['train_pneumonia']} training pneumonia images "
            f"({f['train_bacteria_stamped']} bacterial, {f['train_virus_stamped']} viral) and on "
            f"{f['train_normal_stamped']} of {f['train_normal']} training normals; in the official test on "
            f"{f['test_normal_stamped']} of {f['test_normal']} normals and {f['test_pneumonia_stamped']} of "
            f"{f['test_pneumonia']} pneumonia images.")
    if f["tied_to_label"]:
        text += (" In training the stamp means pneumonia: a model can learn it as a shortcut, and the stamped test "
                 "normals are where it would fail.")
    return text
