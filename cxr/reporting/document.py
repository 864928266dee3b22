"""The Markdown written from a metrics document (never typed by hand): the results blocks of README.md,
doc/results.md and data/README.md (`markdown_results`, `markdown_data`), the first screen of README.md and of the
notebook (`headline_markdown`, `headline_findings`, `calibration_warning`), and the writer of the notebook's marked
cells (`update_notebook`). The numbers and tables come from `cxr.evaluate.document`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.config import PRIMARY_TASK, TASKS
from cxr.evaluate.document import TEST_ACCESS, comparison_table, development_access, fmt
from cxr.evaluate.metrics import METRIC_LABELS, METRICS
from cxr.reporting.data import describe_near_duplicates, describe_patient_ids


# ---------------------------------------------------------------------------------------------------------------
# Markdown for README.md, doc/results.md and data/README.md (written from metrics.json, never typed by hand)


TASK_TITLES = {name: t.title for name, t in TASKS.items()}  # from the task table


def development_access_sentence(doc: dict[str, Any], path: Path = TEST_ACCESS) -> str:
    """What the test split is, in one sentence: a development test set, with its count of earlier scorings and of
    rules changed after a test number was seen, and how often this run scored it (its ledger)."""
    history = development_access(path)
    run = doc.get("test_ledger", {}).get("scorings")
    this = f"; this run scored it {run} time{'s' if run != 1 else ''} (its ledger)" if run is not None else ""
    if not history:
        return f"The official test split{this}."
    return (f"The official test split is a development test set: it was scored {history['development_scorings']} "
            f"times during development before this run, and {history.get('rules_changed_after_test', 'some')} "
            f"rules were changed after a test number was seen (`doc/test_access.json`){this}.")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _intervals_md(t: dict[str, Any]) -> str:
    """A task's headline metrics with every interval: patient-level (its method), image-level, and with the
    threshold re-chosen on every resample of the out-of-fold predictions."""
    nested = t.get("threshold_uncertainty", {}).get("intervals", {})
    rows = []
    for m in ("auroc", "accuracy", "sensitivity", "specificity", "precision"):
        v = t["at_threshold"][m]
        n = nested.get(m)
        rows.append([METRIC_LABELS[m], fmt(v),
                     f"[{v['image_ci_low']:.3f}, {v['image_ci_high']:.3f}]" if v.get("image_ci_low") is not None else "",
                     f"[{n['ci_low']:.3f}, {n['ci_high']:.3f}]" if n and n.get("ci_low") is not None else "",
                     t.get("ci_methods", {}).get(m, "")])
    return _md_table(["metric", "value [patient-level 95% CI]", "image-level 95% CI",
                      "95% CI with the threshold re-chosen", "interval method"], rows)


def _child_md(t: dict[str, Any]) -> str:
    c = t["per_child"]
    rows = [[METRIC_LABELS[m], fmt(t["at_threshold"][m]), fmt(c["at_threshold"][m])]
            for m in ("auroc", "sensitivity", "specificity", "accuracy")]
    return _md_table(["metric", f"per image (n = {t['n']})", f"per child (n = {c['n']})"], rows)


def _calibration_md(cal: dict[str, Any]) -> str:
    test, ci = cal["test"], cal["test"].get("ci", {})

    def cell(when: str, key: str) -> str:
        value = test[when].get(key)
        if value is None:
            return "n/a"
        bounds = ci.get(when, {}).get(key, {})
        lo, hi = bounds.get("ci_low"), bounds.get("ci_high")
        return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")

    rows = [[label, cell("before", key), cell("after", key)] for key, label in
            (("log_loss", "log-loss"), ("brier", "Brier score"), ("slope", "calibration slope (ideal 1)"),
             ("intercept", "calibration intercept (ideal 0)"), ("ece", "expected calibration error (10 bins)"))]
    return _md_table(["on test", "before calibration", f"after {cal['method']} scaling"], rows)


def _resize_md(rows: list[dict[str, Any]], threshold: float, summary: list[dict[str, Any]] | None = None) -> str:
    if not rows:
        return "No full-resolution originals were available to this run."
    frame = pd.DataFrame(rows)
    agree = int(frame["agree"].sum())
    text = (f"The same call at threshold {threshold:.3f} for {agree} of {len(frame)} originals; largest change "
            f"{frame['delta'].abs().max():.3f}. Each image scored by the fold model that never saw its child.")
    if summary:
        def num(v: Any) -> str:
            if isinstance(v, str):
                return v
            return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

        body = _md_table(["measure", "n", "value", "95% interval", "target", "met"],
                         [[str(r["measure"]), str(r["n"]), num(r["value"]),
                           f"[{num(r['ci_low'])}, {num(r['ci_high'])}]" if num(r.get("ci_low")) else "",
                           num(r.get("target")), {True: "yes", False: "NO"}.get(r.get("met"), "")] for r in summary])
        return text + "\n\n" + body
    body = _md_table(["image", "fold", "p (224-px copy)", "p (original, resized here)", "change", "same call"],
                     [[r["path"], str(r["fold"]), f"{r['p_copy']:.3f}", f"{r['p_original']:.3f}",
                       f"{r['delta']:+.3f}", "yes" if r["agree"] else "NO"] for r in rows])
    return text + "\n\n" + body


def markdown_results(doc: dict[str, Any], source: str = "doc/metrics.json", headline: bool = False) -> str:
    """The results as Markdown, written from a metrics document: each task's test metrics with every interval (at
    its threshold and at 0.5), the per-child view, calibration, the trivial baseline, the resize check, the
    test-access ledger, and the comparison with the previous run and the literature, each with its protocol.
    `headline`: the comparison table and one line per other task only (for the README)."""
    p = doc.get("protocol", {})
    parts = [
        f"{development_access_sentence(doc)} Every choice of this run was made on the out-of-fold predictions of the "
        f"training children ({p.get('n_folds', '?')}-fold cross-validation; threshold policy "
        f"{p.get('threshold_policy', '?')}"
        + (f", target sensitivity {p['target_sensitivity']}" if p.get("target_sensitivity") else "")
        + f"); the model is the {p.get('final_model', 'fold ensemble')}. {p.get('ci_level', 0.95):.0%} patient-level "
        f"intervals from {p.get('n_bootstrap', '?')} bootstrap resamples of children (the method per metric is "
        f"named in `metrics.json`). Backbone {p.get('backbone', '?')} ({p.get('weights', '?')}), "
        f"{p.get('image_size', '?')} px. Written by `python -m cxr results` from `{source}`."
    ]
    for task, t in doc["tasks"].items():
        title = TASK_TITLES.get(task, task)
        if headline:
            if task != PRIMARY_TASK:
                parts.append(f"**{title}** (n = {t['n']}, threshold {t['threshold']:.3f} from the out-of-fold "
                             "predictions): " + ", ".join(f"{METRIC_LABELS[m]} {fmt(t['at_threshold'][m])}" for m in
                                                          ("auroc", "accuracy", "sensitivity", "specificity")) + ".")
            continue
        rows = [[METRIC_LABELS[m], fmt(t["at_threshold"][m]), fmt(t["at_0.5"][m])] for m in METRICS]
        parts.append(f"**{title}** (n = {t['n']} images, {t['n_positive']} positive"
                     + (f"; {t['n_patients']} children" if t.get("n_patients") else "") + ")\n\n"
                     + _md_table(["metric", f"at the threshold {t['threshold']:.3f}", "at 0.5"], rows))
        if t.get("threshold_uncertainty"):
            parts.append(f"*{title}: the intervals, and the operating point's own uncertainty.*\n\n"
                         + _intervals_md(t))
        if t.get("per_child"):
            parts.append(f"*{title}: per image and per child (a child is positive, and called positive, if any of "
                         "its images is).*\n\n" + _child_md(t))
        if t.get("calibration"):
            parts.append(f"*{title}: calibration on test, before and after the calibration fitted on the "
                         "out-of-fold predictions (95% patient-level intervals).*\n\n" + _calibration_md(t["calibration"]))
    if not headline:
        base = doc.get("baseline")
        if base and base.get("test"):
            bt = base["test"]["at_threshold"]
            parts.append(f"**Trivial baseline** (six image statistics, logistic regression; declared, and scored "
                         f"once in this run on its own ledger line): out-of-fold AUROC {base['oof_auroc']:.3f}; test "
                         f"AUROC {fmt(bt['auroc'])}, sensitivity "
                         f"{fmt(bt['sensitivity'])}, specificity {fmt(bt['specificity'])}.")
        raw = doc.get("shift", {}).get("raw_sample")
        if raw is not None and PRIMARY_TASK in doc["tasks"]:
            parts.append("**The same X-ray, resized another way** (full-resolution originals against their 224-px "
                         "copies)\n\n" + _resize_md(raw, doc["tasks"][PRIMARY_TASK]["threshold"],
                                                      doc.get("shift", {}).get("resize")))
        if doc.get("test_ledger"):
            parts.append(f"Test-access ledger: {doc['test_ledger']['description']}")
    if PRIMARY_TASK in doc["tasks"]:
        table = comparison_table(doc)
        rows = [[name, *[str(v) for v in r[:-1]], r[-1]] for name, r in zip(table.index, table.to_numpy().tolist())]
        parts.insert(1 if headline else len(parts),
                     "**Pneumonia vs normal beside the previous run and the literature** (the same 624 test images)"
                     "\n\n" + _md_table(["model", *table.columns[:-1], "protocol"], rows))
    return "\n\n".join(parts)


def markdown_data(doc: dict[str, Any], source: str = "doc/metrics.json") -> str:
    """The data audit of a metrics document as Markdown (for data/README.md): the patient-id evidence, the
    near-duplicate audit and the flow of images and children, written from the numbers."""
    block = doc.get("data")
    if not block:
        return "No data audit in this metrics document."
    flow = _md_table(["stage", "images", "children", "detail"],
                     [[r["stage"], f"{r['images']:,}", "" if r.get("children") is None else f"{r['children']:,}",
                       r.get("detail") or ""] for r in block["flow"]])
    return "\n\n".join([
        f"Written by `python -m cxr results` from `{source}` (the committed run's data audit).",
        "**Children.** " + describe_patient_ids(block["patient_ids"]),
        "**Copies and near duplicates.** " + describe_near_duplicates(block["near_duplicates"]),
        "**Flow of images and children**\n\n" + flow,
    ])


# ---------------------------------------------------------------------------------------------------------------
# The first screen of README.md and of the notebook: the headline, written from metrics.json


SUMMARY_MARKER = "summary"  # <!-- summary --> ... <!-- /summary -->: the block `headline_markdown` fills


def _ci(m: dict[str, Any]) -> str:
    return fmt(m)


def _oof_specificity(t: dict[str, Any]) -> str | None:
    """The out-of-fold specificity at the task's threshold, as the document holds it: the value of the declared
    target table (runs since protocol v2), else the 2.5-97.5% range over bootstrap resamples of the declared
    policy's thresholds (the stability table); None when neither is there."""
    op = t.get("operating_point") or {}
    for row in op.get("targets") or []:
        if row.get("metric") == "specificity" and row.get("oof") is not None:
            return f"{row['oof']:.3f}"
    for row in op.get("stability") or []:
        if row.get("policy") == op.get("policy") and row.get("specificity_low") is not None:
            return f"{row['specificity_low']:.3f}-{row['specificity_high']:.3f} (range over resampled thresholds)"
    return None


def _targets_line(t: dict[str, Any]) -> str:
    """Whether the primary task's declared targets were met on test (point estimate, with the lower 95% bound)."""
    op = t.get("operating_point") or {}
    at = t["at_threshold"]
    parts = []
    for metric, key, word in (("sensitivity", "target_sensitivity", "target"),
                              ("specificity", "min_specificity", "minimum")):
        target = op.get(key)
        if target is None:
            parts.append(f"no {metric} {word} declared in this document")
            continue
        v = at[metric]
        verdict = "met" if v["value"] >= target else "missed"
        bound = (f"; its lower 95% bound {v['ci_low']:.3f} is {'above' if v['ci_low'] >= target else 'below'} it"
                 if v.get("ci_low") is not None else "")
        parts.append(f"{metric} {word} {target:.2f} {verdict} on test ({v['value']:.3f}{bound})")
    return "Declared targets: " + "; ".join(parts) + "."


def _far_from_ideal(test: dict[str, Any], when: str) -> bool:
    """Whether a calibration's test intercept or slope is far from ideal: its 95% interval excludes 0 (intercept)
    or 1 (slope); without intervals, |intercept| > 0.5 or a slope outside 0.8-1.25."""
    values, ci = test.get(when, {}), test.get("ci", {}).get(when, {})
    far = False
    for key, ideal, loose in (("intercept", 0.0, lambda v: abs(v) > 0.5),
                              ("slope", 1.0, lambda v: not 0.8 <= v <= 1.25)):
        value = values.get(key)
        if value is None:
            continue
        lo, hi = ci.get(key, {}).get("ci_low"), ci.get(key, {}).get("ci_high")
        far |= (not lo <= ideal <= hi) if lo is not None and hi is not None else loose(value)
    return far


def calibration_warning(cal: dict[str, Any] | None) -> str | None:
    """One sentence when the test calibration of the (calibrated, else raw) probability is far from ideal (see
    `_far_from_ideal`), naming its intercept and slope; None when it is not, or the document lacks them."""
    if not cal or "test" not in cal:
        return None
    test = cal["test"]
    bad = [w for w in ("after", "before") if "slope" in test.get(w, {}) and _far_from_ideal(test, w)]
    if not bad:
        return None
    when = bad[0]
    v, ci = test[when], test.get("ci", {}).get(when, {})

    def cell(key: str) -> str:
        b = ci.get(key, {})
        return f"{v[key]:.2f}" + (f" [{b['ci_low']:.2f}, {b['ci_high']:.2f}]" if b.get("ci_low") is not None else "")

    method = str(cal.get("method", "")).capitalize()
    name = f"the {method}-calibrated probability" if when == "after" else "the raw probability"
    also = ""
    if len(bad) == 2:
        raw = test["before"]
        also = f" (nor the raw one: intercept {raw['intercept']:.2f}, slope {raw['slope']:.2f})"
    return (f"Do not read {name} as a risk{also}: on test, calibration intercept {cell('intercept')} (ideal 0), "
            f"slope {cell('slope')} (ideal 1).")


def _marker_sentence(f: dict[str, Any], counterfactual: dict[str, Any] | None, masked: bool | None) -> str:
    """The marker finding in one short sentence (the `markers` block of a metrics document)."""
    text = (f"a stamp on {f['train_pneumonia_stamped']} of {f['train_pneumonia']} training pneumonia images vs "
            f"{f['train_normal_stamped']} of {f['train_normal']} training normals"
            + (" (tied to the label)" if f.get("tied_to_label") else "")
            + f", {f['test_normal_stamped']} of {f['test_normal']} test normals")
    if masked:
        text += "; its corners are masked"
    if counterfactual and counterfactual.get("n"):
        c = counterfactual
        text += f"; pasted onto {c['n']} out-of-fold normals it changed {c['changed']} calls"
    return text + "."


def headline_findings(doc: dict[str, Any], t: dict[str, Any]) -> list[str]:
    """The findings that matter, as short bullets: the out-of-fold vs test specificity gap, the burned-in marker
    (when the data block has it), where the Grad-CAM heat lies (when the document has an explanation block)."""
    out = []
    oof = _oof_specificity(t)
    cm = t.get("confusion_matrix")
    spec = t["at_threshold"]["specificity"]["value"]
    if oof is not None:
        errors = (f"; {cm[0][1]} of the {cm[0][1] + cm[1][0]} test errors are false positives"
                  if cm else "")
        out.append(f"- Specificity {oof} out of fold (training children), {spec:.3f} on test{errors}: the "
                   "out-of-fold numbers did not foresee the test.")
    markers = doc.get("markers") or (doc.get("data") or {}).get("markers")
    if markers:
        text = markers if isinstance(markers, str) else markers.get("summary") or markers.get("description")
        if not text and markers.get("finding"):
            text = _marker_sentence(markers["finding"], markers.get("counterfactual"),
                                    doc.get("protocol", {}).get("marker_zones"))
        if text:
            out.append(f"- Burned-in marker: {text}")
    explanation = doc.get("explanation")
    if explanation:
        text = None
        if isinstance(explanation, dict) and explanation.get("groups"):
            from cxr.reporting.explanation import heat_summary

            text = heat_summary(explanation["groups"])  # written from the numbers, in today's words
        text = text or (explanation if isinstance(explanation, str)
                        else explanation.get("summary") or explanation.get("description"))
        if text:
            out.append(f"- Grad-CAM: {text}")
    return out


def headline_markdown(doc: dict[str, Any], access_path: Path | None = None) -> str:
    """The first screen (README.md's and the notebook's `<!-- summary -->` block, at most about 12 lines), written
    from a metrics document: the primary task's test numbers at the declared operating point and at 0.5 with their
    95% patient-level intervals, whether the declared targets were met, the findings that matter, what not to rely
    on, and that the test split is a reused development test set (its count from `doc/test_access.json` and the
    run's ledger)."""
    if PRIMARY_TASK not in doc.get("tasks", {}):
        return f"No {PRIMARY_TASK} task in this metrics document."
    t = doc["tasks"][PRIMARY_TASK]
    at, half = t["at_threshold"], t["at_0.5"]
    p = doc.get("protocol", {})
    op = t.get("operating_point") or {}
    target = op.get("target_sensitivity", p.get("target_sensitivity"))
    rule = f", chosen on the out-of-fold predictions for sensitivity {target}" if target is not None else ""
    n = f"{t['n']} images" + (f", {t['n_patients']} children" if t.get("n_patients") else "")
    lines = [
        f"**{TASK_TITLES.get(PRIMARY_TASK, PRIMARY_TASK)}, official test split ({n}), at the declared threshold "
        f"{t['threshold']:.3f}{rule}:** AUROC {_ci(at['auroc'])}, sensitivity {_ci(at['sensitivity'])}, "
        f"specificity {_ci(at['specificity'])} (95% patient-level intervals).",
        f"At threshold 0.5: sensitivity {_ci(half['sensitivity'])}, specificity {_ci(half['specificity'])}.",
        "",
        _targets_line(t),
        "",
        *headline_findings(doc, t),
    ]
    warning = calibration_warning(t.get("calibration"))
    if warning:
        lines.append(f"- {warning}")
    history = development_access(access_path or TEST_ACCESS)
    run = doc.get("test_ledger", {}).get("scorings")
    reuse = "- The test split is a reused development test set"
    if history:
        reuse += (f": scored {history['development_scorings']} times during development before this run "
                  "(`doc/test_access.json`)")
    if run is not None:
        reuse += f"{',' if history else ':'} and {run} time{'s' if run != 1 else ''} by this run (its ledger)"
    lines += [reuse + "; it is not an untouched hold-out.", "",
              "Written by `python -m cxr results` from the metrics document; details in "
              "[`doc/results.md`](doc/results.md)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The notebook's marked cells


def update_notebook(path: str | Path, text: str, marker: str = SUMMARY_MARKER) -> bool:
    """Replace the text between `<!-- marker -->` and `<!-- /marker -->` in the markdown cells of a notebook (read as
    JSON; everything else, outputs included, untouched), atomically. Returns whether a cell held the block."""
    from cxr.io import atomic_write_text

    path = Path(path)
    nb = json.loads(path.read_text())
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    found = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        joined = "".join(source) if isinstance(source, list) else source
        if begin not in joined or end not in joined[joined.index(begin):]:
            continue
        new = joined[: joined.index(begin) + len(begin)] + "\n" + text.rstrip() + "\n" + joined[joined.index(end):]
        cell["source"] = new.splitlines(keepends=True) if isinstance(source, list) else new
        found = True
    if found:
        atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return found
