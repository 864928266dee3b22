"""A trivial baseline: how much of the task six simple image statistics already solve.

`image_statistics` measures, on the images the network sees (the cached uint8 S x S images), six whole-image
numbers with no learned feature and no segmentation: brightness (mean), spread (standard deviation, 5th and 95th percentiles), mean gradient
magnitude (Sobel) and Laplacian energy (mean squared Laplacian; sharpness). `fit_baseline` fits a standardised
logistic regression (scikit-learn) on them, cross-validated on the study's own folds of the training children:
its out-of-fold AUROC says how easy the task is for statistics a radiologist would not use, and where a shortcut
could live. They are not free of anatomy: `gradient_by_region` measures how well the mean gradient separates the
classes inside a central lung box, outside it and on the whole image (inside the box it reads the lung fields'
edge contrast, which opacification lowers); and where the full-resolution originals of one class are larger, their
224-px copies are sharper. The baseline is declared in the protocol and scored on the test split once, like the CNN
(`cxr.pipeline.score_baseline`, one ledger line); `cxr.reporting.describe_baseline` says it in words.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

STATISTICS = ("brightness", "spread", "p05", "p95", "gradient", "laplacian_energy")
STATISTIC_LABELS = {"brightness": "mean grey level", "spread": "standard deviation", "p05": "5th percentile",
                    "p95": "95th percentile", "gradient": "mean gradient magnitude (Sobel)",
                    "laplacian_energy": "Laplacian energy (sharpness)"}


def image_statistics(images: np.ndarray, chunk: int = 256) -> pd.DataFrame:
    """The six statistics (`STATISTICS`) of each uint8 image of (n, S, S[, 1]), one row per image."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    rows = []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float32)
        gx, gy = ndimage.sobel(x, axis=2), ndimage.sobel(x, axis=1)
        lap = ndimage.laplace(x, mode="nearest")
        flat = x.reshape(len(x), -1)
        rows.append(np.c_[flat.mean(1), flat.std(1), np.percentile(flat, 5, axis=1),
                          np.percentile(flat, 95, axis=1), np.hypot(gx, gy).reshape(len(x), -1).mean(1),
                          (lap.reshape(len(x), -1) ** 2).mean(1)])
    return pd.DataFrame(np.concatenate(rows) if rows else np.zeros((0, len(STATISTICS))), columns=list(STATISTICS))


def _model(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def fit_baseline(features: pd.DataFrame, y: np.ndarray, folds: np.ndarray, seed: int) -> dict[str, Any]:
    """Cross-validate the logistic regression on the given folds and fit it on all rows.

    Returns {"oof_p" (out-of-fold probabilities), "oof_auroc", "coefficients" (standardised, per statistic),
    "model" (fitted on every row)}."""
    y = np.asarray(y).astype(int)
    oof = np.full(len(y), np.nan)
    for f in np.unique(folds):
        held = folds == f
        oof[held] = _model(seed).fit(features[~held], y[~held]).predict_proba(features[held])[:, 1]
    model = _model(seed).fit(features, y)
    coefficients = dict(zip(features.columns, model[-1].coef_[0].tolist()))
    return {"oof_p": oof, "oof_auroc": float(roc_auc_score(y, oof)), "coefficients": coefficients, "model": model}


def univariate_auroc(features: pd.DataFrame, y: np.ndarray) -> pd.Series:
    """The AUROC of each statistic alone (max(AUROC, 1 - AUROC): how well it separates, whichever its sign)."""
    out = {c: roc_auc_score(y, features[c]) for c in features.columns}
    return pd.Series({c: max(v, 1 - v) for c, v in out.items()}, name="AUROC alone")


LUNG_BOX = (0.20, 0.80, 0.15, 0.85)  # (top, bottom, left, right) fractions: the central box where the lungs lie


def gradient_by_region(images: np.ndarray, index: pd.DataFrame, box: tuple = LUNG_BOX,
                       split: str = "train") -> pd.DataFrame:
    """How well the mean gradient magnitude (Sobel) separates pneumonia from normal on the whole image, inside the
    central lung `box` and outside it: the AUROC of minus the mean gradient (pneumonia images are flatter) on the
    rows of `split` (the training children by default: no test label is read). `images` and `index` row for row."""
    rows = np.flatnonzero(index["split"].eq(split).to_numpy())
    y = index["label"].iloc[rows].eq("PNEUMONIA").to_numpy().astype(int)
    size = np.asarray(images[:1]).shape[1:3]
    inside = np.zeros(size, bool)
    inside[int(box[0] * size[0]):int(box[1] * size[0]), int(box[2] * size[1]):int(box[3] * size[1])] = True
    sums = {"whole image": [], "central lung box": [], "outside the box": []}
    for start in range(0, len(rows), 256):
        x = np.asarray(images[rows[start:start + 256]], np.float32)
        x = x[..., 0] if x.ndim == 4 else x
        g = np.hypot(ndimage.sobel(x, axis=2), ndimage.sobel(x, axis=1))
        sums["whole image"].append(g.mean(axis=(1, 2)))
        sums["central lung box"].append(g[:, inside].mean(axis=1))
        sums["outside the box"].append(g[:, ~inside].mean(axis=1))
    return pd.DataFrame([{"region": name, "images": len(rows), "auroc": round(float(roc_auc_score(y, -np.concatenate(v))), 3)}
                         for name, v in sums.items()]).set_index("region")
