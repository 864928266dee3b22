"""The metrics document (`metrics.json`, schema in `doc/metrics_schema.md`), its tables and the Markdown results
blocks of README.md and doc/results.md; the published references beside which our numbers are shown."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.config import PRIMARY_TASK, TASKS
from cxr.evaluate.metrics import CI_METHOD, CI_METHODS, METRIC_LABELS, METRICS, PATIENT_CI_METHOD
from cxr.io import to_json, write_json

SCHEMA_VERSION = 2  # 2: cross-validation (out-of-fold selection), per-metric interval methods, threshold
# uncertainty, per-child results, calibration intercept and slope, the data audit, baseline and shift blocks

PREVIOUS_RUN = {  # the committed run of protocol v1 (doc/metrics.json at commit 9fcce8a), as a row
    "name": "Previous run of this study (2026-11-30, protocol v1)",
    "metrics": {"auroc": {"value": 0.974, "ci_low": 0.960, "ci_high": 0.983},
                "accuracy": {"value": 0.910, "ci_low": 0.885, "ci_high": 0.930},
                "sensitivity": {"value": 0.982, "ci_low": 0.962, "ci_high": 0.992},
                "specificity": {"value": 0.791, "ci_low": 0.734, "ci_high": 0.838}},
    "protocol": "4 random patient-grouped folds (StratifiedGroupKFold), the marker corners kept, byte-identical test "
                "images counted twice (624 images); fold ensemble; threshold keeping 0.95 out-of-fold sensitivity; "
                "patient-level intervals; that run scored the test once per task",
    "operating_point": "threshold 0.701 chosen on out-of-fold predictions",
}

REFERENCES: dict[str, dict[str, Any]] = {
    "Kermany et al. 2018": {
        "citation": "Kermany D.S. et al., Identifying medical diagnoses and treatable diseases by image-based deep "
                    "learning, Cell 172(5):1122-1131, 2018. doi:10.1016/j.cell.2018.02.010",
        "metrics": {"auroc": 0.968, "accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901},
        "protocol": "Pneumonia vs normal on the same 624 official test images; ImageNet Inception V3 transfer "
                    "learning; the paper describes no validation set apart from the test partition, so the model "
                    "may have been chosen on it and the numbers may be optimistic.",
        "operating_point": "not stated",
    },
    "MedMNIST+ (Doerrich et al. 2024)": {
        "citation": "Doerrich S. et al., Rethinking model prototyping through the MedMNIST+ dataset collection, "
                    "2024. arXiv:2404.15786",
        "metrics": {"auroc": 0.989, "accuracy": 0.916},
        "protocol": "PneumoniaMNIST at 224 px (same 624 test images, center-cropped); model selection on a held-out "
                    "validation split; both figures from one model, the DINO ViT-B/16 linear probe (mean of 3 "
                    "seeds).",
        "operating_point": "0.5",
    },
    "MedMNIST v2 (Yang et al. 2023)": {
        "citation": "Yang J. et al., MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical "
                    "image classification, Scientific Data 10:41, 2023. doi:10.1038/s41597-022-01721-8",
        "metrics": {"accuracy": 0.946},
        "protocol": "PneumoniaMNIST at 28 px (same 624 test images); Google AutoML Vision, the benchmark's best "
                    "accuracy; model selection on the official validation split.",
        "operating_point": "0.5",
    },
}


# metrics.json
# ---------------------------------------------------------------------------------------------------------------

def protocol(config: Any, index: pd.DataFrame | None = None) -> dict[str, Any]:
    """The evaluation protocol of a run, from its `Config` (and the split counts from the index)."""
    out: dict[str, Any] = {
        "split": "official test split (a development test set: scored during development, doc/test_access.json), "
                 "scored once per task by this run; the training children in patient-grouped cross-validation folds",
        "protocol_version": 2 if getattr(config, "fold_scheme", "random") == "blocks" else 1,
        "n_folds": config.n_folds,
        "fold_scheme": getattr(config, "fold_scheme", "random"),
        "marker_zones": bool(getattr(config, "marker_zones", False)),
        "dedupe_test": bool(getattr(config, "dedupe_test", False)),
        "split_seed": config.split_seed,
        "seed": config.seed,
        "selection": "pooled out-of-fold predictions of the training children",
        "final_model": f"ensemble (mean probability) of the {config.n_folds} fold models",
        "threshold_source": "out-of-fold predictions",
        "threshold_policy": config.threshold_policy,
        "target_sensitivity": config.target_sensitivity if config.threshold_policy == "sensitivity" else None,
        "threshold_tolerance": config.threshold_tolerance if config.threshold_policy == "plateau" else None,
        "min_specificity": getattr(config, "min_specificity", None),
        "subtype_threshold_policy": getattr(config, "subtype_threshold_policy", None),
        "target_specificity": getattr(config, "target_specificity", None),
        "subtype_min_sensitivity": getattr(config, "subtype_min_sensitivity", None),
        "calibration": config.calibration,
        "calibration_source": "out-of-fold predictions",
        "n_bootstrap": config.n_bootstrap,
        "ci_level": config.ci_level,
        "ci_method": PATIENT_CI_METHOD,
        "image_ci_method": CI_METHOD,
        "ci_methods": dict(CI_METHODS),
        "ece_bins": 10,
        "image_size": config.image_size,
        "resize_policy": config.resize_policy,
        "backbone": config.backbone,
        "weights": config.weights,
        "finetune_tasks": list(config.finetune_tasks),
        "finetune_epochs": config.finetune_epochs,
        "mode": config.mode,
    }
    if index is not None and "split" in index:
        out["images_per_split"] = {str(k): int(v) for k, v in index["split"].value_counts().sort_index().items()}
        if "patient_id" in index:
            out["children_per_split"] = {str(k): int(v) for k, v in
                                         index.groupby("split")["patient_id"].nunique().sort_index().items()}
    return out


REQUIRED_TASK_KEYS = ("threshold", "n", "n_positive", "at_threshold", "at_0.5", "confusion_matrix")


def metrics_document(protocol: dict[str, Any], tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `metrics.json` document: schema_version, created, protocol (with each task's threshold), tasks.

    `tasks` maps a task name ("pneumonia", "subtype") to a `task_report`. See doc/metrics_schema.md.
    """
    for name, t in tasks.items():
        missing = [k for k in REQUIRED_TASK_KEYS if k not in t]
        if missing:
            raise ValueError(f"task {name!r} lacks {missing}; build it with task_report()")
    proto = {**protocol, "thresholds": {name: t["threshold"] for name, t in tasks.items()}}
    main = PRIMARY_TASK if PRIMARY_TASK in tasks else (next(iter(tasks)) if len(tasks) == 1 else None)
    proto["threshold"] = tasks[main]["threshold"] if main else None  # the main task's, for quick reading
    doc = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "protocol": proto, "tasks": tasks}
    return to_json(doc)


def write_metrics(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write the document as strict JSON (no NaN), atomically (temporary file in the same folder, os.replace)."""

    return write_json(path, doc)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Read a `metrics.json`, checking its schema version."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {doc.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return doc


# ---------------------------------------------------------------------------------------------------------------
# Tables for display
# ---------------------------------------------------------------------------------------------------------------

def fmt(m: dict[str, Any] | None, digits: int = 3) -> str:
    if not m or m.get("value") is None or not math.isfinite(m["value"]):
        return "n/a"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def report_table(task: dict[str, Any]) -> pd.DataFrame:
    """One task's metrics as value [CI] at the task's threshold and at 0.5 (one row per metric)."""
    level = "95%"
    rows = {METRIC_LABELS[m]: {f"at threshold {task['threshold']:.3f} ({level} CI)": fmt(task["at_threshold"][m]),
                               f"at 0.5 ({level} CI)": fmt(task["at_0.5"][m])} for m in METRICS}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"n = {task['n']} ({task['n_positive']} positive)"
    return table


def interval_table(task: dict[str, Any], digits: int = 3) -> pd.DataFrame:
    """One task's metrics at its threshold with every interval: the headline one (patient-level: children
    resampled, as images of one child are not independent; its method named), the image-level one, how much wider
    the first is (width ratio), and, where the report has it, the interval that also re-chooses the threshold on
    every resample of the selection data (the operating point's own uncertainty)."""
    nested = task.get("threshold_uncertainty", {}).get("intervals", {})
    methods = task.get("ci_methods", {})
    rows = {}
    for m in METRICS:
        v = task["at_threshold"][m]
        row = {"value [patient-level 95% CI]": fmt(v, digits)}
        if "image_ci_low" in v:
            width = (v["ci_high"] - v["ci_low"]) if v.get("ci_low") is not None else math.nan
            image_width = (v["image_ci_high"] - v["image_ci_low"]) if v.get("image_ci_low") is not None else math.nan
            row["image-level 95% CI"] = (f"[{v['image_ci_low']:.{digits}f}, {v['image_ci_high']:.{digits}f}]"
                                         if v.get("image_ci_low") is not None else "n/a")
            row["width ratio"] = (f"{width / image_width:.2f}" if image_width and image_width > 0
                                  and math.isfinite(width) else "")
        if nested:
            n = nested.get(m)
            row["95% CI with the threshold re-chosen"] = (f"[{n['ci_low']:.{digits}f}, {n['ci_high']:.{digits}f}]"
                                                         if n and n.get("ci_low") is not None else "")
        row["interval method"] = methods.get(m, "")
        rows[METRIC_LABELS[m]] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    n_pat = task.get("n_patients")
    table.index.name = (f"n = {task['n']} images" + (f", {n_pat} children" if n_pat else "")
                        + f"; threshold {task['threshold']:.3f}")
    return table


def child_summary(task: dict[str, Any], digits: int = 3) -> pd.DataFrame:
    """Per-image and per-child results side by side (a child is positive, and called positive, if any of its
    images is), at the task's threshold."""
    child = task.get("per_child")
    if not child:
        raise ValueError("the report has no per-child results (task_report was given no groups)")
    rows = {METRIC_LABELS[m]: {f"per image (n = {task['n']})": fmt(task["at_threshold"][m], digits),
                               f"per child (n = {child['n']})": fmt(child["at_threshold"][m], digits)}
            for m in ("auroc", "accuracy", "sensitivity", "specificity", "precision", "balanced_accuracy")}
    return pd.DataFrame.from_dict(rows, orient="index")


def describe_report(task: dict[str, Any]) -> str:
    """What a task's test results say, from its report: the headline, the operating point's own uncertainty, the
    per-child view and where the errors are."""
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
                        f" ({gap:+.3f}). The official test is made of blocks of file ids (periods of acquisition) that "
                        "the random folds mix, and the acquisition stamp is spread differently there, so neither "
                        "figure foresees the other; neither is an estimate for another hospital."))
    return " ".join(parts)


def describe_comparison(doc: dict[str, Any], task: str = PRIMARY_TASK) -> str:
    """How this run compares with the previous committed run, in words, and why the rows are not a leaderboard."""
    t = doc["tasks"].get(task)
    if t is None:
        return ""
    now, before = t["at_threshold"], PREVIOUS_RUN["metrics"]
    parts = [f"{METRIC_LABELS[m]} {fmt(now[m])} (previous run {fmt(before[m])})"
             for m in ("auroc", "accuracy", "sensitivity", "specificity")]
    return ("Against the previous committed run of this study, point estimates on the same test images: "
            + ", ".join(parts) + ". These are not a test of a difference: the two runs scored the same images, so "
            "the comparison that counts is paired (McNemar's test on the normals' calls, a patient-clustered "
            "paired AUROC test), and it needs both runs' per-image predictions, which the previous run did not "
            "keep; overlapping or separate intervals decide nothing either way. The protocols differ (see the "
            "last columns), so the rows are not a leaderboard: the operating points differ (this study's threshold "
            "comes from its out-of-fold predictions, most papers use 0.5), Kermany et al. describe no validation "
            "set apart from the test partition, and the MedMNIST rows are benchmark bests (one of many models).")


TEST_ACCESS = Path(__file__).resolve().parents[2] / "doc" / "test_access.json"  # the development history


def development_access(path: Path = TEST_ACCESS) -> dict[str, Any] | None:
    """The development history of test access (`doc/test_access.json`): scorings of the official test split before
    the committed run and the rules changed after a test number was seen; None where the file is absent (an
    installed package)."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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


def results_table(doc: dict[str, Any]) -> pd.DataFrame:
    """Every task of a metrics document: rows (task, metric), columns value [CI] at the threshold and at 0.5."""
    frames = []
    for name, t in doc["tasks"].items():
        frames.append(pd.DataFrame({
            "task": name, "metric": list(METRICS),
            "threshold": t["threshold"],
            "at_threshold": [fmt(t["at_threshold"][m]) for m in METRICS],
            "at_0.5": [fmt(t["at_0.5"][m]) for m in METRICS],
        }))
    if not frames:
        return pd.DataFrame(columns=["threshold", "at_threshold", "at_0.5"])
    return pd.concat(frames, ignore_index=True).set_index(["task", "metric"])


def comparison_table(doc: dict[str, Any], task: str = PRIMARY_TASK) -> pd.DataFrame:
    """Our pneumonia-vs-normal test metrics beside Kermany et al. 2018 and MedMNIST+, each with its protocol."""
    cols = ("auroc", "accuracy", "sensitivity", "specificity")
    rows = []
    t = doc["tasks"].get(task)
    if t is not None:
        policy = doc.get("protocol", {}).get("threshold_policy", "?")
        for key, label, note in (
            ("at_threshold", f"This study (threshold {t['threshold']:.3f})",
             f"{doc.get('protocol', {}).get('n_folds', '?')}-fold cross-validation of the training children; the "
             f"fold ensemble; threshold ({policy}), epochs, stage and calibration chosen on the out-of-fold "
             "predictions; declared in doc/protocol.md; a development test set (doc/test_access.json); 95% "
             "patient-level CI"),
            ("at_0.5", "This study (threshold 0.5)", "same model, fixed threshold 0.5 as most papers report"),
        ):
            point = f"{t['threshold']:.3f}, from the out-of-fold predictions" if key == "at_threshold" else "0.5"
            rows.append({"model": label, **{c: fmt(t[key][c]) for c in cols}, "operating point": point,
                         "protocol": note})
    if task == PRIMARY_TASK:
        rows.append({"model": PREVIOUS_RUN["name"], **{c: fmt(PREVIOUS_RUN["metrics"][c]) for c in cols},
                     "operating point": PREVIOUS_RUN["operating_point"], "protocol": PREVIOUS_RUN["protocol"]})
    for name, ref in REFERENCES.items():
        rows.append({"model": name, **{c: (f"{ref['metrics'][c]:.3f}" if c in ref["metrics"] else "n/a") for c in cols},
                     "operating point": ref["operating_point"], "protocol": ref["protocol"]})
    return pd.DataFrame(rows).set_index("model").rename(columns={"auroc": "AUROC", "accuracy": "accuracy",
                                                                 "sensitivity": "sensitivity",
                                                                 "specificity": "specificity"})


# ---------------------------------------------------------------------------------------------------------------
# Markdown for README.md and doc/results.md (written from metrics.json, never typed by hand)
# ---------------------------------------------------------------------------------------------------------------

TASK_TITLES = {name: t.title for name, t in TASKS.items()}  # from the task table


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
    from cxr.data import audit

    block = doc.get("data")
    if not block:
        return "No data audit in this metrics document."
    flow = _md_table(["stage", "images", "children", "detail"],
                     [[r["stage"], f"{r['images']:,}", "" if r.get("children") is None else f"{r['children']:,}",
                       r.get("detail") or ""] for r in block["flow"]])
    return "\n\n".join([
        f"Written by `python -m cxr results` from `{source}` (the committed run's data audit).",
        "**Children.** " + audit.describe_patient_ids(block["patient_ids"]),
        "**Copies and near duplicates.** " + audit.describe_near_duplicates(block["near_duplicates"]),
        "**Flow of images and children**\n\n" + flow,
    ])


# ---------------------------------------------------------------------------------------------------------------
# The first screen of README.md and of the notebook: the headline, written from metrics.json
# ---------------------------------------------------------------------------------------------------------------

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
    return (f"Do not read {name} as a risk{also}: on test its calibration intercept is {cell('intercept')} (ideal "
            f"0) and its slope {cell('slope')} (ideal 1).")


def _marker_sentence(f: dict[str, Any], counterfactual: dict[str, Any] | None, masked: bool | None) -> str:
    """The marker finding in one short sentence (the `markers` block of a metrics document)."""
    text = (f"a burned-in stamp is on {f['train_pneumonia_stamped']} of {f['train_pneumonia']} training pneumonia "
            f"images and {f['train_normal_stamped']} of {f['train_normal']} training normals"
            + (" (tied to the label)" if f.get("tied_to_label") else "")
            + f", and on {f['test_normal_stamped']} of {f['test_normal']} test normals")
    if masked:
        text += "; its corners are masked in every image"
    if counterfactual and counterfactual.get("n"):
        c = counterfactual
        text += (f"; pasting it onto {c['n']} out-of-fold normals changed {c['changed']} calls (mean rise "
                 f"{c['mean_rise']:+.3f})")
    return text + "."


def headline_findings(doc: dict[str, Any], t: dict[str, Any]) -> list[str]:
    """The findings that matter, as short bullets: the out-of-fold vs test specificity gap, the burned-in marker
    (when the data block has it), where the Grad-CAM heat lies (when the document has an explanation block)."""
    out = []
    oof = _oof_specificity(t)
    cm = t.get("confusion_matrix")
    spec = t["at_threshold"]["specificity"]["value"]
    if oof is not None:
        errors = (f"; {cm[0][1]} of the {cm[0][1] + cm[1][0]} test errors are normals called pneumonia"
                  if cm else "")
        out.append(f"- Specificity out of fold (training children) {oof}, on test {spec:.3f}{errors}: the "
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
        text = (explanation if isinstance(explanation, str)
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
# The committed per-image predictions and the notebook's marked cells
# ---------------------------------------------------------------------------------------------------------------

PREDICTION_COLUMNS = ("task", "split", "path", "y", "child", "probability", "calibrated_probability", "called")


def committed_predictions(run_dir: str | Path, tasks: Any = None, digits: int = 6) -> pd.DataFrame:
    """Every out-of-fold and test prediction of every task of a run folder (its `predictions_<task>.csv`), in one
    small table (`PREDICTION_COLUMNS`): the file name only (the class folder too where names repeat within a task
    and split), probabilities rounded to `digits`, `called` = the decision at the task's threshold. Raises
    ValueError when the folder has no predictions file."""
    from cxr.evaluate.predictions import predictions_path, read_predictions

    names = list(tasks) if tasks is not None else list(TASKS)
    files = [(task, predictions_path(run_dir, task)) for task in names]
    frames = [read_predictions(path) for _, path in files if path.is_file()]
    if not frames:
        raise ValueError(f"no predictions in {run_dir} (looked for {', '.join(p.name for _, p in files)})")
    frame = pd.concat(frames, ignore_index=True)
    paths = frame["path"].map(lambda s: Path(s).name)
    if paths.groupby([frame["task"], frame["split"]]).apply(lambda s: s.duplicated().any()).any():
        paths = frame["path"].map(lambda s: "/".join(Path(s).parts[-2:]))
    return pd.DataFrame({"task": frame["task"], "split": frame["split"], "path": paths, "y": frame["y"],
                         "child": frame["patient_id"], "probability": frame["probability"].round(digits),
                         "calibrated_probability": frame["calibrated_probability"].round(digits),
                         "called": frame["decision"]})[list(PREDICTION_COLUMNS)]


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
