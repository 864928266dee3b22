"""Checks that the CAM maps mean something (their verdicts in plain sentences: `cxr.reporting.explanation`):

- `randomization_test`: cascading model-parameter randomisation (Adebayo et al. 2018): maps must change when the
  learned weights are destroyed;
- `deletion_insertion`: faithfulness: removing (revealing) the hottest pixels first must lower (raise) the score
  faster than a random order;
- `shortcut_audit`: where the heat falls (lungs, marker corners, border band, outside the body box) per
  confusion cell, against the share a uniform map would give (`case_regions` per case shown): a possible
  shortcut;
- `stamp_counterfactual`: the acquisition stamp pasted onto the images called normal, and how many calls change.

Figures of these results are in `cxr.plots.explain`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr import quiet_stderr

with quiet_stderr():  # TensorFlow's C++ start-up lines
    import keras

from cxr.data.markers import ZONES, mask_zones
from cxr.evaluate.baseline import LUNG_BOX
from cxr.explain.cam import METHODS, cam_function, image_batch
from cxr.model import BACKBONE, LOGIT
from cxr.progress import bar
from cxr.train.batches import predict_proba

# ---------------------------------------------------------------------------------------------------------------
# Sanity check: cascading randomisation (Adebayo et al. 2018)


def _weighted_layers_top_down(model: keras.Model) -> list[tuple[str, str]]:
    """(scope, name) of every layer with weights, from the logit down to the backbone's first layer."""
    order = [("outer", LOGIT)]
    backbone = model.get_layer(BACKBONE)
    order += [("backbone", l.name) for l in reversed(backbone.layers) if l.weights]
    return order


def _randomised_values(layer, rng: np.random.Generator) -> list[np.ndarray]:
    """New values for each weight of `layer`: zero-mean normal with the original's spread (as a fresh initialiser
    would); BatchNorm scales and variances are drawn around 1 and kept positive."""
    new = []
    for v in layer.weights:
        w = np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
        std = float(w.std()) if w.size > 1 and w.std() > 0 else 0.05
        r = rng.normal(0.0, std, size=w.shape)
        if v.name in ("gamma", "moving_variance"):
            r = np.abs(1.0 + r) + 1e-3
        new.append(r.astype(np.dtype(v.dtype)))
    return new


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; a constant randomised map shares no ranking (0); NaN if `a` is constant."""
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0:
        return float("nan")
    if np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomization_test(model: keras.Model, images, layers: list[str] | None = None, seed: int = 0,
                       target_class: int = 1, method: str = "gradcam", layer: str | None = None,
                       max_steps: int = 8, *, batch_size: int) -> pd.DataFrame:
    """Cascading model-parameter randomisation: from the logit down through the backbone, on weight values.

    `images`: (B, H, W) or (B, H, W, 1) (`image_batch`). Step 0 is the trained model. Step i has every weighted layer from the top down to `layers[i-1]` randomised
    (cumulative). `layers`: cut points in top-down order ("logit" or backbone layer names); default: "logit" plus
    evenly spaced backbone layers with weights, at most `max_steps` in all, ending with the first one.
    Returns a DataFrame (step, randomised_to, n_randomised, spearman_mean, spearman_std, n_images, n_empty):
    images whose trained map is empty (no heat) are left out of the means (n_images counts those kept); a
    randomised map that is empty counts as correlation 0 (n_empty counts them). The maps are in
    `df.attrs["cams"]` (a list of (B, H, W) arrays per step) for `randomization_figure`. A trustworthy method
    gives a correlation that falls as more of the network is randomised. The randomised weights are VALUES passed
    to the model's one compiled CAM function (`cxr.explain.cam.cam_function`): no model is cloned or rebuilt per
    step, nothing is recompiled, and the user's model is never modified.
    """
    cam_fn = METHODS[method]
    images = image_batch(images)
    order = _weighted_layers_top_down(model)
    names = [n for _, n in order]
    if layers is None:
        idx = sorted(set(np.linspace(0, len(order) - 1, min(max_steps, len(order))).round().astype(int)))
    else:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"not layers with weights (top-down order {names}): {unknown}")
        idx = sorted(names.index(n) for n in layers)
    rng = np.random.default_rng(seed)
    original = cam_fn(model, images, target_class=target_class, layer=layer, batch_size=batch_size)
    n_original = int((original.reshape(len(original), -1).max(1) > 0).sum())
    rows = [dict(step=0, randomised_to="none (trained)", n_randomised=0, spearman_mean=1.0, spearman_std=0.0,
                 n_images=n_original, n_empty=len(original) - n_original)]
    cams = [original]
    backbone = model.get_layer(BACKBONE)
    # the cascade works on weight VALUES, fed to the same compiled CAM function; the model is never modified
    variables = cam_function(model, layer, batch_size=batch_size).variables  # the order its `weights` argument follows
    position = {id(v): i for i, v in enumerate(variables)}
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    done = 0
    for step, cut in bar(enumerate(idx, start=1), total=len(idx), desc="randomisation test"):
        for scope, name in order[done:cut + 1]:
            lay = model.get_layer(name) if scope == "outer" else backbone.get_layer(name)
            for v, new in zip(lay.weights, _randomised_values(lay, rng)):
                values[position[id(v)]] = new
        done = cut + 1
        cam = cam_fn(model, images, target_class=target_class, layer=layer, batch_size=batch_size, check=False,
                     weights=values)
        rho = np.array([_spearman(o, c) for o, c in zip(original, cam)])
        ok = rho[np.isfinite(rho)]
        rows.append(dict(step=step, randomised_to=names[cut], n_randomised=done,
                         spearman_mean=float(ok.mean()) if len(ok) else float("nan"),
                         spearman_std=float(ok.std()) if len(ok) else float("nan"), n_images=int(len(ok)),
                         n_empty=int((cam.reshape(len(cam), -1).max(1) == 0).sum())))
        cams.append(cam)
    df = pd.DataFrame(rows)
    df.attrs["cams"] = cams
    return df


# ---------------------------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion


@dataclass
class Faithfulness:
    """Deletion/insertion curves (N, steps + 1) on `fractions` and per-image areas under them.

    Deletion: the most-heated pixels are replaced by a blurred copy of the image; a faithful map makes the score
    fall FAST (low area). Insertion: starting from the blurred image, the most-heated pixels are revealed; a
    faithful map makes the score rise FAST (high area). "random" orders the pixels by a random blocky map, the baseline.
    """

    fractions: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    auc: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> pd.DataFrame:
        """Mean area per curve: rows deletion/insertion, columns heat, random, heat_minus_random."""
        rows = {}
        for kind in ("deletion", "insertion"):
            h, r = self.auc[f"{kind}_heat"].mean(), self.auc[f"{kind}_random"].mean()
            rows[kind] = {"heat": h, "random": r, "heat_minus_random": h - r}
        return pd.DataFrame(rows).T


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(im.astype(np.float32), sigma=sigma, mode="nearest") for im in images])


def _trapezoid(y, x):
    fn = getattr(np, "trapezoid", None) or np.trapz
    return fn(y, x, axis=-1)


def deletion_insertion(model: keras.Model, images, cams, steps: int = 20, target_class: int = 1, seed: int = 0,
                       blur_sigma: float = 0.1, random_grid: int = 7, *, batch_size: int) -> Faithfulness:
    """Deletion and insertion curves for the heat order and a random order (see `Faithfulness`).

    `images` (B, H, W) or (B, H, W, 1) (`image_batch`), `cams` (B, H, W). The score is the model's probability
    of `target_class`. The baseline image is the image blurred with a
    Gaussian of sigma = `blur_sigma` x image height. Ties in heat are broken at random (seeded).
    The random order comes from a random map of `random_grid` x `random_grid` blocks (the resolution of the
    last feature map at 224 px), so its masks are as smooth as the heat's: a pixel-wise random order scatters
    salt-and-pepper artefacts over the whole image, which a CNN reads as texture, and is no fair baseline.
    """
    x = image_batch(images)
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape != x.shape:
        raise ValueError(f"cams {cams.shape} must match the images {x.shape}")
    n, h, w = x.shape
    rng = np.random.default_rng(seed)
    flat_cam = cams.reshape(n, -1)
    tiebreak = rng.random(flat_cam.shape)
    ranks = {}
    heat_order = np.lexsort((tiebreak, -flat_cam), axis=-1)  # hottest first, ties at random
    g = max(1, int(random_grid))
    coarse = rng.random((n, g, g))
    random_map = coarse[:, (np.arange(h) * g) // h][:, :, (np.arange(w) * g) // w].reshape(n, -1)
    random_order = np.lexsort((rng.random(random_map.shape), -random_map), axis=-1)
    for name, order in (("heat", heat_order), ("random", random_order)):
        r = np.empty_like(order)
        np.put_along_axis(r, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
        ranks[name] = r.reshape(n, h, w)
    blurred = _blur(x, blur_sigma * h)
    xf = x.astype(np.float32)
    fractions = np.linspace(0, 1, steps + 1)
    dtype = x.dtype

    def prob(batch):
        batch = np.clip(np.rint(batch), 0, 255).astype(dtype) if np.issubdtype(dtype, np.integer) else batch
        p = predict_proba(model, batch[..., None], batch_size=batch_size)  # fixed-shape (padded) batches
        return p if target_class == 1 else 1 - p

    names = [f"{k}_{o}" for k in ("deletion", "insertion") for o in ("heat", "random")]
    curves = {name: np.zeros((n, steps + 1)) for name in names}
    for j, f in bar(enumerate(fractions), total=len(fractions), desc="deletion/insertion"):
        k = int(round(f * h * w))
        variants = []
        for name in names:
            kind, o = name.split("_")
            mask = ranks[o] < k
            variants.append(np.where(mask, blurred, xf) if kind == "deletion" else np.where(mask, xf, blurred))
        p = prob(np.concatenate(variants)).reshape(len(names), n)  # one call per step
        for name, row in zip(names, p):
            curves[name][:, j] = row
    auc = pd.DataFrame({name: _trapezoid(c, fractions) for name, c in curves.items()})
    return Faithfulness(fractions, curves, auc)


# ---------------------------------------------------------------------------------------------------------------
# Shortcut audit


BODY_BOX = (0.15, 0.90, 0.20, 0.80)  # (top, bottom, left, right) as fractions of the image height / width
REGIONS = ("lungs", "markers", "border")  # where `heat_shares` measures the heat, besides outside the body box
def _region_masks(shape: tuple[int, int], border: float, body_box: tuple) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    bh, bw = int(round(border * h)), int(round(border * w))
    border_mask = np.ones((h, w), bool)
    border_mask[bh:h - bh, bw:w - bw] = False
    top, bottom, left, right = body_box
    body = np.zeros((h, w), bool)
    body[int(round(top * h)):int(round(bottom * h)), int(round(left * w)):int(round(right * w))] = True
    return border_mask, ~body


def region_masks(shape: tuple[int, int], border: float = 0.10, lung_box: tuple = LUNG_BOX,
                 zones: tuple = ZONES) -> dict[str, np.ndarray]:
    """Boolean masks (H, W) of the regions of `REGIONS`: "lungs", the central lung box of
    `cxr.evaluate.baseline.LUNG_BOX` (the one box the study calls the lungs); "markers", the corner zones of the
    burned-in stamp (`cxr.data.markers.ZONES`, the pixels `mask_zones` blacks out); "border", the outer `border`
    band of each side. The lung box and the marker corners do not meet; the border band holds most of the marker
    corners (so those two shares overlap)."""
    h, w = shape
    top, bottom, left, right = lung_box
    lungs = np.zeros((h, w), bool)
    lungs[int(top * h):int(bottom * h), int(left * w):int(right * w)] = True  # as `gradient_by_region` cuts it
    markers = mask_zones(np.ones((h, w), np.uint8), zones) == 0
    border_mask, _ = _region_masks((h, w), border, BODY_BOX)
    return {"lungs": lungs, "markers": markers, "border": border_mask}


def heat_shares(cams, border: float = 0.10, body_box: tuple = BODY_BOX, lung_box: tuple = LUNG_BOX,
                zones: tuple = ZONES) -> pd.DataFrame:
    """Per image: the share of its positive heat on the lungs, on the marker corners and in the outer `border`
    band (`region_masks`), and outside the central body box.

    border: width of the band as a fraction of each side (0.10: the outer 10%, 36% of the area).
    body_box: (top, bottom, left, right) fractions; default rows 15-90%, columns 20-80%, roughly the thorax in
    these paediatric films (shoulders, neck, abdomen and markers fall outside). Heat is the positive part of each
    map; shares are NaN for a map with no heat (`empty`). `peak_in_border`: the hottest pixel lies in the band.
    The area share of each region (the share a map spreading its heat evenly would give) is in `df.attrs`
    (`lungs_area`, `markers_area`, `border_area`, `outside_body_area`; `markers_in_border`: the part of the
    marker corners inside the border band).
    """
    cams = np.clip(np.asarray(cams, dtype=np.float64), 0, None)
    if cams.ndim != 3:
        raise ValueError(f"expected maps (B, H, W), got shape {cams.shape}")
    masks = region_masks(cams.shape[1:3], border, lung_box, zones)
    border_mask, outside = masks["border"], _region_masks(cams.shape[1:3], border, body_box)[1]
    total = cams.sum(axis=(1, 2))
    empty = ~(total > 0)
    safe = np.where(empty, 1.0, total)
    peaks = cams.reshape(len(cams), -1).argmax(axis=1)

    def share(mask: np.ndarray) -> np.ndarray:
        return np.where(empty, np.nan, (cams * mask).sum(axis=(1, 2)) / safe)

    df = pd.DataFrame({
        "lungs_share": share(masks["lungs"]),
        "markers_share": share(masks["markers"]),
        "border_share": share(border_mask),
        "outside_body_share": share(outside),
        "peak_in_border": ~empty & border_mask.ravel()[peaks],
        "peak_outside_body": ~empty & outside.ravel()[peaks],
        "empty": empty,
    })
    df.attrs.update({f"{name}_area": float(m.mean()) for name, m in masks.items()})
    df.attrs.update(outside_body_area=float(outside.mean()), border=border, body_box=tuple(body_box),
                    lung_box=tuple(lung_box),
                    markers_in_border=float((masks["markers"] & border_mask).sum() / max(masks["markers"].sum(), 1)))
    return df


def _cells(y: np.ndarray, yp: np.ndarray) -> dict[str, np.ndarray]:
    return {"TP": (y == 1) & (yp == 1), "TN": (y == 0) & (yp == 0), "FP": (y == 0) & (yp == 1),
            "FN": (y == 1) & (yp == 0)}


def shortcut_audit(cams, y_true, y_pred, class_names=("NORMAL", "PNEUMONIA"), border: float = 0.10,
                   body_box: tuple = BODY_BOX) -> pd.DataFrame:
    """`heat_shares` summarised per group, plus an "all" row: with two classes one row per confusion cell (`cell`
    TP, TN, FP, FN in that order, each even when empty; positive = the second class), else per true class and
    correct/incorrect (`cell` empty).

    Columns: class, outcome (correct/incorrect), cell, n, n_empty, the mean share of heat on the lungs, the
    marker corners and the border band (and the median border share), the mean outside-body share, the rate of
    peaks in the border, and the area shares a uniform map would give (`lungs_area`, `markers_area`,
    `border_area`, `outside_body_area`, `markers_in_border`) for comparison. Means are over each group's maps
    with heat (every map counts once).
    """
    shares = heat_shares(cams, border, body_box)
    y = np.asarray(y_true).astype(int).reshape(-1)
    yp = np.asarray(y_pred).astype(int).reshape(-1)
    if not (len(y) == len(yp) == len(shares)):
        raise ValueError(f"{len(shares)} maps, {len(y)} true labels and {len(yp)} predictions")

    def summarise(g: pd.DataFrame) -> dict:
        return {"n": len(g), "n_empty": int(g["empty"].sum()),
                **{f"{r}_share_mean": g[f"{r}_share"].mean() for r in REGIONS},
                "border_share_median": g["border_share"].median(),
                "outside_body_share_mean": g["outside_body_share"].mean(),
                "peak_in_border_rate": g["peak_in_border"].mean() if len(g) else np.nan}

    rows = []
    if len(class_names) == 2:
        for cell, mask in _cells(y, yp).items():
            truth = class_names[1] if cell in ("TP", "FN") else class_names[0]
            rows.append({"class": truth, "outcome": "correct" if cell in ("TP", "TN") else "incorrect",
                         "cell": cell, **summarise(shares[mask])})
    else:
        shares["class"] = [class_names[i] for i in y]
        shares["outcome"] = np.where(y == yp, "correct", "incorrect")
        rows = [{"class": c, "outcome": o, "cell": "", **summarise(g)}
                for (c, o), g in shares.groupby(["class", "outcome"])]
    rows.append({"class": "all", "outcome": "all", "cell": "all", **summarise(shares)})
    out = pd.DataFrame(rows)
    for key in ("lungs_area", "markers_area", "border_area", "outside_body_area", "markers_in_border"):
        out[key] = shares.attrs[key]
    return out


def _pct(x: float) -> str:
    """A share in words: whole percent from 10%, one decimal below (a small share is not rounded to 0%)."""
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f}%" if x >= 0.095 else f"{100 * x:.1f}%"


def case_regions(maps, cells=None, p=None, index=None, border: float = 0.10) -> pd.DataFrame:
    """Per map (e.g. the cases a figure shows, in its order), the share of its positive heat on the lungs, the
    marker corners and the border band (`heat_shares`), with the area shares in `attrs`; `cells`, `p` and
    `index` (e.g. a `confident_cases` frame's cell, p and index) are added when given."""
    shares = heat_shares(maps, border)
    out = shares[[f"{r}_share" for r in REGIONS] + ["empty"]].copy()
    if cells is not None:
        out.insert(0, "cell", list(cells))
    if p is not None:
        out.insert(1 if cells is not None else 0, "p", np.asarray(p, dtype=np.float64).reshape(-1))
    if index is not None:
        out.index = pd.Index(list(index), name="position")
    out.attrs = dict(shares.attrs)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Counterfactual: the acquisition stamp burned into images the model called normal

STAMP_TARGETS = {"changed_share": 0.02, "mean_rise": 0.02}  # at most 2% of calls change, mean rise at most 0.02


def stamp_counterfactual(predict, images: np.ndarray, threshold: float, ci_level: float = 0.95,
                         seed: int = 0) -> dict:
    """Paste the acquisition stamp (`cxr.data.markers.paste_stamp`) onto every image the model calls normal and
    score it again. `predict`: images (N, H, W, 1) uint8 -> probabilities; `images`: (N, H, W) or (N, H, W, 1)
    (`image_batch`).

    Returns n (images called normal), changed (now called pneumonia), changed_share with its Wilson interval,
    mean_rise of the probability with a bootstrap interval (scipy), max_rise, and `meets_targets` against
    `STAMP_TARGETS`. A model that ignores the stamp changes nothing; one that learned it as a shortcut flips calls.
    """
    from scipy import stats

    from cxr.data.markers import paste_stamp

    batch = image_batch(images)[..., None]
    p = np.asarray(predict(batch), dtype=np.float64).ravel()
    normal = np.flatnonzero(p < threshold)
    out = {"n": int(len(normal)), "threshold": float(threshold)}
    if not len(normal):
        return {**out, "changed": 0, "changed_share": float("nan"), "changed_ci": (float("nan"),) * 2,
                "mean_rise": float("nan"), "mean_rise_ci": (float("nan"),) * 2, "max_rise": float("nan"),
                "meets_targets": None}
    stamped = np.stack([paste_stamp(batch[i, ..., 0]) for i in normal])[..., None]
    q = np.asarray(predict(stamped), dtype=np.float64).ravel()
    return {**counterfactual_summary(p[normal], q, threshold, ci_level, seed), "threshold": float(threshold)}


def counterfactual_summary(before: np.ndarray, after: np.ndarray, threshold, ci_level: float = 0.95,
                           seed: int = 0) -> dict:
    """The counterfactual's numbers from the probabilities of the images called normal `before` and `after` the
    stamp was pasted, at `threshold` (a number, or one per image, e.g. each fold's own): n, changed (now at or
    above it), changed_share with its Wilson interval, mean_rise with a bootstrap interval (scipy), max_rise and
    `meets_targets` (`STAMP_TARGETS`)."""
    from scipy import stats

    before, after = np.asarray(before, np.float64).ravel(), np.asarray(after, np.float64).ravel()
    out = {"n": int(len(before))}
    if not len(before):
        return {**out, "changed": 0, "changed_share": float("nan"), "changed_ci": (float("nan"),) * 2,
                "mean_rise": float("nan"), "mean_rise_ci": (float("nan"),) * 2, "max_rise": float("nan"),
                "meets_targets": None}
    rise = after - before
    changed = int((after >= np.asarray(threshold, np.float64)).sum())
    ci = stats.binomtest(changed, len(before)).proportion_ci(confidence_level=ci_level, method="wilson")
    if len(rise) > 1 and np.ptp(rise) > 0:
        boot = stats.bootstrap((rise,), np.mean, confidence_level=ci_level, n_resamples=2000,
                               random_state=np.random.default_rng(seed), method="percentile")
        rise_ci = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    else:
        rise_ci = (float(rise.mean()),) * 2
    share = changed / len(before)
    return {**out, "changed": changed, "changed_share": share, "changed_ci": (float(ci.low), float(ci.high)),
            "mean_rise": float(rise.mean()), "mean_rise_ci": rise_ci, "max_rise": float(rise.max()),
            "meets_targets": bool(share <= STAMP_TARGETS["changed_share"]
                                  and rise.mean() <= STAMP_TARGETS["mean_rise"])}
