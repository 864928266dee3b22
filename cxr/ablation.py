"""The recipe ablation, on the training children only (the official test split is never read).

Each candidate recipe (`CANDIDATES`, the "ablation" sets of `cxr.presets`: today's recipe, the resampling path,
wider intensity changes, border masking, larger backbones, each on top of the recipe before the ablation) is
trained by the study's own cross-validation (`cxr.train.fit`) on the same seeded subset of the training children,
keeping their folds, and compared on its pooled out-of-fold (OOF) predictions:

- log-loss (the selection metric), AUROC, and specificity at the threshold that keeps the protocol's sensitivity
  on the OOF predictions, each with a 95% interval from a bootstrap of children (stratified by label); the
  log-loss difference from the first candidate, paired by image, with its interval;
- a held-out sample of OTHER training children (never in the subset) scored by the fold ensemble and by each
  member alone: what averaging the fold models buys;
- the full-resolution originals (`../shared/data/raw-sample/`) against their 224-px copies in the data, each
  scored by models that never saw its child (its fold's model, or the whole ensemble when its child is outside
  the subset): label agreement at the OOF threshold and the largest |delta p|.

`python -m cxr ablation` runs it; each candidate's result is kept in `<run>/ablation/<name>.json` (reused when the
settings match, so an interrupted run resumes), and the document goes to `--out` (the committed
`doc/ablation.json`, shown by the notebook).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score

from cxr.config import PRIMARY_TASK, Config
from cxr.presets import Overrides, overrides_in
from cxr.data import Prepared, raw_sample_dir
from cxr.evaluate.shift import raw_sample_agreement
from cxr.io import write_json

CANDIDATES: dict[str, Overrides] = overrides_in("ablation")  # name -> its description and changes, in run order


def candidate_config(config: Config, name: str) -> Config:
    """The Config of candidate `name`: `config` with the recipe before the ablation (the candidate's base set),
    then the candidate's changes."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; choose from {list(CANDIDATES)}")
    return config.replace(**CANDIDATES[name].resolved())


def subset(prepared: Prepared, fraction: float, dev_images: int, seed: int) -> tuple[Prepared, np.ndarray]:
    """A view of the training children for the ablation: a seeded `fraction` of the children of every fold (their
    folds kept; split "train"), and about `dev_images` images of other training children as a held-out set (split
    "test" IN THIS VIEW ONLY: they are training children; the official test split is not in the view). Returns
    (the view, the positions of its rows in `prepared`)."""
    index = prepared.index
    train = index[index["split"].eq("train")]
    children = train.groupby("patient_id", sort=True)["fold"].first()
    rng = np.random.default_rng(seed)
    chosen = set()
    for _, kids in children.groupby(children, sort=True):
        k = max(1, int(round(fraction * len(kids))))
        chosen |= set(rng.choice(kids.index.to_numpy(), size=k, replace=False))
    others = np.array(sorted(set(children.index) - chosen))
    rng.shuffle(others)
    sizes = train.groupby("patient_id").size()
    dev = others[:max(1, int(np.searchsorted(np.cumsum(sizes.loc[others].to_numpy()), dev_images)) + 1)]
    in_subset = index["patient_id"].isin(chosen) & index["split"].eq("train")
    in_dev = index["patient_id"].isin(set(dev)) & index["split"].eq("train")
    positions = np.flatnonzero(in_subset | in_dev)
    view = index.iloc[positions].reset_index(drop=True).copy()
    view.loc[in_dev.to_numpy()[positions], "split"] = "test"
    view.loc[in_dev.to_numpy()[positions], "fold"] = -1
    return (Prepared(index=view, skipped=prepared.skipped, images=np.asarray(prepared.images[positions]),
                     root=prepared.root, source=prepared.source), positions)


def threshold_at_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The highest threshold (positive when p >= t) whose sensitivity on (y, p) reaches `target`."""
    from cxr.evaluate import threshold as thresholds

    return thresholds.choose(y, p, "sensitivity", target_sensitivity=target)


def _metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray, target: float) -> tuple[float, float, float]:
    """(log-loss, AUROC, specificity at the weighted-sensitivity threshold) with image weights w."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(np.average(-(y * np.log(p) + (1 - y) * np.log(1 - p)), weights=w))
    auroc = float(roc_auc_score(y, p, sample_weight=w))
    pos = np.sort(np.repeat(p[y == 1], w[y == 1].astype(int)))
    t = pos[int(np.floor((1 - target) * len(pos)))] if len(pos) else 0.5  # highest t keeping >= target
    neg = y == 0
    spec = float(np.average(p[neg] < t, weights=w[neg])) if w[neg].sum() else float("nan")
    return loss, auroc, spec


def child_bootstrap(y: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n_images) integer image weights: children resampled with replacement within their label."""
    codes, uniques = pd.factorize(groups)
    label = pd.Series(y).groupby(codes).max().to_numpy()
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_bootstrap, len(y)))
    for cls in (0, 1):
        kids = np.flatnonzero(label == cls)
        draws = rng.choice(kids, size=(n_bootstrap, len(kids)))
        counts = np.zeros((n_bootstrap, len(uniques)))
        np.add.at(counts, (np.arange(n_bootstrap)[:, None], draws), 1)
        weights += counts[:, codes] * (label[codes] == cls)
    return weights


def oof_summary(y: np.ndarray, p: np.ndarray, groups: np.ndarray, target: float, weights: np.ndarray,
                ci_level: float = 0.95) -> dict[str, dict[str, float]]:
    """log_loss, auroc and specificity (at the threshold keeping `target` sensitivity) with percentile intervals
    over the child bootstrap `weights`."""
    point = _metrics(y, p, np.ones(len(y)), target)
    draws = np.array([_metrics(y, p, w, target) for w in weights])
    lo, hi = np.nanpercentile(draws, [50 * (1 - ci_level), 50 * (1 + ci_level)], axis=0)
    return {m: {"value": point[i], "ci_low": float(lo[i]), "ci_high": float(hi[i])}
            for i, m in enumerate(("log_loss", "auroc", "specificity"))}


def paired_log_loss(y: np.ndarray, p: np.ndarray, p_ref: np.ndarray, groups: np.ndarray, n_bootstrap: int,
                    seed: int, ci_level: float = 0.95) -> dict[str, float]:
    """Log-loss of p minus that of p_ref on the same images, with a BCa interval resampling children."""
    def loss(q):
        q = np.clip(q, 1e-7, 1 - 1e-7)
        return -(y * np.log(q) + (1 - y) * np.log(1 - q))

    d = pd.DataFrame({"g": groups, "d": loss(p) - loss(p_ref), "n": 1.0}).groupby("g")[["d", "n"]].sum()
    value = float(d["d"].sum() / d["n"].sum())
    if np.allclose(d["d"], d["d"].iloc[0] * d["n"] / d["n"].iloc[0]):  # every child the same: no spread
        return {"value": value, "ci_low": value, "ci_high": value}
    res = stats.bootstrap((d["d"].to_numpy(), d["n"].to_numpy()), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis),
                          paired=True, vectorized=True, n_resamples=n_bootstrap, confidence_level=ci_level,
                          method="BCa", random_state=seed)
    return {"value": value, "ci_low": float(res.confidence_interval.low),
            "ci_high": float(res.confidence_interval.high)}


def _key(config: Config, fraction: float, dev_images: int, seed: int) -> str:
    text = json.dumps({"config": config.to_dict(), "fraction": fraction, "dev": dev_images, "seed": seed},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def run_candidate(config: Config, name: str, view: Prepared, task: str = PRIMARY_TASK) -> dict[str, Any]:
    """Train candidate `name` by cross-validation on the view and measure it (see the module docstring)."""
    from cxr import model as cxr_model, train

    c = candidate_config(config, name)
    t0 = time.perf_counter()
    result = train.fit(c, view, task)
    seconds = time.perf_counter() - t0
    oof = result.oof
    y, p = oof["y"].to_numpy(), oof["p"].to_numpy()
    t = threshold_at_sensitivity(y, p, config.target_sensitivity)
    dev = view.rows("test", task)
    y_dev = view.labels(task, dev).astype(int)
    p_members = np.stack([train.predict_proba(m, view.images[dev], c.batch_size)
                          for m in cxr_model.members(result.model)])
    p_ens = p_members.mean(axis=0)
    raw = raw_sample_agreement(result, view, c, t, raw_sample_dir())

    def dev_metrics(q: np.ndarray) -> dict[str, float]:
        q = np.clip(q, 1e-7, 1 - 1e-7)
        return {"log_loss": float(log_loss(y_dev, q, labels=[0, 1])), "auroc": float(roc_auc_score(y_dev, q))}

    singles = [dev_metrics(q) for q in p_members]
    return {
        "name": name, "description": CANDIDATES[name].description, "changes": dict(CANDIDATES[name].values),
        "seconds": seconds,
        "selection": result.selection, "pooled": result.pooled, "class_balance": result.balance,
        "kept_stage": result.kept_stage, "kept_epoch": result.kept_epoch, "oof_threshold": t,
        "oof": {"position": oof["position"].tolist(), "fold": oof["fold"].tolist(), "y": y.tolist(), "p": p.tolist(),
                "stages": {k: v.tolist() for k, v in result.stage_oof.items()}},
        "dev": {"n": int(len(dev)), "ensemble": dev_metrics(p_ens),
                "members_mean": {k: float(np.mean([s[k] for s in singles])) for k in singles[0]},
                "members": singles},
        "raw_sample": raw,
    }


def run_ablation(config: Config, prepared: Prepared, names: list[str], fraction: float, dev_images: int,
                 seed: int, folder: Path, task: str = PRIMARY_TASK) -> dict[str, Any]:
    """Every candidate of `names` on the same view (`subset`), each result kept in `folder/<name>.json` and reused
    while its settings match; then the comparison document (`compare`)."""
    view, _ = subset(prepared, fraction, dev_images, seed)
    results = {}
    for name in names:
        c = candidate_config(config, name)
        path = Path(folder) / f"{name}.json"
        key = _key(c, fraction, dev_images, seed)
        if path.is_file() and json.loads(path.read_text()).get("key") == key:
            results[name] = json.loads(path.read_text())
            print(f"{name}: reused {path}")
            continue
        print(f"{name}: training {CANDIDATES[name].description} ...", flush=True)
        results[name] = {"key": key, **run_candidate(config, name, view, task)}
        write_json(path, results[name])
        print(f"{name}: {results[name]['seconds'] / 60:.1f} min", flush=True)
    groups = view.index["patient_id"].to_numpy()
    return compare(results, groups, config, {"fraction": fraction, "dev_images": dev_images, "seed": seed,
                                             "n_train_images": int(len(view.rows("train", task))),
                                             "n_dev_images": int(len(view.rows("test", task)))})


def recalibrated(y: np.ndarray, p: np.ndarray, fold: np.ndarray, method: str) -> np.ndarray:
    """Out-of-fold probabilities recalibrated by cross-fitting (fold f by a calibrator fitted on the other folds),
    as `cxr.train.fit` compares stages."""
    from cxr.evaluate.calibration import apply_calibrator, fit_calibrator

    if method == "none":
        return p
    q = np.empty(len(p))
    for f in np.unique(fold):
        held = fold == f
        q[held] = apply_calibrator(fit_calibrator(y[~held], p[~held], method), p[held])
    return q


def compare(results: dict[str, dict[str, Any]], groups: np.ndarray, config: Config,
            design: dict[str, Any]) -> dict[str, Any]:
    """The ablation document: per candidate and stage (the kept one, and the fine-tuned one, where the
    augmentation and the backbone act), the OOF metrics after cross-fitted recalibration with intervals, the
    paired log-loss difference from the first candidate's same stage, the held-out ensemble vs members, and the
    raw-sample agreement."""
    names = list(results)
    ref = results[names[0]]["oof"]
    ref_order = pd.Series(np.arange(len(ref["position"])), index=ref["position"])
    rows = []
    for name, r in results.items():
        oof = r["oof"]
        pos, y, fold = np.asarray(oof["position"]), np.asarray(oof["y"]), np.asarray(oof["fold"])
        g = groups[pos]
        weights = child_bootstrap(y, g, 1000, config.split_seed)
        order = ref_order.loc[pos].to_numpy()
        raw = pd.DataFrame(r["raw_sample"])
        row = {"name": name, "description": r["description"], "minutes": r["seconds"] / 60,
               "kept_stage": r["kept_stage"], "kept_epoch": r["kept_epoch"], "class_balance": r["class_balance"],
               "selection": r["selection"]}
        for stage, p in oof["stages"].items():
            q = recalibrated(y, np.asarray(p), fold, config.calibration)
            stats_ = oof_summary(y, q, g, config.target_sensitivity, weights)
            ref_p = ref["stages"].get(stage)
            if name != names[0] and ref_p is not None:
                q_ref = recalibrated(y, np.asarray(ref_p)[order], fold, config.calibration)
                stats_["delta_log_loss"] = paired_log_loss(y, q, q_ref, g, 2000, config.split_seed)
            row[stage] = stats_
        row.update({"dev_ensemble": r["dev"]["ensemble"], "dev_members_mean": r["dev"]["members_mean"],
                    "raw_agreement": float(raw["agree"].mean()) if len(raw) else None,
                    "raw_max_abs_delta": float(raw["delta"].abs().max()) if len(raw) else None,
                    "raw_n": int(len(raw))})
        rows.append(row)
    return {"design": {**design, "n_folds": config.n_folds, "finetune_epochs": config.finetune_epochs,
                       "head_epochs": config.head_epochs, "target_sensitivity": config.target_sensitivity,
                       "calibration": config.calibration, "image_size": config.image_size},
            "candidates": rows, "results": {k: {kk: vv for kk, vv in v.items() if kk != "oof"}
                                            for k, v in results.items()}}


def table(doc: dict[str, Any], stage: str = "finetune", digits: int = 3) -> pd.DataFrame:
    """The ablation document as a table for the notebook: one row per candidate, the OOF metrics of `stage` (the
    fine-tuned stage, where the augmentation and the backbone act; "head" for the stage on frozen features)."""
    def f(m: dict[str, float] | None) -> str:
        if not m:
            return "(reference)"
        return f"{m['value']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"

    rows = []
    target = doc["design"]["target_sensitivity"]
    for c in doc["candidates"]:
        s = c.get(stage, {})
        rows.append({
            "candidate": c["description"],
            "OOF log-loss": f(s.get("log_loss")), "vs today (paired)": f(s.get("delta_log_loss")),
            "OOF AUROC": f(s.get("auroc")), f"OOF specificity at sensitivity {target:.2f}": f(s.get("specificity")),
            "kept (whole recipe)": f"{c['kept_stage']} (epoch {c['kept_epoch']})",
            "held-out AUROC: ensemble / members": f"{c['dev_ensemble']['auroc']:.{digits}f} / "
                                                  f"{c['dev_members_mean']['auroc']:.{digits}f}",
            "raw originals: labels agree, max |dp|": (f"{c['raw_agreement']:.0%} of {c['raw_n']}, "
                                                       f"{c['raw_max_abs_delta']:.2f}" if c["raw_n"] else "n/a"),
            "minutes": round(c["minutes"], 1),
        })
    return pd.DataFrame(rows).set_index("candidate")


ABLATION = Path(__file__).resolve().parents[1] / "doc" / "ablation.json"  # the committed comparison


def load(path: str | Path = ABLATION) -> dict[str, Any]:
    """The committed ablation document (`python -m cxr ablation` writes it)."""
    return json.loads(Path(path).read_text())


def describe(doc: dict[str, Any], stage: str = "finetune") -> str:
    """What the ablation shows, in words from its numbers: the design, the candidate whose `stage` has the lowest
    OOF log-loss, which differences from today's recipe exclude zero, the stage kept, what the ensemble buys, and
    the resize check."""
    d, rows = doc["design"], [c for c in doc["candidates"] if stage in c]
    best = min(rows, key=lambda r: r[stage]["log_loss"]["value"])
    clear = [r for r in rows if r[stage].get("delta_log_loss") and r[stage]["delta_log_loss"]["ci_high"] < 0]
    worse = [r for r in rows if r[stage].get("delta_log_loss") and r[stage]["delta_log_loss"]["ci_low"] > 0]
    gain = [r["dev_ensemble"]["auroc"] - r["dev_members_mean"]["auroc"] for r in doc["candidates"]]
    kept = sorted({r["kept_stage"] for r in doc["candidates"]})
    text = (f"Each candidate was trained by {d['n_folds']}-fold cross-validation ({d['finetune_epochs']} fine-tuning "
            f"epochs at most) on {d['n_train_images']:,} images of {d['fraction']:.0%} of the training children; "
            f"{d['n_dev_images']:,} images of other training children were held out. Comparing the {stage} stage "
            f"(log-loss after cross-fitted recalibration), the lowest OOF log-loss is {best['name']!r} "
            f"({best[stage]['log_loss']['value']:.3f}). ")
    text += (("Better than today's recipe, with a paired interval below zero: " + ", ".join(r["name"] for r in clear)
              + ". ") if clear else "No candidate differs from today's recipe with a paired interval that excludes "
             "zero. ")
    if worse:
        text += "Worse, with the interval above zero: " + ", ".join(r["name"] for r in worse) + ". "
    text += f"The whole recipe kept the {' or the '.join(kept)} stage. "
    text += (f"On the held-out children the fold ensemble's AUROC differs from the mean of its members' by "
             f"{min(gain):+.3f} to {max(gain):+.3f} across candidates. ")
    raw = [r for r in doc["candidates"] if r["raw_n"]]
    if raw:
        text += "On the full-resolution originals the call is kept in " + ", ".join(
            f"{r['raw_agreement']:.0%} ({r['name']})" for r in raw) + "."
    return text
