"""Two models scored on the same test images, compared as paired data (the images are the same, so overlapping or
separate intervals decide nothing): McNemar's exact test on the calls within each class, and the difference of
AUROC with a patient-clustered bootstrap interval (children resampled within their class, both models scored on
the same resample). `compare_predictions` reads two runs' committed prediction files (`doc/predictions.csv`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

from cxr.evaluate.resample import percentile, resample_indices


def mcnemar(called_a: Any, called_b: Any) -> dict[str, Any]:
    """McNemar's exact (binomial) test of two sets of 0/1 calls on the same images: `a_only` (called positive by
    A and not B), `b_only`, and the two-sided p-value of a_only against a_only + b_only at 1/2 (1.0 when they never
    disagree)."""
    a, b = np.asarray(called_a).astype(bool).ravel(), np.asarray(called_b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two sets of calls differ in length: {a.size} vs {b.size}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"n": int(a.size), "a_only": a_only, "b_only": b_only, "p_value": float(p)}


def paired_auroc(y: Any, p_a: Any, p_b: Any, groups: Any = None, n_bootstrap: int = 2000, ci_level: float = 0.95,
                 seed: int = 0) -> dict[str, Any]:
    """AUROC of A minus AUROC of B on the same images, with a percentile interval from the patient-clustered
    bootstrap (`groups`: the child of each image; children resampled within their class, both models on the same
    resample) and the two-sided bootstrap p-value of no difference (twice the smaller tail share at 0)."""
    y = np.asarray(y).astype(int).ravel()
    p_a, p_b = np.asarray(p_a, float).ravel(), np.asarray(p_b, float).ravel()
    if not (y.shape == p_a.shape == p_b.shape):
        raise ValueError("labels and the two models' probabilities must have one entry per image")
    if len(np.unique(y)) < 2:
        raise ValueError("the paired AUROC needs both classes")
    rng = np.random.default_rng(seed)
    draws = np.empty(n_bootstrap)
    for k in range(n_bootstrap):
        idx = resample_indices(y, groups, rng)
        draws[k] = skm.roc_auc_score(y[idx], p_a[idx]) - skm.roc_auc_score(y[idx], p_b[idx])
    low, high = percentile(draws, ci_level)
    tail = min(np.mean(draws <= 0), np.mean(draws >= 0))
    return {"difference": float(skm.roc_auc_score(y, p_a) - skm.roc_auc_score(y, p_b)), "ci_low": low,
            "ci_high": high, "p_value": float(min(1.0, 2 * tail)), "n_bootstrap": n_bootstrap, "ci_level": ci_level}


def compare_predictions(now: pd.DataFrame, before: pd.DataFrame, task: str, threshold_now: float,
                        threshold_before: float, n_bootstrap: int = 2000, ci_level: float = 0.95,
                        seed: int = 0) -> dict[str, Any]:
    """This run against an earlier one on the test images both scored (`doc/predictions.csv` of each: columns
    task, split, path, y, child, probability), matched by path: McNemar on the normals' calls and on the positives'
    calls, each at its own run's threshold, and the paired AUROC difference (clustered by this run's children).
    Images only one run scored are counted in `unmatched`, not compared."""
    def test_rows(frame: pd.DataFrame) -> pd.DataFrame:
        rows = frame[(frame["task"] == task) & (frame["split"] == "test")]
        return rows.drop_duplicates("path").set_index("path")

    a, b = test_rows(now), test_rows(before)
    common = a.index.intersection(b.index)
    if not len(common):
        raise ValueError(f"the two prediction files share no test image of task {task!r}")
    a, b = a.loc[common], b.loc[common]
    if not (a["y"].to_numpy() == b["y"].to_numpy()).all():
        raise ValueError("the two prediction files disagree on the labels of the same images")
    y = a["y"].to_numpy(int)
    called_a, called_b = a["probability"].to_numpy() >= threshold_now, b["probability"].to_numpy() >= threshold_before
    return {"n": int(len(common)), "unmatched": int(len(test_rows(now)) + len(test_rows(before)) - 2 * len(common)),
            "normals": mcnemar(called_a[y == 0], called_b[y == 0]),
            "positives": mcnemar(called_a[y == 1], called_b[y == 1]),
            "auroc": paired_auroc(y, a["probability"], b["probability"], a["child"].to_numpy(), n_bootstrap,
                                  ci_level, seed)}


def stage_comparison(selection: pd.DataFrame, stage_oof: dict[str, np.ndarray], y: Any, groups: Any,
                     n_bootstrap: int = 2000, ci_level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The recipe's stages side by side on the same out-of-fold images (a paired ablation of `cxr.train.fit`'s
    candidates): per stage of `selection` (its rows: stage, best_epoch, selection_loss, oof_loss, oof_auroc, kept),
    the criterion that chose (selection loss), the raw OOF log-loss and AUROC, and the AUROC difference from the
    kept stage with its patient-clustered paired bootstrap interval (`paired_auroc`; 0 for the kept stage itself).
    `stage_oof` holds each stage's OOF probabilities in the order of `y` and `groups`."""
    sel = selection.set_index("stage")
    kept = sel.index[sel["kept"].astype(bool)]
    if len(kept) != 1:
        raise ValueError(f"selection must mark exactly one stage kept, not {list(kept)}")
    kept = kept[0]
    rows = []
    for stage, r in sel.iterrows():
        row = {"stage": stage, "epoch": int(r["best_epoch"]), "selection loss": float(r["selection_loss"]),
               "OOF log-loss (raw)": float(r["oof_loss"]), "OOF AUROC": float(r["oof_auroc"]),
               "AUROC - kept": 0.0, "95% CI": "", "kept": bool(r["kept"])}
        p = stage_oof.get(stage)
        if stage != kept and p is not None and np.isfinite(p).all():
            d = paired_auroc(y, p, stage_oof[kept], groups, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed)
            row["AUROC - kept"], row["95% CI"] = d["difference"], f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
        elif stage != kept:
            row["AUROC - kept"] = float("nan")
        rows.append(row)
    table = pd.DataFrame(rows).set_index("stage")
    return table.rename(columns={"95% CI": f"{ci_level:.0%} CI"})
