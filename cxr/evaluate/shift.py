"""What the training children say about the shift to the official test split, measured without test labels.

The official test normals are the lowest numbers of their file-name families (`IM-` and `NORMAL2-IM-`), and
their false-positive rate on test is far above the out-of-fold one. Three checks on the out-of-fold (OOF)
predictions of the training children ask where that could come from:

- `id_blocks`: are the training normals whose numbers lie nearest the test's blocks called pneumonia more often
  than the others? (If yes, a "block" validation would have seen the shift coming.)
- `degradation`: does blurring or downscaling a normal image raise its score? (If yes, image quality alone could
  push test normals over the threshold.)
- `sharpness_reliance`: within each class, does the network's score follow the image's sharpness (the statistic
  that separates the classes on its own, `cxr.evaluate.baseline`)?

And the shift a user brings: `raw_sample_agreement` scores full-resolution originals beside the third-party
224-px copies the model was trained on (the same X-ray, resized by another pipeline).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from scipy import stats

from cxr.config import TASKS, primary_task
from cxr.data.names import normal_id_number
from cxr.evaluate.predictions import wilson_interval

def test_id_blocks(index: pd.DataFrame) -> pd.DataFrame:
    """Per normal file-name family: the range of the official test's numbers and of the training ones."""
    rows = []
    for split in ("test", "train"):
        ids = index.loc[index["split"].eq(split) & index["label"].eq("NORMAL"), "patient_id"].drop_duplicates()
        parsed = pd.DataFrame([x for x in map(normal_id_number, ids) if x], columns=["family", "number"])
        for family, g in parsed.groupby("family"):
            rows.append({"split": split, "family": family, "children": len(g), "lowest": int(g["number"].min()),
                         "highest": int(g["number"].max())})
    return pd.DataFrame(rows)


def id_blocks(frame: pd.DataFrame, parts: int = 3) -> pd.DataFrame:
    """False-positive rate of the OOF normals per file-name family and per third (`parts`) of their numbers, the
    first third lying nearest the test's blocks (which are the lowest numbers), with Wilson 95% intervals.

    `frame`: the OOF rows of a predictions table (`cxr.evaluate.predictions`), with `decision`."""
    normals = frame[frame["y"].eq(0)].copy()
    parsed = normals["patient_id"].map(normal_id_number)
    normals = normals[parsed.notna()]
    normals["family"] = [p[0] for p in parsed.dropna()]
    normals["number"] = [p[1] for p in parsed.dropna()]
    rows = []
    for family, g in normals.groupby("family"):
        g = g.assign(part=pd.qcut(g["number"].rank(method="first"), parts, labels=False))
        for part, h in g.groupby("part"):
            fp, n = int(h["decision"].sum()), len(h)
            lo, hi = wilson_interval(fp, n)
            rows.append({"family": family, "part": f"{int(part) + 1} of {parts}",
                         "numbers": f"{h['number'].min()}-{h['number'].max()}", "normals": n, "called pneumonia": fp,
                         "rate": fp / n, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def degrade(images: np.ndarray, kind: str) -> np.ndarray:
    """uint8 (n, S, S) images blurred (Gaussian, radius 1.5 px) or downscaled to half size and back (bilinear)."""
    out = np.empty_like(images)
    for i, a in enumerate(images):
        img = Image.fromarray(a)
        if kind == "blur":
            img = img.filter(ImageFilter.GaussianBlur(1.5))
        elif kind == "downscale":
            img = img.resize((a.shape[1] // 2, a.shape[0] // 2), Image.Resampling.BILINEAR).resize(
                (a.shape[1], a.shape[0]), Image.Resampling.BILINEAR)
        else:
            raise ValueError(f"unknown degradation {kind!r}; choose 'blur' or 'downscale'")
        out[i] = np.asarray(img)
    return out


def degradation(members: list, images: np.ndarray, folds: np.ndarray, threshold: float, batch_size: int,
                kinds: tuple[str, ...] = ("blur", "downscale")) -> pd.DataFrame:
    """Score images (normal training images, say) as they are and degraded (`degrade`), each by the fold model
    that never saw it (`members[fold]`): per kind, the mean change of the probability with a paired 95% interval
    (t), and how many decisions at `threshold` flip to positive or to negative."""
    from cxr.train import predict_proba

    def score(x: np.ndarray) -> np.ndarray:
        p = np.empty(len(x))
        for f in np.unique(folds):
            p[folds == f] = predict_proba(members[int(f)], x[folds == f], batch_size)
        return p

    base = score(images)
    rows = []
    for kind in kinds:
        p = score(degrade(images, kind))
        d = p - base
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
        rows.append({"change": kind, "images": len(d), "mean delta p": d.mean(), "ci_low": d.mean() - half,
                     "ci_high": d.mean() + half, "to positive": int(((base < threshold) & (p >= threshold)).sum()),
                     "to negative": int(((base >= threshold) & (p < threshold)).sum())})
    return pd.DataFrame(rows)


def sharpness_reliance(logit: np.ndarray, y: np.ndarray, statistics: pd.DataFrame,
                       columns: tuple[str, ...] = ("gradient", "laplacian_energy")) -> pd.DataFrame:
    """Within each class, the Spearman rank correlation of the network's OOF logit with each image statistic, with
    a 95% interval (Fisher z). A network that reads sharpness would score sharper images of BOTH classes as more
    normal (a negative correlation with the gradient)."""
    rows = []
    for cls in (0, 1):
        keep = np.asarray(y) == cls
        for c in columns:
            r = stats.spearmanr(np.asarray(logit)[keep], statistics[c].to_numpy()[keep]).statistic
            n = int(keep.sum())
            half = 1.96 / np.sqrt(max(n - 3, 1))
            rows.append({"class": cls, "statistic": c, "n": n, "spearman": float(r),
                         "ci_low": float(np.tanh(np.arctanh(r) - half)), "ci_high": float(np.tanh(np.arctanh(r) + half))})
    return pd.DataFrame(rows)


def describe_shift(blocks: pd.DataFrame, changes: pd.DataFrame, reliance: pd.DataFrame,
                   class_names: tuple[str, str] | None = None) -> str:
    """Three sentences from the three checks (`class_names`: of the task checked; None: the primary task's)."""
    class_names = TASKS[primary_task()].class_names if class_names is None else class_names
    first = blocks[blocks["part"].str.startswith("1 ")]
    rest = blocks[~blocks["part"].str.startswith("1 ")]
    parts = [f"{r.family}: {r['called pneumonia']} of {r.normals}" for _, r in first.iterrows()]
    text = (f"Training normals whose numbers lie nearest the test's blocks (the lowest third of each family) are "
            f"called pneumonia out of fold {', '.join(parts)} times, against {int(rest['called pneumonia'].sum())} "
            f"of {int(rest['normals'].sum())} for the rest")
    text += ("; these normals were scored by fold models trained on their neighbours in time (random folds), so "
             "the check cannot tell what a validation on held-out id blocks would show. ")
    text += "; ".join(f"{r.change} changes a normal image's probability by {r['mean delta p']:+.3f} on average "
                      f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({r['to positive']} of {r.images} decisions flip to "
                      f"pneumonia)" for _, r in changes.iterrows())
    text += (" (with a model trained on a resampling path that blurs and downscales, this measures invariance to its "
             "own augmentation, not whether the test normals differ in sharpness). ")
    g = reliance[reliance["statistic"].eq("gradient")]
    text += ("Within each class, the network's score correlates with the mean gradient (sharpness) with Spearman "
             + " and ".join(f"{r.spearman:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] among {class_names[int(r['class'])]}"
                            for _, r in g.iterrows()) + ".")
    return text


def raw_sample_agreement(result: Any, prepared: Any, config: Any, threshold: float,
                         raw_dir: Path | None) -> pd.DataFrame:
    """Each full-resolution original of `raw_dir` (NORMAL/, PNEUMONIA/; `cxr.data.raw_sample_dir()`) beside its
    224-px copy in the data, the original decoded and resized by the package (`cxr.data.load_image`, as `predict`
    does), both scored by models that never saw its child: the fold model of its fold (`result.members`), or the
    whole ensemble when its child is not among the training rows. Columns: path, label, fold, p_copy, p_original,
    delta (original - copy), agree (the same call at `threshold`). Empty without `raw_dir`."""
    from cxr import model as cxr_model, train
    from cxr.data import load_image

    columns = ["path", "label", "fold", "p_copy", "p_original", "delta", "agree"]
    files = sorted(Path(raw_dir).glob("*/*.jpeg")) if raw_dir is not None and Path(raw_dir).is_dir() else []
    names = prepared.index["path"].str.rsplit("/", n=1).str[-1].to_numpy()
    found = [(f, int(np.flatnonzero(names == f.name)[0])) for f in files if (names == f.name).any()]
    if not found:
        return pd.DataFrame(columns=columns)
    index = prepared.index
    folds = np.array([int(index["fold"].iloc[i]) if index["split"].iloc[i] == "train" else -1 for _, i in found])
    copies = np.stack([prepared.images[i] for _, i in found])
    originals = np.stack([load_image(f, config.image_size, config.resize_policy) for f, _ in found])
    p_copy, p_orig = np.empty(len(found)), np.empty(len(found))
    for fold in np.unique(folds):
        models = [result.members[fold]] if fold >= 0 else cxr_model.members(result.model)
        rows = folds == fold
        p_copy[rows] = np.mean([train.predict_proba(m, copies[rows], config.batch_size) for m in models], axis=0)
        p_orig[rows] = np.mean([train.predict_proba(m, originals[rows], config.batch_size) for m in models], axis=0)
    return pd.DataFrame({"path": [f"{f.parent.name}/{f.name}" for f, _ in found],
                         "label": [index["label"].iloc[i] for _, i in found], "fold": folds, "p_copy": p_copy,
                         "p_original": p_orig, "delta": p_orig - p_copy,
                         "agree": (p_copy >= threshold) == (p_orig >= threshold)})


def describe_raw_sample(table: pd.DataFrame, threshold: float) -> str:
    """Two sentences from `raw_sample_agreement`: how often the call survives the other resize path."""
    if table.empty:
        return ("No full-resolution originals are available here (`../shared/data/raw-sample/`), so the "
                "resize-path check could not run.")
    worst = table.loc[table["delta"].abs().idxmax()]
    by_class = "; ".join(f"{label}: mean change {g['delta'].mean():+.3f}" for label, g in table.groupby("label"))
    return (f"On {len(table)} full-resolution originals, each scored by the fold model that never saw its child, "
            f"the call at threshold {threshold:.3f} is the same for the original (decoded and resized by this "
            f"package, as `predict` does) and for its third-party 224-px copy in {int(table['agree'].sum())} of "
            f"{len(table)}; the largest change of the probability is {worst['delta']:+.3f} ({worst['path']}); "
            f"{by_class}.")
