"""The evaluation in words, written from its numbers (`cxr.evaluate`): the operating point's stability and its
own uncertainty, calibration, PPV/NPV and net benefit, the errors, the trivial baseline, the test-access ledger, a
task's test report and the comparison with the previous run and the literature. Each function reads what the
numbers function returns (a table, a dict, a report block) and returns sentences; none computes a new number that a
result holds."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxr.config import PRIMARY_TASK, primary_task, task as get_task
from cxr.evaluate.baseline import STATISTIC_LABELS
from cxr.evaluate.document import earlier_runs, fmt
from cxr.evaluate.ledger import _select, read_ledger
from cxr.evaluate.metrics import METRIC_LABELS
from cxr.evaluate.threshold import stability_summary


# ---------------------------------------------------------------------------------------------------------------
# The operating point (`cxr.evaluate.threshold`, `cxr.evaluate.uncertainty`)


def describe_stability(table: pd.DataFrame) -> str:
    """One sentence per policy from `stability`: how far the threshold and the validation metrics move."""
    s = stability_summary(table)
    n = table["resample"].nunique()
    parts = [f"{name}: threshold median {r.threshold_median:.3f} (IQR {r.threshold_q25:.3f}-{r.threshold_q75:.3f}, "
             f"SD {r.logit_sd:.2f} in logit), out-of-fold sensitivity {r.sensitivity_low:.3f}-{r.sensitivity_high:.3f} "
             f"and specificity {r.specificity_low:.3f}-{r.specificity_high:.3f} across resamples"
             for name, r in s.iterrows()]
    return (f"Over {n} bootstrap resamples (of children) of the out-of-fold predictions, " + "; ".join(parts)
            + ".")


def describe_threshold_uncertainty(result: dict[str, Any]) -> str:
    """Two sentences from `threshold_uncertainty`: how far the re-chosen threshold moved, and how much wider the
    sensitivity and specificity intervals are once that is counted."""
    iv = result["intervals"]
    level = f"{result['ci_level']:.0%}"
    t = iv.loc["threshold"]
    parts = [f"{m} {iv.loc[m, 'value']:.3f} [{iv.loc[m, 'ci_low']:.3f}, {iv.loc[m, 'ci_high']:.3f}] against "
             f"[{iv.loc[m, 'conditional_ci_low']:.3f}, {iv.loc[m, 'conditional_ci_high']:.3f}] at the fixed "
             f"threshold ({iv.loc[m, 'width_ratio']:.2g} times as wide)" for m in ("sensitivity", "specificity")]
    return (f"Re-choosing the threshold on {result['n_bootstrap']} bootstrap resamples of the selection children "
            f"moved it within {t.ci_low:.3f}-{t.ci_high:.3f} ({level} of resamples; {t.value:.3f} on all of "
            f"the selection data). Counting that movement, test " + "; ".join(parts) + ". The headline intervals hold "
            "the threshold fixed; these show how much of the uncertainty comes from where the threshold fell.")


# ---------------------------------------------------------------------------------------------------------------
# Calibration (`cxr.evaluate.calibration`)


def _finite(x: Any) -> bool:
    return x is not None and bool(np.isfinite(x))


def _with_ci(block: dict[str, Any], when: str, key: str) -> str:
    value = block[when][key]
    if not _finite(value):
        return "n/a"
    ci = block.get("ci", {}).get(when, {}).get(key, {})
    lo, hi = ci.get("ci_low"), ci.get("ci_high")
    if not (_finite(lo) and _finite(hi)):
        return f"{value:.2f}"
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def _slope_intercept_reading(block: dict[str, Any], when: str) -> str:
    """What the slope and intercept of `when` ("before"/"after") say, from their intervals when present."""
    parts = []
    for key, ideal, below, above in (("slope", 1.0, "over-confident (predictions too extreme)",
                                      "under-confident (predictions too timid)"),
                                     ("intercept", 0.0, "predicted risks too high on average",
                                      "predicted risks too low on average")):
        value = block[when][key]
        ci = block.get("ci", {}).get(when, {}).get(key, {})
        lo, hi = ci.get("ci_low"), ci.get("ci_high")
        if not _finite(value):
            verdict = "undefined"
        elif _finite(lo) and _finite(hi):
            verdict = below if hi < ideal else above if lo > ideal else f"consistent with {ideal:g}"
        else:
            verdict = below if value < ideal else above
        parts.append(f"{key}: {verdict}")
    return "; ".join(parts)


def describe_calibration(block: dict[str, Any], tolerance: float = 0.002) -> str:
    """Sentences from a `calibrate_and_report` block: what the validation-fitted calibration did on test, read from
    the proper scores (log-loss and Brier score), the calibration slope and intercept (with their intervals when
    the block has them) and, last, the binned expected calibration error.

    The verdict: "improved" when log-loss and Brier score both fall by more than `tolerance`, "worsened" when both
    rise by more, "barely changed" when neither moves by more, "mixed" otherwise.
    """
    test = block["test"]
    before, after = test["before"], test["after"]
    params = (f"T = {block['temperature']:.2f}" if block["method"] == "temperature"
              else f"a = {block['a']:.2f}, b = {block['b']:.2f}")
    moves = [after[k] - before[k] for k in ("log_loss", "brier")]
    verdict = ("improved" if all(m < -tolerance for m in moves) else
               "worsened" if all(m > tolerance for m in moves) else
               "barely changed" if all(abs(m) <= tolerance for m in moves) else "mixed")
    text = (f"{block['method'].capitalize()} scaling fitted on the out-of-fold predictions ({params}) {verdict} test "
            f"calibration: "
            f"log-loss {before['log_loss']:.3f} -> {after['log_loss']:.3f}, Brier score "
            f"{before['brier']:.3f} -> {after['brier']:.3f}, ")
    if "slope" in before:  # blocks written before slope and intercept were reported lack them
        text += (f"calibration slope {_with_ci(test, 'before', 'slope')} -> {_with_ci(test, 'after', 'slope')} "
                 f"(ideal 1), calibration intercept {_with_ci(test, 'before', 'intercept')} -> "
                 f"{_with_ci(test, 'after', 'intercept')} (ideal 0); ")
    text += f"expected calibration error {before['ece']:.3f} -> {after['ece']:.3f}."
    if "slope" in after:
        text += f" After calibration, {_slope_intercept_reading(test, 'after')}."
    if block["method"] == "temperature":
        text += (" Temperature scaling keeps the ranking and the 0.5 point, so it cannot remove a shift in "
                 "prevalence or acquisition between the training children and the test split; what remains is that shift.")
    return text


# ---------------------------------------------------------------------------------------------------------------
# PPV/NPV and net benefit (`cxr.evaluate.clinical`)


def _runs(mask: np.ndarray, x: np.ndarray) -> list[tuple[float, float]]:
    """The [first, last] x of each run of True in mask."""
    edges = np.diff(np.r_[0, mask.astype(int), 0])
    return [(float(x[a]), float(x[b - 1])) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def describe_prevalence(curves: pd.DataFrame, at: Sequence[float] = (0.1, 0.625), ci_level: float = 0.95) -> str:
    """Two sentences from `prevalence_curves`: PPV and NPV (with intervals) at the prevalences `at` (nearest rows),
    and what to conclude from them."""
    parts = []
    for pi in at:
        r = curves.iloc[int(np.argmin(np.abs(curves["prevalence"].to_numpy() - pi)))]
        parts.append(f"at {r.prevalence:.0%} prevalence PPV {r.ppv:.2f} ({r.ppv_low:.2f}-{r.ppv_high:.2f}) and "
                     f"NPV {r.npv:.2f} ({r.npv_low:.2f}-{r.npv_high:.2f})")
    low = curves.iloc[int(np.argmin(curves["prevalence"].to_numpy()))]
    return (f"With the test sensitivity and specificity held fixed, {'; '.join(parts)} ({ci_level:.0%} intervals "
            f"from the bootstrap draws). At {low.prevalence:.0%} prevalence a positive call would be right "
            f"{low.ppv:.0%} of the time and a negative one {low.npv:.0%} of the time; this assumes the sensitivity "
            "and specificity carry over to that population, which this test set cannot show.")


def describe_decision_curve(curve: pd.DataFrame) -> str:
    """One or two sentences from `decision_curve`/`operating_point_curve`: where the model beats both treating
    everyone and no one, and what that does not show."""
    pt = curve["threshold"].to_numpy()
    better = (curve["model"] > curve["treat_all"]) & (curve["model"] > curve["treat_none"])
    runs = _runs(better.to_numpy(), pt)
    if not runs:
        return ("The model does not beat both treating everyone and treating no one at any threshold probability "
                f"between {pt.min():.2f} and {pt.max():.2f}.")
    where = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in runs)
    text = (f"The model has a higher net benefit than treating everyone and than treating no one for threshold "
            f"probabilities {where}, i.e. for readers willing to accept between {(1 - runs[-1][1]) / runs[-1][1]:.2g} "
            f"and {(1 - runs[0][0]) / runs[0][0]:.2g} false positives for each true positive found")
    if "model_low" in curve:
        sure = _runs(((curve["model_low"] > curve["treat_all"]) & (curve["model_low"] > 0)).to_numpy(), pt)
        text += ("; the lower interval bound also beats both for " + (", ".join(f"{a:.2f}-{b:.2f}" for a, b in sure)
                                                                      if sure else "no threshold"))
    else:
        text += "; the model's probabilities are read as risks here, so this holds only if they are calibrated"
    return text + (". Net benefit is computed at one prevalence; it does not show benefit in a population with "
                   "another prevalence or case mix.")


def describe_net_benefit_table(table: pd.DataFrame) -> str:
    """Sentences from `net_benefit_table`: per prevalence, the threshold probabilities at which the operating point's
    lower interval bound beats both treating everyone and treating no one; then what the table does not show."""
    parts = []
    for (pi, kind), curve in table.groupby(["prevalence", "population"], sort=False):
        pt = curve["threshold"].to_numpy()
        sure = _runs(((curve["model_low"] > curve["treat_all"]) & (curve["model_low"] > 0)).to_numpy(), pt)
        name = f"{pi:.0%} ({'the test set' if kind == 'test' else 'assumed'})"
        parts.append(f"at {name} for " + (", ".join(f"{a:.2f}-{b:.2f}" for a, b in sure) if sure
                                          else "no threshold probability"))
    return ("Net benefit of the chosen operating point (a fixed yes/no call, not a risk score) across prevalences, "
            "from the bootstrap draws of test sensitivity and specificity: its lower interval bound beats both "
            "treating every child and treating none " + "; ".join(parts) + ". "
            "This assumes the test sensitivity and specificity carry over unchanged to a population with that "
            "prevalence, which holds only if its case mix and images resemble the test set's; which threshold "
            "probability applies is the clinician's choice (how many false alarms one found pneumonia is worth), "
            "so the table shows a range rather than one answer; and it is a re-weighting of the same test set, "
            "not an external validation.")


# ---------------------------------------------------------------------------------------------------------------
# The errors (`cxr.evaluate.predictions`)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "n/a"


def _count(n: Any, noun: str) -> str:
    return f"{int(n)} {noun}{'' if int(n) == 1 else 's'}"


def _rate_text(row: pd.Series) -> str:
    lo, hi = _pct(row["ci_low"]).rstrip("%"), _pct(row["ci_high"])
    return f"{_pct(row['rate'])} (95% CI {lo}-{hi}, n = {int(row['n'])})"


def _spread_text(table: pd.DataFrame, min_n: int = 10, kinds: bool = False) -> str | None:
    """'from a (group) to b (group) (the 95% intervals overlap)', or None with fewer than 2 groups of min_n.
    With `kinds`, the split of the highest group's errors into false positives and negatives is added (size and
    aspect bins differ in their mix of classes, so a high rate can come from either kind)."""
    table = table[table["n"] >= min_n]
    if len(table) < 2:
        return None
    low, high = table["rate"].idxmin(), table["rate"].idxmax()
    overlap = table.loc[high, "ci_low"] <= table.loc[low, "ci_high"]
    mix = ""
    if kinds:
        row = table.loc[high]
        mix = (f", whose errors are {_count(row['false_positives'], 'false positive')} and "
               f"{_count(row['false_negatives'], 'false negative')}")
    return (f"from {_rate_text(table.loc[low])} for {low} to {_rate_text(table.loc[high])} for {high}{mix} "
            f"(the 95% intervals {'overlap' if overlap else 'do not overlap'})")


def describe_errors(analysis: dict[str, pd.DataFrame], min_n: int = 10) -> str:
    """Two or three sentences on the errors, written from the numbers of `error_analysis`: how many and of which
    kind (false positives or negatives), the false-positive rate by file-name family among the negatives, and the
    spread over original sizes and aspect ratios. When false positives are the larger part of the errors, sizes
    and aspects are compared by their false-positive rate among negatives (free of the class mix of the bins);
    otherwise by their error rate. Bins with fewer than `min_n` images are left out of the comparison."""
    overall = analysis["overall"].iloc[0]
    by_class = analysis["by_class"]
    n_err, fp, fn = int(overall["errors"]), int(overall["false_positives"]), int(overall["false_negatives"])
    if n_err == 0:
        return f"None of the {int(overall['n'])} images was misclassified."
    class_rates = "; ".join(f"{int(r['errors'])} of {int(r['n'])} {name} images wrong, {_pct(r['rate'])}"
                            for name, r in by_class.iterrows())
    main = "false positives" if fp > fn else "false negatives" if fn > fp else "false positives and negatives alike"
    sentences = [f"{n_err} of {int(overall['n'])} images were misclassified, {_rate_text(overall)}: "
                 f"{_count(fp, 'false positive')} and {_count(fn, 'false negative')}, so {main} drive the errors "
                 f"({class_rates})."]
    fpr = analysis.get("fpr_by_family")
    if fpr is not None and len(fpr) >= 2:  # a single family among the negatives has nothing to compare
        sentences.append(f"Among the negatives, the false-positive rate by file-name family ranged "
                         f"{_spread_text(fpr, min_n=1)}.")
    parts = []
    sizes = analysis.get("by_size")
    if sizes is not None and len(sizes) == 1:
        parts.append(f"every image has the same stored size ({sizes.index[0]} px), so original size and aspect "
                     f"ratio cannot be examined on this copy of the data")
    elif sizes is not None:
        on_fp = fp > fn and "fpr_by_size" in analysis
        if on_fp:  # "among the negatives" was said already when the families were compared
            tables = "fpr_by"
            prefix = "the false-positive rate" if len(sentences) > 1 else "among the negatives, the false-positive rate"
        else:
            tables, prefix = "by", "the error rate"
        for key, what in (("size", "original long side (px)"), ("aspect", "aspect ratio (width/height)")):
            table = analysis.get(f"{tables}_{key}")
            spread = _spread_text(table, min_n, kinds=not on_fp) if table is not None else None
            if spread:
                parts.append(f"by {what} it ranged {spread}" if parts else f"{prefix} by {what} ranged {spread}")
    if parts:
        text = "; ".join(parts)
        sentences.append(text[0].upper() + text[1:] + ".")
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------------------------
# The trivial baseline (`cxr.evaluate.baseline`) and the test-access ledger (`cxr.evaluate.ledger`)


def describe_baseline(oof_auroc: float, per_statistic: pd.Series, test_auroc: float | None = None,
                      task: str | None = None) -> str:
    """Two sentences: how far the trivial baseline gets, and which statistic carries it (`task`: the task the
    baseline was fitted on; None: the primary task). With `test_auroc`, the reading of its test score only (the
    out-of-fold one said before), one sentence."""
    if test_auroc is not None:
        return (f"The trivial baseline reaches AUROC {test_auroc:.3f} on the official test split "
                f"(scored once in this run), against {oof_auroc:.3f} out of fold: much of the task is easy without "
                "reading a finding, so a high AUROC alone does not show that a network reads the lungs.")
    negative, positive = get_task(primary_task() if task is None else task).class_names
    top = per_statistic.sort_values(ascending=False)
    text = (f"Six whole-image statistics, none of them a radiologist's reading, separate {positive.lower()} from "
            f"{negative.lower()} with an "
            f"out-of-fold AUROC of {oof_auroc:.3f} on the training children (logistic regression, the study's folds); "
            f"alone, "
            f"{STATISTIC_LABELS[top.index[0]]} reaches {top.iloc[0]:.3f} and {STATISTIC_LABELS[top.index[1]]} "
            f"{top.iloc[1]:.3f}.")
    return text + (" They are not free of anatomy (the mean gradient reads edge contrast, which is strongest in the "
                   "lung fields and which opacification lowers), but they read no finding: much of the task is easy "
                   "without one, so a high AUROC alone does not show that the network reads the lungs.")


def describe_ledger(path: str | Path, task: str | None = None, config_hash: str | None = None) -> str:
    """One or two sentences for a report: "The test split of this run was scored N times (...) ..."."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped count is said in the text
        frame = read_ledger(path)
    skipped = frame.attrs.get("skipped_lines", 0)
    frame = _select(frame, task, config_hash, "test")
    what = "The test split of this run" + (f" ({task})" if task else "")
    if frame.empty:
        text = f"{what} has not been scored (no entry in its test-access ledger)."
    else:
        n = len(frame)
        per_task = ", ".join(f"{t}: {k}" for t, k in frame["task"].value_counts().sort_index().items())
        commits = frame["commit"].dropna()
        dirty = int(commits.str.endswith("-dirty").sum())
        first, last = frame["time"].min(), frame["time"].max()
        when = (f"on {first:%Y-%m-%d %H:%M} UTC" if n == 1 else
                f"between {first:%Y-%m-%d %H:%M} and {last:%Y-%m-%d %H:%M} UTC")
        text = (f"{what} was scored {n} time{'s' if n != 1 else ''} ({per_task}) {when}, under "
                f"{frame['config_hash'].nunique()} configuration(s) and {commits.nunique()} git commit(s)")
        if dirty:
            text += f"; {dirty} of the scorings ran on a work tree with uncommitted changes"
            listed = [p for p in frame.loc[commits.index[commits.str.endswith("-dirty")], "dirty_paths"]
                      if isinstance(p, list)] if "dirty_paths" in frame else []
            if len(listed) == dirty:  # every dirty scoring says which files differed
                paths = sorted({q for p in listed for q in p})
                text += (" to notebook.ipynb only (the notebook being executed in place)" if paths == ["notebook.ipynb"]
                         else f" to {', '.join(paths[:5])}" + (f" and {len(paths) - 5} more file(s)"
                                                               if len(paths) > 5 else ""))
        if len(commits) < n:
            text += f"; {n - len(commits)} outside a git checkout"
        text += "."
    if skipped:
        text += f" {skipped} unreadable ledger line(s) (torn by a crash) were not counted."
    return text


# ---------------------------------------------------------------------------------------------------------------
# A task's test report and the comparison (`cxr.evaluate.document`)


GAP_WHY = {  # why the out-of-fold AUROC did not foresee the test's, per fold scheme (`Config.fold_scheme`)
    "random": ("The official test is made of blocks of file ids (periods of acquisition) that the random folds mix, "
               "and the acquisition stamp is spread differently there, so neither figure foresees the other"),
    "blocks": ("The block folds hold out periods of acquisition, as the official test does, and still did not "
               "foresee the gap: the test's periods differ from every training period in more than time (the "
               "acquisition stamp, for one, is spread differently there)"),
    None: "The out-of-fold figure did not foresee the test's",
}


def describe_report(task: dict[str, Any], fold_scheme: str | None = None) -> str:
    """What a task's test results say, from its report: the headline, the operating point's own uncertainty, the
    per-child view and where the errors are. `fold_scheme` ("random", "blocks"; None: unsaid) is how the
    out-of-fold predictions were made, which decides the sentence on why they did not foresee the test."""
    at = task["at_threshold"]
    parts = [f"At threshold {task['threshold']:.3f}: sensitivity {fmt(at['sensitivity'])}, specificity "
             f"{fmt(at['specificity'])}, AUROC {fmt(at['auroc'])}."]
    nested = task.get("threshold_uncertainty", {}).get("intervals", {})
    if nested:
        t, s, c = nested["threshold"], nested["specificity"], nested["sensitivity"]
        parts.append(f"Re-choosing the threshold on every resample of the out-of-fold predictions moves it within "
                     f"{t['ci_low']:.3f}-{t['ci_high']:.3f}; with that movement counted, specificity's interval is "
                     f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}] and sensitivity's [{c['ci_low']:.3f}, "
                     f"{c['ci_high']:.3f}] (the fixed-threshold intervals ignore it).")
    child = task.get("per_child")
    if child:
        ca = child["at_threshold"]
        parts.append(f"Per child ({child['n']} children): sensitivity {fmt(ca['sensitivity'])}, specificity "
                     f"{fmt(ca['specificity'])}.")
    cm = task["confusion_matrix"]
    parts.append(f"Of the {cm[0][1] + cm[1][0]} errors, {cm[0][1]} are false positives and {cm[1][0]} false "
                 "negatives.")
    oof = task.get("selection", {}).get("oof", {})
    if oof.get("auroc") is not None:
        gap = at["auroc"]["value"] - oof["auroc"]
        parts.append(f"Out of fold, on the training children, the AUROC was {oof['auroc']:.3f}; on test it is "
                     f"{at['auroc']['value']:.3f}"
                     + ("." if abs(gap) < 0.02 else
                        f" ({gap:+.3f}). {GAP_WHY[fold_scheme]}; neither is an estimate for another hospital."))
    return " ".join(parts)


def describe_comparison(doc: dict[str, Any], task: str = PRIMARY_TASK) -> str:
    """Why the comparison table's rows are not a leaderboard, and how this run is compared with the previous
    committed one (paired, on the same images; not by overlapping intervals)."""
    if doc["tasks"].get(task) is None:
        return ""
    runs = earlier_runs(doc)
    text = ("The rows are not a leaderboard: their protocols and operating points differ (this study's threshold "
            "comes from its out-of-fold predictions, the others use 0.5 or do not say; Kermany et al. describe no "
            "validation set apart from the test partition; the MedMNIST rows are one benchmark model each, on "
            "PneumoniaMNIST at 224 px center-cropped and at 28 px).")
    if runs:
        paired = ("the next paragraph, from both runs' per-image predictions" if doc.get("previous_run") else
                  "it needs both runs' per-image predictions, and only runs from protocol v2 on keep them")
        text += (f" The previous run (protocol v{runs[0]['protocol_version']}) scored the same test images, so the "
                 "comparison that counts is paired (McNemar's test on the calls, a patient-clustered paired AUROC "
                 f"difference: {paired}); overlapping or separate intervals decide nothing either way.")
    return text
