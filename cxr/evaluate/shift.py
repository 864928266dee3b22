"""What the training children say about the shift to the official test split, measured without test labels.

The official test normals are the lowest numbers of their file-name families (`IM-` and `NORMAL2-IM-`). Where
their false-positive rate on test exceeds the out-of-fold one, three checks on the out-of-fold (OOF) predictions
of the training children ask where that could come from:

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
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from scipy import stats

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


def _original_files(raw_dirs: Path | list[Path | None] | None) -> list[tuple[str, Path]]:
    """(source, file) for every JPEG in the class folders of `raw_dirs` (one folder, several, Nones dropped); a
    file name already seen in an earlier folder is not taken twice."""
    dirs = [raw_dirs] if isinstance(raw_dirs, (str, Path)) else list(raw_dirs or [])
    out, seen = [], set()
    for folder in (Path(d) for d in dirs if d is not None):
        for f in sorted(folder.glob("*/*.jpeg")) if folder.is_dir() else []:
            if f.name not in seen:
                seen.add(f.name)
                out.append((folder.name, f))
    return out


def raw_sample_agreement(result: Any, prepared: Any, config: Any, threshold: float,
                         raw_dirs: Path | list[Path | None] | None,
                         preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> pd.DataFrame:
    """Each full-resolution original of the folders `raw_dirs` (each with NORMAL/, PNEUMONIA/;
    `cxr.data.raw_sample_dir()`, `cxr.data.sources.originals_dir()`; one folder is accepted too, Nones are dropped)
    beside its 224-px copy in the data, the original decoded and resized by the package (`cxr.data.load_image`, as
    `predict` does, JPEG re-encoded when `config.reencode_quality` is set: the copy, from the cache, already is), both
    scored by models that never saw its child: the fold model of its fold
    (`result.members`), or the whole ensemble when its child is not among the training rows. Columns: source (the
    folder's name), path, label, fold, p_copy, p_original, delta (original - copy), agree (the same call at
    `threshold`). Originals without a copy in the data, and those that cannot be read or that the input checks
    refuse (`cxr.data.ImageRejected`), are skipped and counted in `table.attrs["skipped"]`. Empty without any folder.
    `preprocess` (uint8 (S, S) -> uint8 (S, S), e.g. `cxr.data.images.canonical`), when given, is applied to every
    copy and every original alike before scoring (the models should have been trained on images that went through
    it too): an experiment's variant on top of the run's own preprocessing (`bench/resize_gap.py`, with it off)."""
    from cxr import model as cxr_model, train
    from cxr.data import ImageRejected, load_image

    columns = ["source", "path", "label", "fold", "p_copy", "p_original", "delta", "agree"]
    files = _original_files(raw_dirs)
    names = prepared.index["path"].str.rsplit("/", n=1).str[-1].to_numpy()
    skipped = {"no copy in the data": 0, "unreadable or refused": 0}
    quality = getattr(config, "reencode_quality", None)  # the run's re-encode, as training, scoring and predict
    found, originals = [], []
    for source, f in files:
        where = np.flatnonzero(names == f.name)
        if not len(where):
            skipped["no copy in the data"] += 1
            continue
        try:
            originals.append(load_image(f, config.image_size, config.resize_policy, quality))
        except (ImageRejected, OSError):  # refused by the input checks, or not a JPEG Pillow can read
            skipped["unreadable or refused"] += 1
            continue
        found.append((source, f, int(where[0])))
    if not found:
        table = pd.DataFrame(columns=columns)
        table.attrs["skipped"] = skipped
        return table
    index = prepared.index
    folds = np.array([int(index["fold"].iloc[i]) if index["split"].iloc[i] == "train" else -1 for *_, i in found])
    copies = np.stack([prepared.images[i] for *_, i in found])
    originals = np.stack(originals)
    if preprocess is not None:
        copies, originals = (np.stack([preprocess(a) for a in x]) for x in (copies, originals))
    p_copy, p_orig = np.empty(len(found)), np.empty(len(found))
    for fold in np.unique(folds):
        models = [result.members[fold]] if fold >= 0 else cxr_model.members(result.model)
        rows = folds == fold
        p_copy[rows] = np.mean([train.predict_proba(m, copies[rows], config.batch_size) for m in models], axis=0)
        p_orig[rows] = np.mean([train.predict_proba(m, originals[rows], config.batch_size) for m in models], axis=0)
    table = pd.DataFrame({"source": [s for s, *_ in found], "path": [f"{f.parent.name}/{f.name}" for _, f, _ in found],
                          "label": [index["label"].iloc[i] for *_, i in found], "fold": folds, "p_copy": p_copy,
                          "p_original": p_orig, "delta": p_orig - p_copy,
                          "agree": (p_copy >= threshold) == (p_orig >= threshold)})
    table.attrs["skipped"] = skipped
    return table


AGREEMENT_TARGET = 0.98  # protocol v2, item 6: at least 98% of the calls the same on an original and its copy
SENSITIVITY_GAP_TARGET = 0.01  # protocol v2, item 6: sensitivity on the originals within one point of the copies'
SUMMARY_COLUMNS = ["measure", "n", "value", "ci_low", "ci_high", "target", "met"]


def resize_summary(table: pd.DataFrame, threshold: float, ci_level: float = 0.95,
                   positive: str = "PNEUMONIA") -> pd.DataFrame:
    """The resize check of `raw_sample_agreement` in one table, one row per measure (columns `SUMMARY_COLUMNS`):
    the agreement of the calls at `threshold` (copy vs original), sensitivity on the copies and on the originals
    among the `positive` images, specificity likewise among the others, each with its Wilson interval at
    `ci_level` (per image: several images of one child count separately); the sensitivity difference (originals -
    copies); the mean probability change (original - copy) per class; and, for the two targets of protocol v2
    (agreement >= `AGREEMENT_TARGET`; sensitivity on the originals within `SENSITIVITY_GAP_TARGET` of the
    copies'), whether they are met (`met`: True/False, None for the rows without a target; NaN-valued rows, e.g.
    no positive image, are not met)."""
    from cxr.evaluate.metrics import wilson_bounds

    if table.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    copy_call = table["p_copy"].to_numpy() >= threshold
    orig_call = table["p_original"].to_numpy() >= threshold
    is_pos = table["label"].to_numpy() == positive
    rows = []

    def proportion(measure: str, hits: np.ndarray, target: str | None = None, met: bool | None = None) -> float:
        n = len(hits)
        value = float(hits.mean()) if n else float("nan")
        lo, hi = wilson_bounds(value, n, ci_level)
        rows.append({"measure": measure, "n": n, "value": value, "ci_low": lo, "ci_high": hi, "target": target,
                     "met": met})
        return value

    agreement = float((copy_call == orig_call).mean())
    proportion("agreement of the calls", copy_call == orig_call, f">= {AGREEMENT_TARGET:.2f}",
               bool(agreement >= AGREEMENT_TARGET))
    sens_copy = proportion("sensitivity, copies", copy_call[is_pos])
    sens_orig = proportion("sensitivity, originals", orig_call[is_pos])
    gap = sens_orig - sens_copy
    rows.append({"measure": "sensitivity difference (originals - copies)", "n": int(is_pos.sum()), "value": gap,
                 "ci_low": float("nan"), "ci_high": float("nan"), "target": f"within {SENSITIVITY_GAP_TARGET:.2f}",
                 "met": bool(np.isfinite(gap) and abs(gap) <= SENSITIVITY_GAP_TARGET + 1e-12)})
    proportion("specificity, copies", ~copy_call[~is_pos])
    proportion("specificity, originals", ~orig_call[~is_pos])
    for label, g in table.groupby("label"):
        rows.append({"measure": f"mean probability change, {label}", "n": len(g), "value": float(g["delta"].mean()),
                     "ci_low": float("nan"), "ci_high": float("nan"), "target": None, "met": None})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def resize_diagnosis(copies: np.ndarray, originals: np.ndarray, cutoff: float = 0.25) -> pd.DataFrame:
    """What separates each third-party copy (uint8 (n, S, S)) from its original resized by this package (the same
    shape, row for row): `mean_difference` (original - copy, grey levels), `std_ratio`, `sharpness_ratio` (mean
    Sobel gradient magnitude, `cxr.evaluate.baseline.image_statistics`) and `high_frequency_ratio` (the spectral
    energy above `cutoff` cycles per pixel, the mean removed), each ratio original / copy: a ratio above 1 means
    the original, as resized here, is the sharper or the more contrasted."""
    from cxr.evaluate.baseline import image_statistics

    copies, originals = np.asarray(copies), np.asarray(originals)
    if copies.ndim == 4:
        copies, originals = copies[..., 0], originals[..., 0]
    if copies.shape != originals.shape:
        raise ValueError(f"copies {copies.shape} and originals {originals.shape} must have the same shape")
    a, b = image_statistics(copies), image_statistics(originals)

    def high_frequency(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        power = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True))) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(x.shape[1]), np.fft.fftfreq(x.shape[2]), indexing="ij")
        return power[:, np.hypot(fy, fx) > cutoff].sum(axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({"mean_difference": b["brightness"] - a["brightness"],
                             "std_ratio": b["spread"] / a["spread"], "sharpness_ratio": b["gradient"] / a["gradient"],
                             "high_frequency_ratio": high_frequency(originals) / high_frequency(copies)})
