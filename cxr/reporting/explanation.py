"""The explanations in words, written from their numbers (`cxr.explain`): how strong the maps of the cases shown
are, the verdicts of the randomisation and faithfulness checks, where the heat lies (per confusion cell, per case
shown, and the metrics document's `explanation` block), the stamp counterfactual.

`cxr.explain` imports Keras; this module imports it only when a map's regions are described (the region names and
the share format come from `cxr.explain.checks`), so that the Markdown of `python -m cxr results` needs no Keras."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr.evaluate.baseline import LUNG_BOX

if TYPE_CHECKING:
    from cxr.explain.checks import Faithfulness


# ---------------------------------------------------------------------------------------------------------------
# The cases shown (`cxr.explain.cases`)


def describe_cases(right: pd.DataFrame, wrong: pd.DataFrame, cams: np.ndarray, scale: float) -> str:
    """Two sentences: how strong the maps of the right and the wrong cases are on the shared scale."""
    size = int(np.asarray(cams).shape[-1])  # maps come at the image's size
    grid = max(1, size // 32)  # the backbones' last feature map is 1/32 of the input

    def strength(frame: pd.DataFrame) -> str:
        if frame.empty:
            return "none"
        peak = np.asarray(cams)[frame.index.to_numpy()].reshape(len(frame), -1).max(axis=1) / scale
        return f"peak {np.median(peak):.2f} of full colour (median of {len(frame)})"

    return (f"On the shared scale, the maps of the most confident right calls reach a {strength(right)}, those of "
            f"the most confident errors a {strength(wrong)}. A map shows where the evidence for the predicted "
            f"class lies at the resolution of the last feature map ({grid} x {grid} at {size} px), not why, and not "
            "the anatomy a radiologist would name.")


# ---------------------------------------------------------------------------------------------------------------
# The checks of the maps (`cxr.explain.checks`)


def describe_randomization(table: pd.DataFrame, passes_below: float = 0.5) -> str:
    """Plain sentences about a `randomization_test` table: where the rank correlation goes, and whether the maps
    depend on the learned weights (every randomised step's mean |Spearman| below `passes_below`)."""
    steps = table[table["step"] > 0]
    if steps.empty:
        return "No randomisation step was run."
    first, last = steps.iloc[0], steps.iloc[-1]
    if int(first["n_images"]) == 0 or not np.isfinite(steps["spearman_mean"]).any():
        return ("The sanity check could not be assessed: every trained map was empty (no positive evidence for the "
                "target class in these images).")
    worst = float(steps["spearman_mean"].abs().max())
    verdict = ("the maps depend on the learned weights (sanity check passed)" if worst < passes_below else
               "the maps partly survive randomisation, so they reflect the input more than what the model learned "
               "(sanity check FAILED)")
    return (f"Mean rank correlation with the trained model's maps: {first['spearman_mean']:.2f} after randomising "
            f"'{first['randomised_to']}' alone, {last['spearman_mean']:.2f} with every weighted layer down to "
            f"'{last['randomised_to']}' randomised (largest |correlation| over the steps: {worst:.2f}, "
            f"{int(first['n_images'])} images): {verdict}.")


def describe_faithfulness(result: Faithfulness) -> str:
    """Plain sentences: heat order vs random order for deletion and insertion, with the per-image win count and a
    paired Wilcoxon signed-rank test (scipy)."""
    from scipy.stats import wilcoxon

    lines = []
    for kind, better, meaning in (("deletion", "lower", "removing the hottest regions first lowers the score faster"),
                                  ("insertion", "higher", "revealing the hottest regions first raises the score faster")):
        h, r = result.auc[f"{kind}_heat"].to_numpy(), result.auc[f"{kind}_random"].to_numpy()
        wins = int(np.sum(h < r) if kind == "deletion" else np.sum(h > r))
        diff = h - r
        p = float(wilcoxon(diff).pvalue) if len(diff) >= 6 and np.any(diff != 0) else float("nan")
        ok = (h.mean() < r.mean()) if kind == "deletion" else (h.mean() > r.mean())
        if not ok:
            verdict = f"NOT supported, {meaning.replace('faster', 'no faster')} than random."
        elif np.isnan(p):
            verdict = f"too few images for a test ({len(h)}; at least 6), though on average {meaning} than random."
        elif p >= 0.05:
            verdict = f"not significant: on average {meaning} than random, but not beyond chance."
        else:
            verdict = f"supported, {meaning} than random."
        test = f"paired Wilcoxon p = {p:.2g}" if np.isfinite(p) else "no test"
        lines.append(f"{kind.capitalize()}: area {h.mean():.3f} in heat order vs {r.mean():.3f} in random order "
                     f"({better} is more faithful); heat order wins for {wins} of {len(h)} images ({test}): "
                     + verdict)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Where the heat lies (`cxr.explain.checks.shortcut_audit`, `case_regions`)


REGION_WORDS = {"lungs": "the lungs", "markers": "the marker corners", "border": "the outer border band"}


CELL_WORDS = {"TP": "true positives", "TN": "true negatives", "FP": "false positives", "FN": "false negatives"}


def describe_audit(audit: pd.DataFrame) -> str:
    """One plain sentence about the "all" row: heat share in the border vs the share a uniform map would have."""
    row = audit[audit["class"] == "all"].iloc[0]
    ratio = row["border_share_mean"] / row["border_area"] if row["border_area"] else float("nan")
    verdict = ("more than" if ratio > 1.1 else "less than" if ratio < 0.9 else "about the same as")
    return (f"Over {int(row['n'])} images, {100 * row['border_share_mean']:.1f}% of the Grad-CAM heat lies in the "
            f"outer border band, which covers {100 * row['border_area']:.0f}% of the image: {verdict} a uniform map; "
            f"{100 * row['outside_body_share_mean']:.1f}% lies outside the central body box "
            f"({100 * row['outside_body_area']:.0f}% of the area); the hottest pixel is in the border for "
            f"{100 * row['peak_in_border_rate']:.1f}% of the images." + _normals_note(audit))


def _where_clause(row, areas: bool) -> str:
    """'61% of a map's heat lies on the lungs (which are 36% of the image), ...' for one audit row."""
    from cxr.explain.checks import REGIONS, _pct  # Keras: imported only when maps are described

    parts = []
    for r in REGIONS:
        text = f"{_pct(row[f'{r}_share_mean'])} on {REGION_WORDS[r]}"
        if areas:
            text += f" ({'which are' if r == 'markers' else 'which is'} {_pct(row[f'{r}_area'])} of the image)"
        parts.append(text)
    parts[0] = parts[0].replace(" on ", " of a map's heat lies on ", 1)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_where(audit: pd.DataFrame) -> str:
    """Per group of a `shortcut_audit` table (each cell, then all maps), where the heat lies, in plain sentences:
    the mean share of each map's positive heat on the lungs, on the marker corners and in the border band, with
    the share of the image each region covers (what a map spreading heat evenly would give) stated in the first
    sentence. The numbers are reported, not judged: heat on a region says where the maps point, not why."""
    from cxr.explain.checks import _pct  # Keras: imported only when maps are described

    lines, stated = [], False  # the areas are stated in the first sentence with numbers
    for _, row in audit.iterrows():
        n, n_empty = int(row["n"]), int(row["n_empty"])
        if row["cell"] == "all":
            kind = "maps"
            who = f"all {n} maps"
        else:
            kind = (CELL_WORDS[row["cell"]] if row["cell"] in CELL_WORDS
                    else f"{row['outcome']}ly classified {row['class']} images")
            who = f"the {n} {kind}" if n != 1 else f"the one {kind[:-1]}"
        if n == 0:
            lines.append(f"There are no {kind}.")
        elif n_empty == n:
            lines.append(f"On {who}, no map has any heat.")
        else:
            empty = f" ({n_empty} map{'s' if n_empty > 1 else ''} with no heat left out)" if n_empty else ""
            lines.append(f"On {who}{empty}, on average {_where_clause(row, areas=not stated)}.")
            stated = True
    row = audit.iloc[0]
    top, bottom, left, right = LUNG_BOX
    return (" ".join(lines) + f" The lungs are the central box of rows {100 * top:.0f}-{100 * bottom:.0f}% and "
            f"columns {100 * left:.0f}-{100 * right:.0f}%, the border band the outer 10% of each side; the band "
            f"holds {_pct(row['markers_in_border'])} of the marker corners, so those two shares overlap. A share "
            "above the region's share of the image means the maps point there more than an even spread would.")


def describe_case_regions(regions: pd.DataFrame) -> str:
    """A caption for a figure of maps: for each image shown (left to right, top to bottom), where its heat lies
    (`case_regions`), with the share of the image each region covers once at the end."""
    from cxr.explain.checks import REGIONS, _pct  # Keras: imported only when maps are described

    parts = []
    for i, (_, row) in enumerate(regions.iterrows(), start=1):
        label = f"{i}."
        if "cell" in row:
            label += f" {row['cell']}"
        if "p" in row:
            label += f" (P = {row['p']:.3f})"
        if row["empty"]:
            parts.append(f"{label}: no heat")
            continue
        parts.append(f"{label}: " + ", ".join(f"{_pct(row[f'{r}_share'])} on {REGION_WORDS[r]}" for r in REGIONS))
    a = regions.attrs
    return ("Where the heat of each map lies (left to right, top to bottom): " + "; ".join(parts) + ". Of the "
            f"image, the lungs cover {_pct(a['lungs_area'])}, the marker corners {_pct(a['markers_area'])} and the "
            f"border band {_pct(a['border_area'])} (an even spread would give these shares).")


def _normals_note(audit: pd.DataFrame) -> str:
    """The caveat of the audit: the correctly classified images of the negative class (normal films called normal,
    whose maps explain NORMAL), where a border or marker shortcut would show most."""
    rows = audit[(audit["class"] != "all") & (audit["outcome"] == "correct")]
    if "cell" in audit and (audit["cell"] == "TN").any():
        rows = audit[audit["cell"] == "TN"]  # the negative class called negative
    if rows.empty or not rows.iloc[0]["n"]:
        return ""
    r = rows.iloc[0]  # classes sort alphabetically: the negative class (NORMAL) first
    return (f" For the correctly classified {r['class']} images (n = {int(r['n'])}), {100 * r['border_share_mean']:.1f}% "
            f"of the heat lies in the border and the hottest pixel is there for {100 * r['peak_in_border_rate']:.1f}%: "
            "where the heat sits on markers or collimation edges, a shortcut is possible; the audit measures it but "
            "cannot rule it out.")


# ---------------------------------------------------------------------------------------------------------------
# The stamp counterfactual and the metrics document's explanation block


def describe_counterfactual(result: dict) -> str:
    """The counterfactual check in words."""
    r = result
    if not r["n"]:
        return "The stamp counterfactual needs images called normal; there were none."
    lo, hi = r["changed_ci"]
    text = (f"With the acquisition stamp burned in, {r['changed']} of {r['n']} images the model had called normal "
            f"were called pneumonia ({r['changed_share']:.1%}, {lo:.1%} to {hi:.1%}); the probability rose by "
            f"{r['mean_rise']:+.3f} on average ({r['mean_rise_ci'][0]:+.3f} to {r['mean_rise_ci'][1]:+.3f}), at most "
            f"{r['max_rise']:+.3f}.")
    if r.get("marker_zones"):
        text += (" The stamp's corner zones are masked in the model's first layer, so a stamp inside them cannot "
                 "move the score: the check confirms the masking, not that the model ignores markings elsewhere.")
    if r["meets_targets"]:
        return text + " The stamp does not move the calls (targets: at most 2% changed, mean rise at most 0.02)."
    return text + (" The model reads the stamp as evidence of pneumonia (targets: at most 2% changed, mean rise "
                   "at most 0.02): a shortcut, not anatomy.")


def where_summary(audit: pd.DataFrame) -> dict[str, Any]:
    """The metrics document's `explanation` block from a `shortcut_audit` table: one short `summary` sentence
    (where the heat of the false positives and of all maps lies, beside the share of the image each region
    covers) and every group's numbers (`groups`: the table as records)."""
    from cxr.explain.checks import REGIONS, _pct  # Keras: imported only when maps are described

    def clause(row: pd.Series) -> str:
        shares = [f"{_pct(row[f'{r}_share_mean'])} on {REGION_WORDS[r]}" for r in REGIONS]
        return ", ".join(shares[:-1]) + " and " + shares[-1]

    rows = {str(r["cell"]): r for _, r in audit.iterrows()}
    parts = []
    for cell, words in (("FP", "on the false positives"), ("all", "over all test maps")):
        row = rows.get(cell)
        if row is not None and int(row["n"]) > int(row["n_empty"]):
            parts.append(f"{words} ({int(row['n'])}) a map's heat lies {clause(row)}")
    first = audit.iloc[0]
    areas = ", ".join(f"{REGION_WORDS[r]} {_pct(first[f'{r}_area'])}" for r in REGIONS)
    summary = ("; ".join(parts) + f" (of the image's area: {areas})." if parts else "")
    return {"summary": summary[:1].upper() + summary[1:], "groups": audit.to_dict(orient="records")}
