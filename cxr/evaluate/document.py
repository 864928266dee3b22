"""The metrics document (`metrics.json`, schema in `doc/metrics_schema.md`), its tables and the Markdown results
blocks of README.md and doc/results.md; the published references beside which our numbers are shown."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.evaluate.metrics import CI_METHOD, CI_METHODS, METRIC_LABELS, METRICS, PATIENT_CI_METHOD
from cxr.io import to_json, write_json

SCHEMA_VERSION = 2  # 2: cross-validation (out-of-fold selection), per-metric interval methods, threshold
# uncertainty, per-child results, calibration intercept and slope, the data audit, baseline and shift blocks

PREVIOUS_RUN = {  # the committed run before cross-validation (doc/metrics.json at commit 278a0db), as a row
    "name": "Previous run of this study (2026-11-25)",
    "metrics": {"auroc": {"value": 0.970, "ci_low": 0.956, "ci_high": 0.982},
                "accuracy": {"value": 0.880, "ci_low": 0.856, "ci_high": 0.903},
                "sensitivity": {"value": 0.987, "ci_low": 0.975, "ci_high": 0.997},
                "specificity": {"value": 0.701, "ci_low": 0.644, "ci_high": 0.755}},
    "protocol": "single validation split (15% of the children, pneumonia ids merged across subtypes, 457 training "
                "images excluded); one fine-tuned model; plateau threshold 0.303 from validation; percentile "
                "patient-level intervals; test scored once per task",
}

REFERENCES: dict[str, dict[str, Any]] = {
    "Kermany et al. 2018": {
        "citation": "Kermany D.S. et al., Identifying medical diagnoses and treatable diseases by image-based deep "
                    "learning, Cell 172(5):1122-1131, 2018. doi:10.1016/j.cell.2018.02.010",
        "metrics": {"auroc": 0.968, "accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901},
        "protocol": "Pneumonia vs normal on the same 624 official test images; ImageNet Inception V3 transfer "
                    "learning; no separate validation set: the model was selected on the test partition, so the "
                    "numbers are optimistic.",
    },
    "MedMNIST+ (Doerrich et al. 2024)": {
        "citation": "Doerrich S. et al., Rethinking model prototyping through the MedMNIST+ dataset collection, "
                    "2024. arXiv:2404.15786",
        "metrics": {"auroc": 0.989, "accuracy": 0.916},
        "protocol": "PneumoniaMNIST at 224 px (same 624 test images); model selection on a held-out validation "
                    "split, test scored once; best AUC and best ACC over the benchmarked models and training "
                    "schemes (not necessarily the same model), threshold 0.5.",
    },
}


# metrics.json
# ---------------------------------------------------------------------------------------------------------------

def protocol(config: Any, index: pd.DataFrame | None = None) -> dict[str, Any]:
    """The evaluation protocol of a run, from its `Config` (and the split counts from the index)."""
    out: dict[str, Any] = {
        "split": "official test split scored once; the training children in patient-grouped cross-validation folds",
        "n_folds": config.n_folds,
        "split_seed": config.split_seed,
        "seed": config.seed,
        "selection": "pooled out-of-fold predictions of the training children",
        "final_model": f"ensemble (mean probability) of the {config.n_folds} fold models",
        "threshold_source": "out-of-fold predictions",
        "threshold_policy": config.threshold_policy,
        "target_sensitivity": config.target_sensitivity if config.threshold_policy == "sensitivity" else None,
        "threshold_tolerance": config.threshold_tolerance if config.threshold_policy == "plateau" else None,
        "calibration": config.calibration,
        "calibration_source": "out-of-fold predictions",
        "n_bootstrap": config.n_bootstrap,
        "ci_level": config.ci_level,
        "ci_method": PATIENT_CI_METHOD,
        "image_ci_method": CI_METHOD,
        "ci_methods": dict(CI_METHODS),
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
    main = "pneumonia" if "pneumonia" in tasks else (next(iter(tasks)) if len(tasks) == 1 else None)
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
    return " ".join(parts)


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


def comparison_table(doc: dict[str, Any], task: str = "pneumonia") -> pd.DataFrame:
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
             "predictions; declared in doc/protocol.md; test scored once; 95% patient-level CI"),
            ("at_0.5", "This study (threshold 0.5)", "same model, fixed threshold 0.5 as most papers report"),
        ):
            rows.append({"model": label, **{c: fmt(t[key][c]) for c in cols}, "protocol": note})
    if task == "pneumonia":
        rows.append({"model": PREVIOUS_RUN["name"], **{c: fmt(PREVIOUS_RUN["metrics"][c]) for c in cols},
                     "protocol": PREVIOUS_RUN["protocol"]})
    for name, ref in REFERENCES.items():
        rows.append({"model": name, **{c: (f"{ref['metrics'][c]:.3f}" if c in ref["metrics"] else "n/a") for c in cols},
                     "protocol": ref["protocol"]})
    return pd.DataFrame(rows).set_index("model").rename(columns={"auroc": "AUROC", "accuracy": "accuracy",
                                                                 "sensitivity": "sensitivity",
                                                                 "specificity": "specificity"})


# ---------------------------------------------------------------------------------------------------------------
# Markdown for README.md and doc/results.md (written from metrics.json, never typed by hand)
# ---------------------------------------------------------------------------------------------------------------

TASK_TITLES = {"pneumonia": "Pneumonia vs normal", "subtype": "Bacterial vs viral pneumonia"}


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_results(doc: dict[str, Any], source: str = "doc/metrics.json", headline: bool = False) -> str:
    """The results as Markdown: each task's test metrics with 95% intervals (at the validation threshold and at
    0.5), then the comparison with the literature, each with its protocol. `headline`: the comparison table and
    one line per other task only (for the README)."""
    p = doc.get("protocol", {})
    parts = [
        f"Official test set, scored once; thresholds chosen on the out-of-fold predictions of the training children "
        f"({p.get('threshold_policy', '?')}); "
        f"{p.get('ci_level', 0.95):.0%} intervals from {p.get('n_bootstrap', '?')} bootstrap resamples "
        f"({p.get('ci_method', '')}; image-level intervals are in `metrics.json`). Backbone {p.get('backbone', '?')} ({p.get('weights', '?')}), "
        f"{p.get('image_size', '?')} px. Written by `python -m cxr results` from `{source}`."
    ]
    for task, t in doc["tasks"].items():
        if headline:
            if task != "pneumonia":
                parts.append(f"**{TASK_TITLES.get(task, task)}** (n = {t['n']}, threshold {t['threshold']:.3f} from "
                             "the out-of-fold predictions): " + ", ".join(f"{METRIC_LABELS[m]} {fmt(t['at_threshold'][m])}" for m in
                                                         ("auroc", "accuracy", "sensitivity", "specificity")) + ".")
            continue
        rows = [[METRIC_LABELS[m], fmt(t["at_threshold"][m]), fmt(t["at_0.5"][m])] for m in METRICS]
        cal = t.get("calibration")
        if cal:
            before, after = cal["test"]["before"], cal["test"]["after"]
            rows.append([f"Log-loss after {cal['method']} scaling (fitted on the out-of-fold predictions)",
                         f"{after['log_loss']:.3f} (before: {before['log_loss']:.3f})", ""])
            if after.get("slope") is not None:
                rows.append(["Calibration slope / intercept after scaling (ideal 1 / 0)",
                             f"{after['slope']:.2f} / {after['intercept']:.2f} (before: {before['slope']:.2f} / "
                             f"{before['intercept']:.2f})", ""])
        parts.append(f"**{TASK_TITLES.get(task, task)}** (n = {t['n']}, {t['n_positive']} positive)\n\n" + _md_table(
            ["metric", f"at the threshold {t['threshold']:.3f}", "at 0.5"], rows))
    if doc.get("test_ledger") and not headline:
        parts.append(f"Test-access ledger: {doc['test_ledger']['description']}")
    if "pneumonia" in doc["tasks"]:
        table = comparison_table(doc)
        rows = [[name, *[str(v) for v in r[:-1]], r[-1]] for name, r in zip(table.index, table.to_numpy().tolist())]
        parts.insert(1 if headline else len(parts),
                     "**Pneumonia vs normal beside the literature** (the same 624 test images)\n\n"
                     + _md_table(["model", *table.columns[:-1], "protocol"], rows))
    return "\n\n".join(parts)
