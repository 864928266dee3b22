"""The shift checks in words, written from their tables (`cxr.evaluate.shift`): the id blocks, the degradations
and the sharpness reliance on the out-of-fold predictions; the full-resolution originals against their copies and
what separates the two resize paths."""
from __future__ import annotations

import pandas as pd

from cxr.config import TASKS, primary_task
from cxr.evaluate.shift import AGREEMENT_TARGET, SENSITIVITY_GAP_TARGET, resize_summary


def describe_shift(blocks: pd.DataFrame, changes: pd.DataFrame, reliance: pd.DataFrame,
                   class_names: tuple[str, str] | None = None, fold_scheme: str | None = None) -> str:
    """Three sentences from the three checks (`class_names`: of the task checked; None: the primary task's;
    `fold_scheme`: how the out-of-fold predictions were made, "random" or "blocks", None: unsaid)."""
    class_names = TASKS[primary_task()].class_names if class_names is None else class_names
    first = blocks[blocks["part"].str.startswith("1 ")]
    rest = blocks[~blocks["part"].str.startswith("1 ")]
    parts = [f"{r.family}: {r['called pneumonia']} of {r.normals}" for _, r in first.iterrows()]
    text = (f"Training normals whose numbers lie nearest the test's blocks (the lowest third of each family) are "
            f"called pneumonia out of fold {', '.join(parts)} times, against {int(rest['called pneumonia'].sum())} "
            f"of {int(rest['normals'].sum())} for the rest")
    text += {"random": "; these normals were scored by fold models trained on their neighbours in time (random "
                       "folds), so the check cannot tell what a validation on held-out id blocks would show. ",
             "blocks": "; each was scored by a fold model that never saw its block of ids (block folds), so this is "
                       "the drift in time that the training periods show, with no test label. ",
             None: ". "}[fold_scheme]
    text += "; ".join(f"{r.change} changes a normal image's probability by {r['mean delta p']:+.3f} on average "
                      f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({r['to positive']} of {r.images} decisions flip to "
                      f"pneumonia)" for _, r in changes.iterrows())
    text += (" (with a model trained on a resampling path that blurs and downscales, this measures invariance to its "
             "own augmentation, not whether the test normals differ in sharpness). ")
    g = reliance[reliance["statistic"].eq("gradient")]
    text += ("Within each class, the network's score correlates with the mean gradient (sharpness) with Spearman "
             + " and ".join(f"{r.spearman:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] among {class_names[int(r['class'])]}"
                            for _, r in g.iterrows()) + ".")
    return text


def describe_raw_sample(table: pd.DataFrame, threshold: float, ci_level: float = 0.95) -> str:
    """Plain words from `raw_sample_agreement` (and its `resize_summary`): how often the call survives the other
    resize path, sensitivity and specificity on the copies and on the originals, and the two targets of protocol
    v2 stated met or missed."""
    if table.empty:
        return ("No full-resolution originals are available here (`../shared/data/raw-sample/`, "
                "`../shared/data/originals/`), so the resize-path check could not run.")
    summary = resize_summary(table, threshold, ci_level).set_index("measure")
    level = f"{ci_level:.0%}"

    def cell(measure: str) -> str:
        r = summary.loc[measure]
        return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n = {int(r['n'])})"

    worst = table.loc[table["delta"].abs().idxmax()]
    sources = ", ".join(f"{n} from {s}/" for s, n in table["source"].value_counts(sort=False).items()) \
        if "source" in table else ""
    by_class = "; ".join(f"{label}: mean change {g['delta'].mean():+.3f}" for label, g in table.groupby("label"))
    agree = summary.loc["agreement of the calls"]
    gap = summary.loc["sensitivity difference (originals - copies)"]
    text = (f"On {len(table)} full-resolution originals{f' ({sources})' if sources else ''}, each scored by the "
            f"fold model that never saw its child, the call at threshold {threshold:.3f} is the same for the "
            f"original (decoded and resized by this package, as `predict` does) and for its third-party 224-px "
            f"copy in {int(table['agree'].sum())} of {len(table)} (agreement {cell('agreement of the calls')}, "
            f"Wilson {level} interval per image); the largest change of the probability is {worst['delta']:+.3f} "
            f"({worst['path']}); {by_class}. ")
    text += (f"Sensitivity is {cell('sensitivity, copies')} on the copies and {cell('sensitivity, originals')} on "
             f"the originals; specificity {cell('specificity, copies')} and {cell('specificity, originals')}. ")
    text += (f"Protocol v2 targets: agreement at least {AGREEMENT_TARGET:.0%}: "
             f"{'met' if agree['met'] else 'missed'} ({agree['value']:.1%}); sensitivity on the originals within "
             f"{SENSITIVITY_GAP_TARGET:.2f} of the copies': {'met' if gap['met'] else 'missed'} "
             f"(difference {gap['value']:+.3f}).")
    skipped = {k: v for k, v in table.attrs.get("skipped", {}).items() if v}
    if skipped:
        text += " Skipped: " + ", ".join(f"{v} ({k})" for k, v in skipped.items()) + "."
    return text


def describe_resize_diagnosis(diagnosis: pd.DataFrame, cutoff: float = 0.25) -> str:
    """One sentence from `resize_diagnosis` (run with `cutoff`): the medians over the images (original / copy), each
    with the share of images on the same side, in words."""
    m = diagnosis.median()

    def side(column: str, centre: float) -> str:
        higher = m[column] > centre
        share = (diagnosis[column] > centre).mean() if higher else (diagnosis[column] < centre).mean()
        return f"{'higher' if higher else 'lower'} in {share:.0%} of the images"

    return (f"Over {len(diagnosis)} images, against their third-party 224-px copies the originals resized here have "
            f"a mean intensity {m['mean_difference']:+.2f} grey levels from the copy's (median; "
            f"{side('mean_difference', 0)}), a standard deviation {m['std_ratio']:.3f} times the copy's, a mean "
            f"gradient (Sobel, edge strength) {m['sharpness_ratio']:.3f} times ({side('sharpness_ratio', 1)}) and a "
            f"high-frequency energy (above {cutoff:g} cycles per pixel) {m['high_frequency_ratio']:.2f} times the "
            f"copy's ({side('high_frequency_ratio', 1)}).")
