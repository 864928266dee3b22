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

from cxr.evaluate.metrics import CI_METHOD, METRIC_LABELS, METRICS, PATIENT_CI_METHOD
from cxr.io import atomic_write_text

SCHEMA_VERSION = 1

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
        "split": "official test split scored once; training patients re-split into train/val by patient",
        "split_seed": config.seed,
        "val_fraction": config.val_fraction,
        "threshold_source": "validation split",
        "threshold_policy": config.threshold_policy,
        "threshold_tolerance": getattr(config, "threshold_tolerance", None) if config.threshold_policy == "plateau"
        else None,
        "target_sensitivity": config.target_sensitivity if config.threshold_policy == "sensitivity" else None,
        "calibration": getattr(config, "calibration", None),
        "calibration_source": "validation split",
        "n_bootstrap": config.n_bootstrap,
        "ci_level": config.ci_level,
        "ci_method": PATIENT_CI_METHOD,
        "image_ci_method": CI_METHOD,
        "seeds": getattr(config, "n_seeds", 1),
        "ece_bins": 10,
        "image_size": config.image_size,
        "resize_policy": config.resize_policy,
        "backbone": config.backbone,
        "weights": config.weights,
        "mode": config.mode,
    }
    if index is not None and "split" in index:
        out["images_per_split"] = {str(k): int(v) for k, v in index["split"].value_counts().sort_index().items()}
        if "patient_id" in index:
            out["patients_per_split"] = {str(k): int(v) for k, v in
                                         index.groupby("split")["patient_id"].nunique().sort_index().items()}
    return out


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None (null = undefined)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Path):
        return x.as_posix()
    return x


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
    return _clean(doc)


def write_metrics(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write the document as strict JSON (no NaN), atomically (temporary file in the same folder, os.replace)."""

    return atomic_write_text(Path(path), json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")


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
    """One task's metrics as value [CI] at the validation threshold and at 0.5 (one row per metric)."""
    level = "95%"
    rows = {METRIC_LABELS[m]: {f"at threshold {task['threshold']:.3f} ({level} CI)": fmt(task["at_threshold"][m]),
                               f"at 0.5 ({level} CI)": fmt(task["at_0.5"][m])} for m in METRICS}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"n = {task['n']} ({task['n_positive']} positive)"
    return table


def interval_table(task: dict[str, Any], digits: int = 3) -> pd.DataFrame:
    """One task's metrics at the validation threshold with both intervals: patient-level (the headline: patients
    resampled, as images of one patient are not independent) and image-level, and how much wider the first is."""
    rows = {}
    for m in METRICS:
        v = task["at_threshold"][m]
        if "image_ci_low" not in v:  # a report without patient ids: one interval only
            rows[METRIC_LABELS[m]] = {"value [95% CI]": fmt(v, digits)}
            continue
        width = (v["ci_high"] - v["ci_low"]) if v.get("ci_low") is not None else math.nan
        image_width = (v["image_ci_high"] - v["image_ci_low"]) if v.get("image_ci_low") is not None else math.nan
        rows[METRIC_LABELS[m]] = {
            "value [patient-level 95% CI]": fmt(v, digits),
            "image-level 95% CI": (f"[{v['image_ci_low']:.{digits}f}, {v['image_ci_high']:.{digits}f}]"
                                   if v.get("image_ci_low") is not None else "n/a"),
            "width ratio": round(width / image_width, 2) if image_width and image_width > 0 else math.nan,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    n_pat = task.get("n_patients")
    table.index.name = (f"n = {task['n']} images" + (f", {n_pat} patients" if n_pat else "")
                        + f"; threshold {task['threshold']:.3f}")
    return table


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
             f"patient-level split; threshold ({policy}), epochs and stage chosen on validation; test scored once; "
             "95% patient-level CI"),
            ("at_0.5", "This study (threshold 0.5)", "same model, fixed threshold 0.5 as most papers report"),
        ):
            rows.append({"model": label, **{c: fmt(t[key][c]) for c in cols}, "protocol": note})
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
        f"Official test set, scored once; thresholds chosen on validation ({p.get('threshold_policy', '?')}); "
        f"{p.get('ci_level', 0.95):.0%} intervals from {p.get('n_bootstrap', '?')} bootstrap resamples "
        f"({p.get('ci_method', '')}; image-level intervals are in `metrics.json`). Backbone {p.get('backbone', '?')} ({p.get('weights', '?')}), "
        f"{p.get('image_size', '?')} px. Written by `python -m cxr results` from `{source}`."
    ]
    for task, t in doc["tasks"].items():
        if headline:
            if task != "pneumonia":
                parts.append(f"**{TASK_TITLES.get(task, task)}** (n = {t['n']}, threshold {t['threshold']:.3f} from "
                             "validation): " + ", ".join(f"{METRIC_LABELS[m]} {fmt(t['at_threshold'][m])}" for m in
                                                         ("auroc", "accuracy", "sensitivity", "specificity")) + ".")
            continue
        rows = [[METRIC_LABELS[m], fmt(t["at_threshold"][m]), fmt(t["at_0.5"][m])] for m in METRICS]
        cal = t.get("calibration")
        if cal:
            before, after = cal["test"]["before"], cal["test"]["after"]
            rows.append([f"Expected calibration error after {cal['method']} scaling (fitted on validation)",
                         f"{after['ece']:.3f} (before: {before['ece']:.3f})", ""])
        parts.append(f"**{TASK_TITLES.get(task, task)}** (n = {t['n']}, {t['n_positive']} positive)\n\n" + _md_table(
            ["metric", f"at validation threshold {t['threshold']:.3f}", "at 0.5"], rows))
    if doc.get("test_ledger") and not headline:
        parts.append(f"Test-access ledger: {doc['test_ledger']['description']}")
    if "pneumonia" in doc["tasks"]:
        table = comparison_table(doc)
        rows = [[name, *[str(v) for v in r[:-1]], r[-1]] for name, r in zip(table.index, table.to_numpy().tolist())]
        parts.insert(1 if headline else len(parts),
                     "**Pneumonia vs normal beside the literature** (the same 624 test images)\n\n"
                     + _md_table(["model", *table.columns[:-1], "protocol"], rows))
    return "\n\n".join(parts)
