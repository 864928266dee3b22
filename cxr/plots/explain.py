"""Figures of the explanations: overlays, the confusion-cell grid and the figures of the checks."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.plots.style import figure_style

CELLS = ("TP", "TN", "FP", "FN")
CELL_TITLES = {"TP": "true positives", "TN": "true negatives", "FP": "false positives", "FN": "false negatives"}

def _gray(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a grayscale image (H, W) or (H, W, 1), got shape {img.shape}")
    return img


def overlay(image_uint8, cam, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """The grayscale image with the heatmap blended over it: RGB uint8 (H, W, 3)."""
    from matplotlib import colormaps

    img = _gray(image_uint8).astype(np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape:
        from cxr.explain.cam import finish_cams

        cam = finish_cams(cam[None], img.shape)[0]
    heat = colormaps[cmap](np.clip(cam, 0, 1))[..., :3] * 255.0
    rgb = np.repeat(img[..., None], 3, axis=-1)
    return np.clip((1 - alpha) * rgb + alpha * heat, 0, 255).astype(np.uint8)


def _colorbar(fig, axes, cmap: str = "jet", label: str = "Grad-CAM (per-image max = 1)"):
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.04, label=label)


@figure_style
def overlay_figure(image, cam, title: str = "", alpha: float = 0.4, cmap: str = "jet"):
    """Figure: the image the model saw (left) and the Grad-CAM overlay with a colour bar (right)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(_gray(image), cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("model input")
    axes[1].imshow(overlay(image, cam, alpha, cmap))
    axes[1].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    _colorbar(fig, axes[1], cmap)
    if title:
        fig.suptitle(title)
    return fig


def pick_confusion_examples(y_true, p, threshold: float, per_cell: int = 2) -> dict[str, np.ndarray]:
    """Indices of the examples per confusion cell, by a fixed rule: the most confident of each cell.

    Predicted positive means p >= threshold. TP and FP: highest p first; TN and FN: lowest p first (ties by index).
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"y_true ({len(y)}) and p ({len(p)}) differ in length")
    pred = p >= threshold
    masks = {"TP": (y == 1) & pred, "TN": (y == 0) & ~pred, "FP": (y == 0) & pred, "FN": (y == 1) & ~pred}
    out = {}
    for cell, mask in masks.items():
        idx = np.flatnonzero(mask)
        key = -p[idx] if cell in ("TP", "FP") else p[idx]
        out[cell] = idx[np.argsort(key, kind="stable")][:per_cell]
    return out


@figure_style
def confusion_grid(images, cams, y_true, p, threshold: float, per_cell: int = 2,
                   class_names=("NORMAL", "PNEUMONIA"), alpha: float = 0.4, cmap: str = "jet"):
    """Figure: rows TP, TN, FP, FN (chosen by `pick_confusion_examples`), `per_cell` overlays each, one colour bar."""
    import matplotlib.pyplot as plt

    picks = pick_confusion_examples(y_true, p, threshold, per_cell)
    fig, axes = plt.subplots(4, per_cell, figsize=(2.8 * per_cell + 1.2, 11), squeeze=False)
    y = np.asarray(y_true).astype(int).reshape(-1)
    for r, cell in enumerate(CELLS):
        for c in range(per_cell):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(picks[cell]):
                i = int(picks[cell][c])
                ax.imshow(overlay(images[i], cams[i], alpha, cmap))
                ax.set_title(f"{cell} #{i}: true {class_names[y[i]]}\nP({class_names[1]})={float(p[i]):.3f}",
                             fontsize=8)
            elif c == 0:
                ax.text(0.5, 0.5, f"no {CELL_TITLES[cell]}", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"Grad-CAM by confusion cell (most confident per cell, threshold {threshold:.3f})")
    _colorbar(fig, axes.ravel().tolist(), cmap)
    return fig


@figure_style
def randomization_figure(table: pd.DataFrame, images=None, n_images: int = 2, cmap: str = "jet"):
    """Figure: mean Spearman correlation per cascade step (left) and, with `images`, the maps per step."""
    import matplotlib.pyplot as plt

    cams = table.attrs.get("cams")
    show = images is not None and cams is not None
    n_images = min(n_images, len(images)) if show else 0
    ncols = len(table) if show else 0
    fig = plt.figure(figsize=(5 + 1.6 * ncols, 3.2 + 1.6 * n_images), layout="constrained")
    grid = fig.add_gridspec(max(n_images, 1), 1 + ncols, width_ratios=[3] + [1] * ncols)
    ax = fig.add_subplot(grid[:, 0])
    ax.errorbar(table["step"], table["spearman_mean"], yerr=table["spearman_std"], marker="o", capsize=3)
    ax.set_xticks(table["step"], table["randomised_to"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Spearman rank correlation with the trained map")
    ax.set_xlabel("randomised from the top down to")
    ax.set_ylim(-0.25, 1.05)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("Cascading randomisation (Adebayo et al. 2018)")
    for r in range(n_images):
        for c in range(ncols):
            a = fig.add_subplot(grid[r, 1 + c])
            a.imshow(overlay(images[r], cams[c][r], cmap=cmap))
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
    """Figure: mean border and outside-body heat share per (class, outcome), with the uniform-map area shares."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{c}\n{o}" for c, o in zip(audit["class"], audit["outcome"])]
    pos = np.arange(len(audit))
    ax.bar(pos - 0.2, audit["border_share_mean"], 0.4, label="border band")
    ax.bar(pos + 0.2, audit["outside_body_share_mean"], 0.4, label="outside body box")
    ax.axhline(audit["border_area"].iloc[0], color="C0", ls="--", lw=1, label="border area (uniform map)")
    ax.axhline(audit["outside_body_area"].iloc[0], color="C1", ls="--", lw=1, label="outside-body area (uniform map)")
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("share of Grad-CAM heat")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Shortcut audit: where the heat falls")
    return fig
