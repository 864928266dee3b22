"""The explanations in words, written from their numbers (`cxr.explain`): how strong the maps of the cases shown
are, the verdicts of the randomisation and faithfulness checks, where the heat lies (per confusion cell, per case
shown, and the metrics document's `explanation` block), the stamp counterfactual.

`cxr.explain` imports Keras; this module never does (it writes shares as `cxr.explain.checks._pct` does, in
`_share`), so that the Markdown of `python -m cxr results` needs no Keras."""
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
    """Two short sentences: how strong the maps of the right and the wrong cases are on the shared scale, and what
    a map shows."""
    size = int(np.asarray(cams).shape[-1])  # maps come at the image's size
    grid = max(1, size // 32)  # the backbones' last feature map is 1/32 of the input

    def strength(frame: pd.DataFrame) -> str:
        if frame.empty:
            return "none"
        peak = np.asarray(cams)[frame.index.to_numpy()].reshape(len(frame), -1).max(axis=1) / scale
        return f"{np.median(peak):.2f} (median of {len(frame)})"

    return (f"On the shared scale (1 = full colour), the right calls' maps peak at {strength(right)}, the errors' "
            f"at {strength(wrong)}. A map shows where the evidence for the predicted class lies, on the last "
            f"feature map's grid ({grid} x {grid} at {size} px), not why.")


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
    verdict = ("the maps depend on the learned weights (passed)" if worst < passes_below else
               "the maps partly survive randomisation: they reflect the input more than what was learned (FAILED)")
    return (f"Rank correlation with the trained maps: {first['spearman_mean']:.2f} with '{first['randomised_to']}' "
            f"randomised, {last['spearman_mean']:.2f} with every layer down to '{last['randomised_to']}' (largest "
            f"|r| {worst:.2f}, {int(first['n_images'])} images): {verdict}.")


def _faithfulness_rows(result: Faithfulness) -> list[dict[str, Any]]:
    """Per kind (deletion, insertion): heat and random areas, the per-image wins, a paired Wilcoxon signed-rank
    test (scipy; at least 6 images) and the verdict word ("supported", "NOT supported", "not significant", "too
    few images for a test")."""
    from scipy.stats import wilcoxon

    rows = []
    for kind, better in (("deletion", "lower"), ("insertion", "higher")):
        h, r = result.auc[f"{kind}_heat"].to_numpy(), result.auc[f"{kind}_random"].to_numpy()
        wins = int(np.sum(h < r) if kind == "deletion" else np.sum(h > r))
        diff = h - r
        p = float(wilcoxon(diff).pvalue) if len(diff) >= 6 and np.any(diff != 0) else float("nan")
        ok = (h.mean() < r.mean()) if kind == "deletion" else (h.mean() > r.mean())
        verdict = ("NOT supported" if not ok else "too few images for a test" if np.isnan(p)
                   else "not significant" if p >= 0.05 else "supported")
        rows.append(dict(kind=kind, better=better, heat=h.mean(), random=r.mean(), wins=wins, n=len(h), p=p,
                         test=f"Wilcoxon p = {p:.2g}" if np.isfinite(p) else "no test", verdict=verdict))
    return rows


def checks_summary(sanity: pd.DataFrame | None, faith: Faithfulness | None, passes_below: float = 0.5) -> str:
    """The verdicts of the randomisation and faithfulness checks in one short clause each (the conclusions'),
    from the same numbers and rules as `describe_randomization` and `describe_faithfulness`."""
    parts = []
    if sanity is not None and len(sanity):
        steps = sanity[sanity["step"] > 0]
        if len(steps) and int(steps.iloc[0]["n_images"]) and np.isfinite(steps["spearman_mean"]).any():
            worst = float(steps["spearman_mean"].abs().max())
            parts.append(f"randomisation {'passed' if worst < passes_below else 'FAILED'} (|r| at most {worst:.2f})")
    if faith is not None:
        parts += [f"{f['kind']} {f['verdict']} ({f['wins']} of {f['n']} images, {f['test'].replace('Wilcoxon ', '')})"
                  for f in _faithfulness_rows(faith)]
    return "; ".join(parts)


def describe_faithfulness(result: Faithfulness) -> str:
    """One short line each for deletion and insertion: heat order vs random order (mean area), the per-image win
    count, a paired Wilcoxon signed-rank test (scipy) and the verdict."""
    meaning = {"deletion": "removing the hottest regions first lowers the score faster",
               "insertion": "revealing the hottest regions first raises the score faster"}
    lines = []
    for f in _faithfulness_rows(result):
        m = meaning[f["kind"]]
        verdict = {"NOT supported": f"NOT supported ({m.replace('faster', 'no faster')} than random).",
                   "too few images for a test": f"too few images for a test ({f['n']}; at least 6), though on "
                                                f"average {m}.",
                   "not significant": "not significant (the right direction, within chance).",
                   "supported": f"supported ({m} than random)."}[f["verdict"]]
        lines.append(f"{f['kind'].capitalize()} ({f['better']} is more faithful): area {f['heat']:.3f} in heat order "
                     f"vs {f['random']:.3f} random, heat order wins {f['wins']} of {f['n']} images ({f['test']}): "
                     + verdict)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Where the heat lies (`cxr.explain.checks.shortcut_audit`, `case_regions`)


REGION_WORDS = {"lungs": "the lungs", "markers": "the marker corners", "border": "the outer border band"}


CELL_WORDS = {"TP": "true positives", "TN": "true negatives", "FP": "false positives", "FN": "false negatives"}


def _share(x: float) -> str:
    """A share in words, as `cxr.explain.checks._pct` writes it (whole percent from 10%, one decimal below), here
    without importing Keras."""
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f}%" if x >= 0.095 else f"{100 * x:.1f}%"


REGION_ORDER = tuple(REGION_WORDS)  # lungs, marker corners, border band: `cxr.explain.checks.REGIONS`'s order
SLASHED = "the lungs/marker corners/outer border band"


def _slashed(row, key: str = "share_mean") -> str:
    """'62%/0.6%/16%': a row's shares on the lungs, the marker corners and the border band, in that order."""
    return "/".join(_share(row[f"{r}_{key}"]) for r in REGION_ORDER)


def _areas(row) -> str:
    return "/".join(_share(row[f"{r}_area"]) for r in REGION_ORDER)


def describe_audit(audit: pd.DataFrame) -> str:
    """One short sentence about the "all" row: heat share in the border vs the share a uniform map would have,
    and the hottest pixel's place; then the caveat for the correctly called negatives (`_normals_note`)."""
    row = audit[audit["class"] == "all"].iloc[0]
    ratio = row["border_share_mean"] / row["border_area"] if row["border_area"] else float("nan")
    verdict = ("more than" if ratio > 1.1 else "less than" if ratio < 0.9 else "about")
    return (f"Over {int(row['n'])} images, {_share(row['border_share_mean'])} of the heat lies in the outer border "
            f"band ({_share(row['border_area'])} of the image: {verdict} an even spread) and "
            f"{_share(row['outside_body_share_mean'])} outside the central body box "
            f"({_share(row['outside_body_area'])}); the hottest pixel is in the border for "
            f"{_share(row['peak_in_border_rate'])}." + _normals_note(audit))


def _group_name(row) -> str:
    n = int(row["n"])
    if row["cell"] == "all":
        return f"all {n} maps"
    kind = (CELL_WORDS[row["cell"]] if row["cell"] in CELL_WORDS
            else f"{row['outcome']}ly classified {row['class']} images")
    return f"{kind} ({n})"


def describe_where(audit: pd.DataFrame) -> str:
    """Per group of a `shortcut_audit` table (each cell, then all maps), where the heat lies: the mean share of a
    map's positive heat on the lungs, the marker corners and the border band, beside the share of the image each
    covers (what an even spread gives); then the groups whose heat lies more on the border band than on the lungs.
    The numbers are reported, not judged: heat on a region says where the maps point, not why."""
    parts, border_first = [], []
    for _, row in audit.iterrows():
        n, n_empty = int(row["n"]), int(row["n_empty"])
        name = _group_name(row)
        if n == 0:
            parts.append(f"no {name.split(' (')[0]}")
        elif n_empty == n:
            parts.append(f"{name}: no heat")
        else:
            empty = f", {n_empty} without heat left out" if n_empty else ""
            parts.append(f"{name[:-1]}{empty}) {_slashed(row)}" if name.endswith(")") else f"{name} {_slashed(row)}")
            if row["cell"] != "all" and row["border_share_mean"] > row["lungs_share_mean"]:
                border_first.append(name.split(" (")[0])
    row = audit.iloc[0]
    top, bottom, left, right = LUNG_BOX
    text = (f"Mean share of a map's heat on {SLASHED} (of the image's area: {_areas(row)}): " + "; ".join(parts)
            + ".")
    if border_first:
        text += f" On the {' and the '.join(border_first)}, more heat lies on the border band than on the lungs."
    return text + (f" Lungs: the central box (rows {100 * top:.0f}-{100 * bottom:.0f}%, columns "
                   f"{100 * left:.0f}-{100 * right:.0f}%); border band: the outer 10%, which holds "
                   f"{_share(row['markers_in_border'])} of the marker corners (those shares overlap).")


def describe_case_regions(regions: pd.DataFrame) -> str:
    """A caption for a figure of maps: for each image shown (left to right, top to bottom), its heat's shares on
    the lungs, the marker corners and the border band (`case_regions`), the image's shares stated once first."""
    parts = []
    for i, (_, row) in enumerate(regions.iterrows(), start=1):
        label = f"{i}."
        if "cell" in row:
            label += f" {row['cell']}"
        if "p" in row:
            label += f" (P={row['p']:.3f})"
        parts.append(f"{label} no heat" if row["empty"] else f"{label} {_slashed(row, 'share')}")
    a = regions.attrs
    areas = "/".join(_share(a[f"{r}_area"]) for r in REGION_ORDER)
    return (f"Heat of each map (left to right, top to bottom) on {SLASHED} (an even spread: {areas}): "
            + "; ".join(parts) + ".")


def _normals_note(audit: pd.DataFrame) -> str:
    """The caveat of the audit: the correctly classified images of the negative class (normal films called normal,
    whose maps explain NORMAL), where a border or marker shortcut would show most."""
    rows = audit[(audit["class"] != "all") & (audit["outcome"] == "correct")]
    if "cell" in audit and (audit["cell"] == "TN").any():
        rows = audit[audit["cell"] == "TN"]  # the negative class called negative
    if rows.empty or not rows.iloc[0]["n"]:
        return ""
    r = rows.iloc[0]  # classes sort alphabetically: the negative class (NORMAL) first
    return (f" On the correct {r['class']} calls (n = {int(r['n'])}) {_share(r['border_share_mean'])} lies in the "
            f"border, the hottest pixel there for {_share(r['peak_in_border_rate'])}: a marker or edge shortcut is "
            "possible; the audit measures it, it cannot rule it out.")


# ---------------------------------------------------------------------------------------------------------------
# The stamp counterfactual and the metrics document's explanation block


def describe_counterfactual(result: dict) -> str:
    """The counterfactual check in words."""
    r = result
    if not r["n"]:
        return "The stamp counterfactual needs images called normal; there were none."
    lo, hi = r["changed_ci"]
    text = (f"Pasting the acquisition stamp onto {r['n']} images called normal turned {r['changed']} into pneumonia "
            f"calls ({r['changed_share']:.1%}, {lo:.1%} to {hi:.1%}); mean rise of the probability "
            f"{r['mean_rise']:+.3f} ({r['mean_rise_ci'][0]:+.3f} to {r['mean_rise_ci'][1]:+.3f}), at most "
            f"{r['max_rise']:+.3f}.")
    if r.get("marker_zones"):
        text += (" Its corner zones are masked in the model's first layer, so this confirms the masking, not that "
                 "markings elsewhere are ignored.")
    targets = "(targets: at most 2% changed, mean rise at most 0.02)"
    if r["meets_targets"]:
        return text + f" The stamp does not move the calls {targets}."
    return text + f" The model reads the stamp as evidence of pneumonia {targets}: a shortcut, not anatomy."


def heat_summary(groups: list[dict[str, Any]]) -> str:
    """The short sentence of the metrics document's `explanation` block, from its `groups` (the `shortcut_audit`
    table as records): where the heat of the false positives, the correct normals and all maps lies, beside the
    image's areas, and what that says (`_heat_reading`).
    Keras-free, so `headline_findings` can write it from a committed document."""
    rows = {str(r["cell"]): r for r in groups}
    parts = [f"{words} ({int(row['n'])}) {_slashed(row)}"
             for cell, words in (("FP", "false positives"), ("TN", "correct normals"), ("all", "all maps"))
             if (row := rows.get(cell)) is not None and int(row["n"]) > int(row["n_empty"])]
    if not parts:
        return ""
    return (f"mean heat on the lungs/marker corners/border band (image area {_areas(groups[0])}): " + ", ".join(parts)
            + "; " + _heat_reading(rows) + ".")


def _heat_reading(rows: dict[str, Any]) -> str:
    """Where the false positives' heat lies (all maps' where there is no false positive), against an even spread,
    in words, and what such a share cannot show."""
    has_fp = "FP" in rows and int(rows["FP"]["n"]) > int(rows["FP"]["n_empty"])
    cell, whose = ("FP", "the false positives'") if has_fp else ("all", "the maps'")
    r = rows[cell]
    lungs, lungs_area = float(r["lungs_share_mean"]), float(r["lungs_area"])
    marker, marker_area = float(r["markers_share_mean"]), float(r["markers_area"])
    where = ("mostly on the lungs" if lungs > 0.5 else "on the lungs above an even spread"
             if lungs > lungs_area else "on the lungs no more than an even spread")
    stamp = ("below an even spread on the marker corners" if marker < marker_area else
             "above an even spread on the marker corners (a sign of the stamp shortcut)")
    return f"{whose} heat lies {where}, {stamp}: where, not why (a shortcut inside the lungs is not ruled out)"


def where_summary(audit: pd.DataFrame) -> dict[str, Any]:
    """The metrics document's `explanation` block from a `shortcut_audit` table: one short `summary` sentence
    (`heat_summary`: where the heat of the false positives and of all maps lies, beside the share of the image
    each region covers) and every group's numbers (`groups`: the table as records)."""
    groups = audit.to_dict(orient="records")
    summary = heat_summary(groups)
    return {"summary": summary[:1].upper() + summary[1:], "groups": groups}
