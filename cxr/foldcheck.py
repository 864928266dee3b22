"""Which validation foresees the test? Random folds against block folds (contiguous id ranges, as the official split
is cut), with and without the marker zones masked, on the training children only (the test split is never read).

A cheap, frozen-feature version of the study's recipe: ImageNet features of the backbone are computed once per
image (`cxr.model.feature_model`), a logistic head (scikit-learn) is fitted in every fold, and each training image
gets one out-of-fold (OOF) probability. Per design (fold scheme x marker handling) it reports the OOF AUROC and
log-loss, and the operating point as the protocol uses it, CROSS-FITTED: the threshold keeping the target
sensitivity is chosen on the other folds' OOF predictions and applied to the held-out fold, so the reported
sensitivity and specificity are those of a rule that never saw the fold it is judged on; the worst fold beside the
pooled figure. The stamp counterfactual (`cxr.explain.checks.stamp_counterfactual`) runs on the OOF normals, each
scored by the head of its own fold. `python -m cxr fold-check` runs it and writes `doc/fold_check.json`.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr.config import Config
from cxr.data import Prepared
from cxr.data.split import FOLD_SCHEMES, split_by_patient

HEAD_C = 0.05  # inverse L2 strength of the logistic head on standardised features (fixed, not tuned)


def folds_for(prepared: Prepared, rows: np.ndarray, scheme: str, n_folds: int, seed: int) -> np.ndarray:
    """The fold of each training row at `rows` under `scheme` ("random" or "blocks"), split as `prepare` splits."""
    columns = [c for c in prepared.index.columns if c not in ("split", "fold", "excluded_reason")]
    with contextlib.redirect_stdout(io.StringIO()):  # the split's notes were printed once already by `prepare`
        split = split_by_patient(prepared.index[columns], n_folds, seed, near=prepared.near_duplicates,
                                 scheme=scheme)
    fold = split.set_index("path")["fold"]
    return fold.loc[prepared.index["path"].to_numpy()[rows]].to_numpy().astype(int)


def features(config: Config, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Pooled ImageNet backbone features of `images` (n, S, S[, 1]) uint8, through the model's own first layers
    (so `config.marker_zones` masks exactly as training and `predict` do)."""
    from cxr import model as cxr_model
    from cxr.train.batches import padded_predict

    images = np.asarray(images)
    batch = images if images.ndim == 4 else images[..., None]
    net = cxr_model.feature_model(cxr_model.build_model(config))
    return np.asarray(padded_predict(net, batch, batch_size), dtype=np.float32)


def head() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=HEAD_C, max_iter=3000))


def oof_heads(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, dict[int, Any]]:
    """Out-of-fold probabilities of a logistic head fitted in each fold, and the fitted heads by fold."""
    p = np.full(len(y), np.nan)
    heads = {}
    for f in np.unique(fold):
        held = fold == f
        heads[int(f)] = head().fit(x[~held], y[~held])
        p[held] = heads[int(f)].predict_proba(x[held])[:, 1]
    return p, heads


def operating_table(y: np.ndarray, p: np.ndarray, fold: np.ndarray, target: float) -> pd.DataFrame:
    """The study's cross-fitted rule (`cxr.evaluate.threshold.cross_fitted`) with the "sensitivity" policy: per
    held-out fold, the threshold keeping `target` sensitivity on the OTHER folds' OOF predictions, and the
    sensitivity and specificity it gives on this fold; rows per fold, then "pooled". In the fold check's columns
    (fold, threshold, images, sensitivity, specificity) and its counted specificity, as doc/fold_check.json holds."""
    from cxr.evaluate import threshold as thresholds

    def rule(y_other: np.ndarray, p_other: np.ndarray) -> float:
        return thresholds.choose(y_other, p_other, "sensitivity", target_sensitivity=target)

    table = thresholds.cross_fitted(y, p, fold, rule, count_kept=True).rename(columns={"n": "images"})
    return table[["fold", "threshold", "images", "sensitivity", "specificity"]]


def fold_check(config: Config, prepared: Prepared, schemes: tuple[str, ...] = FOLD_SCHEMES,
               markers: tuple[bool, ...] = (False, True), counterfactual: bool = True) -> dict[str, Any]:
    """Every design (fold scheme x marker zones) on the training children of the primary task: OOF AUROC,
    log-loss, the cross-fitted operating point (pooled and worst fold) and, with `counterfactual`, the stamp
    pasted onto the OOF normals each scored by its own fold's head. Returns a JSON-able document."""
    from cxr.config import primary_task
    from cxr.data.markers import paste_stamp
    from cxr.explain.checks import counterfactual_summary

    rows = prepared.rows("train", primary_task())
    y = prepared.labels(primary_task(), rows).astype(int)
    target = config.target_sensitivity
    designs = []
    for masked in markers:
        cfg = config.replace(marker_zones=masked)
        x = features(cfg, prepared.batch(rows), int(config.batch_size or 32))
        normals = np.flatnonzero(y == 0)
        stamped = None
        if counterfactual:
            stamped = features(cfg, np.stack([paste_stamp(prepared.images[rows[i]]) for i in normals]),
                               int(config.batch_size or 32))
        for scheme in schemes:
            fold = folds_for(prepared, rows, scheme, config.n_folds, config.split_seed)
            p, heads = oof_heads(x, y, fold)
            op = operating_table(y, p, fold, target)
            per_fold = op[op["fold"] != "pooled"]
            design = {"fold_scheme": scheme, "marker_zones": masked, "images": len(y),
                      "oof_auroc": float(roc_auc_score(y, p)), "oof_log_loss": float(log_loss(y, p)),
                      "sensitivity": float(op["sensitivity"].iloc[-1]), "specificity": float(op["specificity"].iloc[-1]),
                      "worst_fold_specificity": float(per_fold["specificity"].min()),
                      "worst_fold": str(per_fold.loc[per_fold["specificity"].idxmin(), "fold"]),
                      "folds": op.to_dict(orient="records")}
            if stamped is not None:  # each OOF normal scored by its own fold's head, at that fold's threshold
                t_fold = op.set_index("fold")["threshold"]
                own = np.array([t_fold[str(f)] for f in fold[normals]])
                before, after = np.empty(len(normals)), np.empty(len(normals))
                for f, h in heads.items():
                    sel = fold[normals] == f
                    before[sel] = h.predict_proba(x[normals][sel])[:, 1]
                    after[sel] = h.predict_proba(stamped[sel])[:, 1]
                called_normal = before < own
                design["counterfactual"] = counterfactual_summary(before[called_normal], after[called_normal],
                                                                  own[called_normal])
            designs.append(design)
    return {"what": "frozen ImageNet features + a logistic head per fold, training children only; the operating "
                    f"point cross-fitted (sensitivity target {target}); the test split is never read",
            "backbone": config.backbone, "image_size": config.image_size, "n_folds": config.n_folds,
            "head_C": HEAD_C, "designs": designs}


FOLD_CHECK = Path(__file__).resolve().parents[1] / "doc" / "fold_check.json"  # the committed document


def load(path: str | Path = FOLD_CHECK) -> dict[str, Any]:
    """The committed fold-check document (`python -m cxr fold-check` writes it)."""
    return json.loads(Path(path).read_text())


def table(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per design: OOF AUROC, log-loss, cross-fitted sensitivity and specificity, the worst fold, and the
    counterfactual's changed share and mean rise."""
    rows = []
    for d in doc["designs"]:
        cf = d.get("counterfactual") or {}
        rows.append({"fold scheme": d["fold_scheme"], "marker zones": "masked" if d["marker_zones"] else "kept",
                     "OOF AUROC": round(d["oof_auroc"], 3), "OOF log-loss": round(d["oof_log_loss"], 3),
                     "sensitivity": round(d["sensitivity"], 3), "specificity": round(d["specificity"], 3),
                     "worst fold specificity": round(d["worst_fold_specificity"], 3),
                     "stamp flips": None if not cf else f"{cf['changed']} of {cf['n']}",
                     "stamp mean rise": None if not cf else round(cf["mean_rise"], 3)})
    return pd.DataFrame(rows)
