"""Which cases to explain, by rule (never by hand). What their maps say in words: `cxr.reporting.describe_cases`."""
from __future__ import annotations

import numpy as np
import pandas as pd

CELLS = ("TP", "TN", "FP", "FN")
SCALE_NOTE = ("one scale for all maps: clear = no evidence, yellow = strongest;\n"  # `cxr.plots.explain.CMAP`
              "full yellow = the 99th percentile of the heat of all test maps")  # as `map_scale` sets it


def confident_cases(y, p, threshold: float, cells=CELLS, per_cell: int = 2) -> pd.DataFrame:
    """The `per_cell` most confident cases of each confusion cell in `cells` (predicted positive when
    p >= threshold): TP and FP by the highest p, TN and FN by the lowest (ties by position). One row per case, in
    the order of `cells`; the index is the case's position in (y, p); columns cell, y, p."""
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"y ({len(y)}) and p ({len(p)}) differ in length")
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise ValueError(f"unknown cells {unknown}; choose from {CELLS}")
    called = p >= threshold
    masks = {"TP": (y == 1) & called, "TN": (y == 0) & ~called, "FP": (y == 0) & called, "FN": (y == 1) & ~called}
    rows = []
    for cell in cells:
        idx = np.flatnonzero(masks[cell])
        key = -p[idx] if cell in ("TP", "FP") else p[idx]
        for i in idx[np.argsort(key, kind="stable")][:per_cell]:
            rows.append((int(i), cell, int(y[i]), float(p[i])))
    return pd.DataFrame(rows, columns=["position", "cell", "y", "p"]).set_index("position")


def near_threshold_cases(y, p, threshold: float, k: int = 2) -> pd.DataFrame:
    """The cases whose probability lies closest to `threshold`: the `k` closest below it (called negative) and the
    `k` closest at or above it (called positive), fewer where a side has fewer; ties by position. One row per case
    in rising p; the index is the case's position in (y, p); columns cell (TP, TN, FP or FN at the threshold), y,
    p and distance (|p - threshold|)."""
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"y ({len(y)}) and p ({len(p)}) differ in length")
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    below, above = np.flatnonzero(p < threshold), np.flatnonzero(p >= threshold)
    picked = np.r_[below[np.argsort(threshold - p[below], kind="stable")][:k],
                   above[np.argsort(p[above] - threshold, kind="stable")][:k]].astype(int)
    picked = picked[np.argsort(p[picked], kind="stable")]
    called = p[picked] >= threshold
    cell = np.where(y[picked] == 1, np.where(called, "TP", "FN"), np.where(called, "FP", "TN"))
    return pd.DataFrame({"position": picked, "cell": cell, "y": y[picked], "p": p[picked],
                         "distance": np.abs(p[picked] - threshold)}).set_index("position")
