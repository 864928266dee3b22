"""The metrics document (`metrics.json`, schema in `doc/metrics_schema.md`): its protocol block, writing and
reading it, its tables for display (value [interval] cells), the published references beside which our numbers are
shown, the development history of test access, and the committed per-image predictions. The Markdown and the
sentences written from it are in `cxr.reporting`."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.config import PRIMARY_TASK, TASKS
from cxr.evaluate.metrics import CI_METHOD, CI_METHODS, METRIC_LABELS, METRICS, PATIENT_CI_METHOD
from cxr.io import to_json, write_json

SCHEMA_VERSION = 2  # 2: cross-validation (out-of-fold selection), per-metric interval methods, threshold
# uncertainty, per-child results, calibration intercept and slope, the data audit, baseline and shift blocks

PREVIOUS_RUN = {  # the committed run of protocol v2 (doc/metrics.json at commit caa413f), as a row; its test
    # predictions, byte for byte those of doc/predictions.csv at that commit, are doc/previous_predictions.csv
    "name": "Previous run of this study (2026-12-02, protocol v2)",
    "protocol_version": 2,
    "metrics": {"auroc": {"value": 0.965, "ci_low": 0.949, "ci_high": 0.976},
                "accuracy": {"value": 0.875, "ci_low": 0.847, "ci_high": 0.899},
                "sensitivity": {"value": 0.982, "ci_low": 0.963, "ci_high": 0.991},
                "specificity": {"value": 0.697, "ci_low": 0.635, "ci_high": 0.753}},
    "protocol": "4 block folds, the stamp zones masked, byte-identical test images counted once (618 images); the "
                "head on frozen features kept; fold ensemble; threshold keeping 0.95 out-of-fold sensitivity; "
                "patient-level intervals; that run scored the test once per task",
    "operating_point": "threshold 0.819 chosen on out-of-fold predictions",
    "thresholds": {"pneumonia": 0.8186805844306946, "subtype": 0.5},  # subtype: no operating point, 0.5
    "predictions": Path(__file__).resolve().parents[2] / "doc" / "previous_predictions.csv",
}
FIRST_RUN = {  # the committed run of protocol v1 (doc/metrics.json at commit 9fcce8a), as a row (no predictions kept)
    "name": "First run of this study (2026-11-30, protocol v1)",
    "protocol_version": 1,
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

def protocol_version(config: Any) -> int:
    """The evaluation protocol a Config follows (`doc/protocol.md`): 1, random folds; 2, block folds; 3, block folds
    with the canonical JPEG re-encode and the WiSE-FT stage."""
    if getattr(config, "fold_scheme", "random") != "blocks":
        return 1
    v3 = getattr(config, "reencode_quality", None) is not None and getattr(config, "wise_ft_alpha", None) is not None
    return 3 if v3 else 2


def protocol(config: Any, index: pd.DataFrame | None = None) -> dict[str, Any]:
    """The evaluation protocol of a run, from its `Config` (and the split counts from the index)."""
    out: dict[str, Any] = {
        "split": "official test split (a development test set: scored during development, doc/test_access.json), "
                 "scored once per task by this run; the training children in patient-grouped cross-validation folds",
        "protocol_version": protocol_version(config),
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
    for name in ("reencode_quality", "wise_ft_alpha"):  # protocol version 3's, recorded only where set
        if getattr(config, name, None) is not None:
            out[name] = getattr(config, name)
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


def earlier_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The committed runs of this study before `doc`'s (`PREVIOUS_RUN`, `FIRST_RUN`: those of a lower protocol
    version), latest first; a document without a version (a smoke or older run) gets both."""
    version = doc.get("protocol", {}).get("protocol_version")
    return [r for r in (PREVIOUS_RUN, FIRST_RUN) if version is None or r["protocol_version"] < int(version)]


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
        for run in earlier_runs(doc):
            rows.append({"model": run["name"], **{c: fmt(run["metrics"][c]) for c in cols},
                         "operating point": run["operating_point"], "protocol": run["protocol"]})
    for name, ref in REFERENCES.items():
        rows.append({"model": name, **{c: (f"{ref['metrics'][c]:.3f}" if c in ref["metrics"] else "n/a") for c in cols},
                     "operating point": ref["operating_point"], "protocol": ref["protocol"]})
    return pd.DataFrame(rows).set_index("model").rename(columns={"auroc": "AUROC", "accuracy": "accuracy",
                                                                 "sensitivity": "sensitivity",
                                                                 "specificity": "specificity"})


# ---------------------------------------------------------------------------------------------------------------
# The committed per-image predictions
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
