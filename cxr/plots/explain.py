"""Figures of the explanations: overlays, pairs of X-ray and map on one colour scale, the figures of the checks."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.plots.style import figure_style

if TYPE_CHECKING:
    from cxr.explain.checks import Faithfulness


CMAP = "inferno"  # perceptually uniform (brightness rises steadily with the value, readable in grey), not "jet"
MAP_WORDS = "clear = none, then purple, orange, yellow = strongest"  # the colour bar's scale in words
PANEL = 1.5  # inches per X-ray panel in the grids of maps: about 140 px at `plots.DPI`, under the images' 224 px
PER_IMAGE = f"Grad-CAM, per-image max = 1\n({MAP_WORDS})"


def _gray(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a grayscale image (H, W) or (H, W, 1), got shape {img.shape}")
    return img


def overlay(image_uint8, cam, alpha: float = 0.6, cmap: str = CMAP, vmax: float = 1.0) -> np.ndarray:
    """The grayscale image with the heatmap blended over it: RGB uint8 (H, W, 3). The map is read on the scale
    [0, vmax] (values above vmax at full colour), and its opacity grows with its value (up to `alpha`), so where
    there is no evidence the X-ray shows through unchanged and a weak map looks weak."""
    from matplotlib import colormaps

    img = _gray(image_uint8).astype(np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape:
        from cxr.explain.cam import finish_cams

        cam = finish_cams(cam[None], img.shape, "none")[0]
    level = np.clip(cam / vmax, 0, 1) if vmax > 0 else np.zeros_like(cam)
    heat = colormaps[cmap](level)[..., :3] * 255.0
    rgb = np.repeat(img[..., None], 3, axis=-1)
    a = (alpha * level)[..., None]
    return np.clip((1 - a) * rgb + a * heat, 0, 255).astype(np.uint8)


def _colorbar(fig, axes, cmap: str = CMAP, label: str = PER_IMAGE, vmax: float = 1.0):
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(0, vmax), cmap=cmap)
    bar = fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label(label, fontsize=8)


@figure_style
def overlay_figure(image, cam, title: str = "", alpha: float = 0.6, cmap: str = CMAP, vmax: float = 1.0,
                   label: str = PER_IMAGE):
    """Figure: the image the model saw (left) and the Grad-CAM overlay with a colour bar (right)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(_gray(image), cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("model input")
    axes[1].imshow(overlay(image, cam, alpha, cmap, vmax))
    axes[1].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    _colorbar(fig, axes[1], cmap, label, vmax)
    if title:
        fig.suptitle(title)
    return fig


def map_scale(cams, q: float = 99.0) -> float:
    """One colour scale for a set of raw maps: their `q`-th percentile (positive; 1 when all are zero)."""
    values = np.asarray(cams, dtype=np.float64).ravel()
    values = values[values > 0]
    return float(np.percentile(values, q)) if values.size else 1.0


@figure_style
def gradcam_pairs(images, cams, y, p, threshold: float, scale: float, class_names=("NORMAL", "PNEUMONIA"),
                  cells=None, per_row: int = 2, title: str = "", scale_note: str = "", alpha: float = 0.6,
                  cmap: str = CMAP, where: bool = True, panel: float = PANEL):
    """Each example as a pair: the X-ray as the model saw it, and the Grad-CAM of its PREDICTED class over it.

    `cams`: raw maps (`grad_cam(..., target_class=predicted, normalize="none")`), all drawn on ONE colour scale
    [0, `scale`] (e.g. `map_scale` of all the test maps: a weak map looks weak instead of being stretched to full
    colour). Titles give the true class, the call at `threshold` and P(positive), and which class the map
    explains; `cells` (e.g. "TP") label the kind of case; with `where`, each map's title says where its heat lies
    (share on the lungs, the marker corners and the border band: `cxr.explain.case_regions`). One colour bar, its
    scale stated (`scale_note`). `panel`: the width of each X-ray panel in inches (`PANEL`, 1.5 in: about 140 px
    at the notebook's 100 dpi, below the images' 224 px: the figure's PNG stays small, still lossless)."""
    import matplotlib.pyplot as plt

    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    k = len(y)
    if not (len(images) == len(cams) == k == len(p)):
        raise ValueError(f"{len(images)} images, {len(cams)} maps, {k} labels and {len(p)} probabilities")
    if k == 0:
        fig, ax = plt.subplots(figsize=(4.0, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no cases to show", ha="center", va="center", transform=ax.transAxes)
        return fig
    per_row = max(1, min(per_row, k))
    nrows = -(-k // per_row)
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(2 * panel * per_row + 1.0, (panel + 0.7) * nrows + 0.3),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    called = (p >= threshold).astype(int)
    regions = None
    if where:
        from cxr.explain.checks import _pct, case_regions

        regions = case_regions(np.asarray(cams))
    for i in range(k):
        ax_i, ax_c = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        kind = f"{cells[i]}: " if cells is not None else ""
        ax_i.imshow(_gray(images[i]), cmap="gray", vmin=0, vmax=255)
        ax_i.set_title(f"{kind}true {class_names[y[i]]},\ncalled {class_names[called[i]]}\n"
                       f"P({class_names[1].lower()}) = {p[i]:.3f}", fontsize=7)
        ax_c.imshow(overlay(images[i], cams[i], alpha, cmap, scale))
        heat = ""
        if regions is not None:
            r = regions.iloc[i]
            heat = ("\nno heat" if r["empty"] else f"\nheat: lungs {_pct(r['lungs_share'])},\nmarkers "
                    f"{_pct(r['markers_share'])}, border {_pct(r['border_share'])}")
        ax_c.set_title(f"evidence for {class_names[called[i]]}{heat}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _colorbar(fig, axes.ravel().tolist(), cmap, "Grad-CAM of the predicted class" + (f"\n{scale_note}" if scale_note
                                                                                      else ""), scale)
    return fig


@figure_style
def randomization_figure(table: pd.DataFrame, images=None, n_images: int = 2, cmap: str = CMAP):
    """Figure: mean Spearman correlation per cascade step with +-1 SD over the images as error bars (left; the
    y axis always holds every bar whole) and, with `images`, the maps per step."""
    import matplotlib.pyplot as plt

    cams = table.attrs.get("cams")
    show = images is not None and cams is not None
    n_images = min(n_images, len(images)) if show else 0
    ncols = len(table) if show else 0
    fig = plt.figure(figsize=(5.5 + 1.6 * ncols, 3.6 + 1.6 * n_images), layout="constrained")
    grid = fig.add_gridspec(max(n_images, 1), 1 + ncols, width_ratios=[3] + [1] * ncols)
    ax = fig.add_subplot(grid[:, 0])
    mean = table["spearman_mean"].to_numpy(float)
    sd = np.nan_to_num(table["spearman_std"].to_numpy(float))
    n = int(table["n_images"].max()) if "n_images" in table and len(table) else 0
    ax.errorbar(table["step"], mean, yerr=sd, marker="o", capsize=3,
                label="mean +- 1 SD over " + (f"{n} images" if n else "the images"))
    ax.set_xticks(table["step"], table["randomised_to"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Spearman correlation\nwith the trained map")
    ax.set_xlabel("randomised from the top down to")
    finite = np.isfinite(mean)
    low = float(np.min((mean - sd)[finite], initial=0.0))
    high = float(np.max((mean + sd)[finite], initial=1.0))
    ax.set_ylim(min(-0.25, low - 0.05), max(1.05, high + 0.05))
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Cascading randomisation (Adebayo et al. 2018)", fontsize=10)
    for r in range(n_images):
        for c in range(ncols):
            a = fig.add_subplot(grid[r, 1 + c])
            a.imshow(overlay(images[r], cams[c][r], cmap=cmap, vmax=max(float(np.max(cams[0][r])), 1e-12)))
            a.axis("off")
            if r == 0:
                a.set_title(str(table["randomised_to"].iloc[c])[:14], fontsize=7)
    return fig


@figure_style
def deletion_insertion_figure(result: Faithfulness):
    """Figure: mean deletion and insertion curves, heat order vs random order, areas in the legend."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for o, style in (("heat", "-"), ("random", "--")):
            c = result.curves[f"{kind}_{o}"]
            ax.plot(result.fractions, c.mean(0), style, label=f"{o} order (AUC {result.auc[f'{kind}_{o}'].mean():.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'revealed'}")
        ax.set_ylabel("model probability of the target class")
        ax.set_ylim(0, 1)
        ax.set_title(f"{kind.capitalize()} ({'lower' if kind == 'deletion' else 'higher'} AUC = more faithful)")
        ax.legend()
    return fig


@figure_style
def shortcut_figure(audit: pd.DataFrame):
    """Figure: per group of a `shortcut_audit` table (confusion cell, and all maps), the mean share of heat on the
    lungs, the marker corners, the border band and outside the body box, each with its area share (what a
    uniform map would give) as a dashed line in the bar's colour."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    cell = audit["cell"] if "cell" in audit else pd.Series([""] * len(audit))
    labels = [f"{k}\n{c}" if k and k != "all" else f"{c}\n{o}" for k, c, o in zip(cell, audit["class"],
                                                                                  audit["outcome"])]
    pos = np.arange(len(audit))
    bars = (("lungs", "lungs"), ("markers", "marker corners"), ("border", "border band"),
            ("outside_body", "outside body box"))
    width = 0.8 / len(bars)
    for j, (key, name) in enumerate(bars):
        ax.bar(pos - 0.4 + width * (j + 0.5), audit[f"{key}_share_mean"], width, color=f"C{j}", label=name)
        ax.axhline(audit[f"{key}_area"].iloc[0], color=f"C{j}", ls="--", lw=1)
    ax.plot([], [], color="grey", ls="--", lw=1, label="area share (uniform map)")
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("mean share of each map's Grad-CAM heat")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncols=2)
    ax.set_title("Shortcut audit: where the heat falls")
    return fig
