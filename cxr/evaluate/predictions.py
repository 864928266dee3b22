"""Every scored image on record, and what the errors have in common.

`predictions_frame` turns one task's scores on one split into a table (one row per image: path, label,
probability, calibrated probability, decision, file-name family, original size); the out-of-fold and test rows
of a task go into one file with `write_predictions` and come back unchanged with `read_predictions`.
`error_analysis` counts errors by subtype, file-name family, original size and aspect ratio, each rate with a
Wilson 95% interval; `most_confident_errors` picks the images to look at (`cxr.reporting.describe_errors` says
in words what the numbers show).

Only numpy, pandas and scipy: no model, no figures (the tables are what a figure needs).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.config import TASKS
from cxr.evaluate.metrics import wilson_bounds
from cxr.data.names import FILE_FAMILIES as FAMILIES, file_family  # noqa: F401  (the file-name families)
from cxr.io import atomic_write_text

# task: (index column holding the class, (negative class, positive class)), from the task table.
TASK_CLASSES: dict[str, tuple[str, tuple[str, str]]] = {name: (t.column, tuple(t.class_names))
                                                        for name, t in TASKS.items()}
THRESHOLD_ON = ("raw", "calibrated")
OOF_SOURCE = {"oof": "train"}  # the predictions file's split "oof": the training children, each scored out of fold

# The columns of a predictions file and their dtypes ("str": pandas' string dtype of the running version).
COLUMNS: dict[str, str] = {
    "path": "str",
    "split": "str",
    "task": "str",
    "label": "str",  # the true class name of the task (NORMAL/PNEUMONIA, or bacteria/virus)
    "y": "int64",  # 1 = the task's positive class
    "subtype": "str",  # normal / bacteria / virus
    "patient_id": "str",
    "family": "str",  # file-name family, see `file_family`
    "width": "int64",  # original size in pixels (only when the index has it)
    "height": "int64",
    "aspect": "float64",  # width / height
    "probability": "float64",  # the model's probability of the positive class
    "calibrated_probability": "float64",  # after the calibration fitted on the out-of-fold predictions (NaN: none)
    "threshold": "float64",
    "threshold_on": "str",  # which probability the threshold applies to: "raw" or "calibrated"
    "decision": "int64",  # 1 = called positive
    "predicted": "str",  # the class name of the decision
    "correct": "bool",
}
OPTIONAL_COLUMNS = ("width", "height", "aspect")
STRING_COLUMNS = [c for c, t in COLUMNS.items() if t == "str"]
FLOAT_COLUMNS = [c for c, t in COLUMNS.items() if t == "float64"]


# ---------------------------------------------------------------------------------------------------------------
# The predictions table
# ---------------------------------------------------------------------------------------------------------------

def predictions_frame(index: pd.DataFrame, positions: Any, split: str, task: str, probability: Any,
                      calibrated: Any | None, threshold: float, threshold_on: str = "raw") -> pd.DataFrame:
    """One row per scored image of `task` on `split` (the columns and dtypes of `COLUMNS`).

    `positions` index the rows of `index` that were scored (as `cxr.train.predict_split` returns them),
    `probability` is the model's probability of the positive class for each, `calibrated` the calibrated
    probability (or None: the column is NaN). `threshold_on` says which of the two `threshold` was chosen on:
    "raw" (the decision is probability >= threshold) or "calibrated" (calibrated_probability >= threshold).
    width, height and aspect are filled when the index has width and height. Raises ValueError when the
    lengths disagree, a probability is missing, a row is not of `split` or not part of `task`.
    """
    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASK_CLASSES)}")
    if threshold_on not in THRESHOLD_ON:
        raise ValueError(f"threshold_on must be one of {THRESHOLD_ON}, not {threshold_on!r}")
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    p = np.asarray(probability, dtype="float64").reshape(-1)
    c = (np.full(p.shape, np.nan) if calibrated is None
         else np.asarray(calibrated, dtype="float64").reshape(-1))
    if not (len(positions) == len(p) == len(c)):
        raise ValueError(f"{len(positions)} positions, {len(p)} probabilities and {len(c)} calibrated probabilities")
    if len(np.unique(positions)) != len(positions):
        raise ValueError("positions repeat an image")
    if not np.isfinite(p).all():
        raise ValueError("a probability is missing (NaN or infinite)")
    if ((p < 0) | (p > 1)).any() or ((c < 0) | (c > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    if threshold_on == "calibrated" and not np.isfinite(c).all():
        raise ValueError("threshold_on='calibrated' needs a finite calibrated probability for every image")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, not {threshold!r}")

    rows = index.iloc[positions]
    expected = OOF_SOURCE.get(split, split)  # out-of-fold predictions are of training rows
    if "split" in rows and not rows["split"].eq(expected).all():
        found = sorted(set(rows["split"]) - {expected})
        raise ValueError(f"positions include rows of split(s) {found}, not only {expected!r}")
    column, classes = TASK_CLASSES[task]
    label = rows[column].astype(str).to_numpy()
    unknown = sorted(set(label) - set(classes))
    if unknown:
        raise ValueError(f"rows with {column} {unknown} are not part of task {task!r} (classes {classes})")
    y = (label == classes[1]).astype("int64")
    score = c if threshold_on == "calibrated" else p
    decision = (score >= threshold).astype("int64")

    frame = pd.DataFrame({
        "path": rows["path"].to_numpy(),
        "split": split,
        "task": task,
        "label": label,
        "y": y,
        "subtype": rows["subtype"].to_numpy(),
        "patient_id": rows["patient_id"].to_numpy(),
        "family": [file_family(path) for path in rows["path"]],
    })
    if {"width", "height"} <= set(rows.columns):
        frame["width"] = rows["width"].to_numpy()
        frame["height"] = rows["height"].to_numpy()
        frame["aspect"] = frame["width"] / frame["height"]
    frame["probability"] = p
    frame["calibrated_probability"] = c
    frame["threshold"] = float(threshold)
    frame["threshold_on"] = threshold_on
    frame["decision"] = decision
    frame["predicted"] = np.asarray(classes, dtype=object)[decision]
    frame["correct"] = decision == y
    return _with_dtypes(frame)


def _with_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of `COLUMNS` in their order and dtypes (optional ones only when present), others after."""
    known = [c for c in COLUMNS if c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"a predictions table needs the columns {missing}")
    frame = frame[known + [c for c in frame.columns if c not in COLUMNS]].reset_index(drop=True)
    for c in known:
        if COLUMNS[c] == "str":
            if frame[c].isna().any():
                raise ValueError(f"column {c!r} has missing values")
            frame[c] = frame[c].astype(str)
        elif COLUMNS[c] == "bool" and frame[c].dtype != bool:
            values = frame[c].astype(str).str.lower().map({"true": True, "false": False, "1": True, "0": False})
            if values.isna().any():
                raise ValueError(f"column {c!r} must hold True/False")
            frame[c] = values.astype(bool)
        else:
            frame[c] = frame[c].astype(COLUMNS[c])
    return frame


def predictions_path(run_dir: str | Path, task: str) -> Path:
    """Where a task's predictions live in a run folder: `predictions_<task>.csv`."""
    return Path(run_dir) / f"predictions_{task}.csv"


def write_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a predictions table (e.g. `pd.concat([val_frame, test_frame])` of one task) as CSV, atomically.

    Floats are written in their shortest exact form, so `read_predictions` gives back the same numbers.
    Raises ValueError when an image appears twice for one split and task.
    """
    frame = _with_dtypes(frame)
    duplicated = frame.duplicated(["task", "split", "path"])
    if duplicated.any():
        raise ValueError(f"{int(duplicated.sum())} images appear twice, e.g. {frame.loc[duplicated, 'path'].iloc[0]}")
    return atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a file written by `write_predictions`: the same rows, columns, values and dtypes."""
    header = pd.read_csv(path, nrows=0).columns
    floats = [c for c in FLOAT_COLUMNS if c in header]
    frame = pd.read_csv(
        path,
        dtype={c: str for c in header if COLUMNS.get(c) == "str"},
        keep_default_na=False,  # a path or id is never read as missing ...
        na_values={c: ["", "NaN", "nan"] for c in floats},  # ... an empty float is
        float_precision="round_trip",
    )
    return _with_dtypes(frame)


# ---------------------------------------------------------------------------------------------------------------
# Error analysis
# ---------------------------------------------------------------------------------------------------------------

def wilson_interval(errors: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion errors / n (`metrics.wilson_bounds`; NaN, NaN when n is 0)."""
    if n <= 0:
        return math.nan, math.nan
    return wilson_bounds(errors / n, n, level)


RATE_COLUMNS = ["n", "patients", "errors", "rate", "ci_low", "ci_high", "false_positives", "false_negatives"]


def _rates(frame: pd.DataFrame, by: str | pd.Series | None) -> pd.DataFrame:
    """Error counts and rates per group of `by` (one row "all" when None)."""
    wrong = ~frame["correct"].to_numpy(bool)
    data = pd.DataFrame({
        "group": "all" if by is None else (frame[by] if isinstance(by, str) else by).array,  # keeps bin order
        "patient_id": frame["patient_id"].to_numpy(),
        "error": wrong,
        "fp": wrong & (frame["y"].to_numpy() == 0),
        "fn": wrong & (frame["y"].to_numpy() == 1),
    })
    table = data.groupby("group", observed=True, sort=True).agg(
        n=("error", "size"), patients=("patient_id", "nunique"), errors=("error", "sum"),
        false_positives=("fp", "sum"), false_negatives=("fn", "sum"))
    table = table.astype("int64")
    table["rate"] = table["errors"] / table["n"]
    ci = [wilson_interval(int(e), int(n)) for e, n in zip(table["errors"], table["n"])]
    table["ci_low"] = [lo for lo, _ in ci]
    table["ci_high"] = [hi for _, hi in ci]
    table.index.name = None if by is None else (by if isinstance(by, str) else by.name)
    return table[RATE_COLUMNS]


def _quantile_bins(values: pd.Series, q: int, name: str, fmt: str) -> pd.Series:
    """Quantile bins of `values` as an ordered categorical labelled by their range; one bin when all are equal."""
    values = values.astype("float64")
    if values.nunique() <= 1:
        only = values.iloc[0] if len(values) else math.nan
        return pd.Series(pd.Categorical([f"all {only:{fmt}}"] * len(values)), index=values.index, name=name)
    codes, edges = pd.qcut(values, q=q, labels=False, retbins=True, duplicates="drop")
    labels = [f"{edges[i]:{fmt}}-{edges[i + 1]:{fmt}}" for i in range(len(edges) - 1)]
    return pd.Series(pd.Categorical.from_codes(codes.astype(int), labels, ordered=True), index=values.index,
                     name=name)


def error_analysis(frame: pd.DataFrame, split: str | None = "test", q: int = 4) -> dict[str, pd.DataFrame]:
    """Error rates of one task on one split, each with n, patients, errors, rate, a Wilson 95% interval
    (ci_low, ci_high) and the false positives / negatives among the errors.

    Tables: "overall"; "by_class" (the error rate among the true class: the false-positive rate of the negative
    class, the false-negative rate of the positive one); "by_subtype"; "by_family"; "by_size" (quantile bins of
    the original long side, max(width, height), in pixels; `q` bins, fewer when sizes tie); "by_aspect" (quantile
    bins of width / height); "fpr_by_family", "fpr_by_size", "fpr_by_aspect" (the false-positive rate among the
    negatives, e.g. normal images, per file-name family, size bin and aspect bin: free of the class mix that
    differs between bins). Size and aspect tables are left out when the frame has no width and height.

    The intervals treat images as independent; images of one patient are not, so they are somewhat too narrow
    where patients contribute several images (the `patients` column says how many there are). `split=None`
    takes every row of the frame.
    """
    if split is not None:
        frame = frame[frame["split"] == split]
    if frame.empty:
        raise ValueError(f"no predictions for split {split!r}")
    if frame["task"].nunique() != 1:
        raise ValueError(f"one task at a time, not {sorted(frame['task'].unique())}")
    frame = frame.reset_index(drop=True)
    out = {
        "overall": _rates(frame, None),
        "by_class": _rates(frame, "label"),
        "by_subtype": _rates(frame, "subtype"),
        "by_family": _rates(frame, "family"),
    }
    negative = frame["y"].to_numpy() == 0
    groups: dict[str, pd.Series] = {"family": frame["family"]}
    if {"width", "height"} <= set(frame.columns):
        # bins from the whole split, so that the false-positive tables use the same bins as the error tables
        groups["size"] = _quantile_bins(frame[["width", "height"]].max(axis=1), q, "long side (px)", ".0f")
        groups["aspect"] = _quantile_bins(frame["width"] / frame["height"], q, "aspect (width/height)", ".2f")
        out["by_size"] = _rates(frame, groups["size"])
        out["by_aspect"] = _rates(frame, groups["aspect"])
    for name, by in groups.items():
        if negative.any():
            out[f"fpr_by_{name}"] = _rates(frame[negative], by[negative]).drop(columns=["false_negatives"])
        else:
            out[f"fpr_by_{name}"] = pd.DataFrame(columns=[c for c in RATE_COLUMNS if c != "false_negatives"])
    return out


def most_confident_errors(frame: pd.DataFrame, k: int = 5, split: str | None = "test") -> pd.DataFrame:
    """The k false positives with the highest score and the k false negatives with the lowest, in that order
    (the most confident first within each), with a column "error" ("false positive" / "false negative").

    The score is the probability the threshold was applied to (calibrated or raw, per row's `threshold_on`).
    """
    if split is not None:
        frame = frame[frame["split"] == split]
    frame = frame.assign(score=np.where(frame["threshold_on"] == "calibrated", frame["calibrated_probability"],
                                        frame["probability"]))
    fp = frame[(frame["decision"] == 1) & (frame["y"] == 0)]
    fn = frame[(frame["decision"] == 0) & (frame["y"] == 1)]
    fp = fp.sort_values(["score", "path"], ascending=[False, True], kind="stable").head(k)
    fn = fn.sort_values(["score", "path"], ascending=[True, True], kind="stable").head(k)
    out = pd.concat([fp.assign(error="false positive"), fn.assign(error="false negative")], ignore_index=True)
    return out[["error"] + [c for c in out.columns if c != "error"]]
