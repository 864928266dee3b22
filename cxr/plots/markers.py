"""The marker audit shown: images where `cxr.data.markers.detect` found the burned-in acquisition stamp, with the
corner zones where it fired drawn on them, beside a few images where it found nothing."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxr.data.markers import ZONES
from cxr.plots.style import _figure, figure_style

# which zone of `ZONES` each detection names: the "KV" text bottom right, the bold "R" top left
ZONE_OF = {"stamp": ZONES[0], "bold_r": ZONES[1]}
ZONE_COLORS = {"stamp": "#e6550d", "bold_r": "#3182bd"}


def marker_picks(found: pd.DataFrame, n: int = 8, n_unstamped: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of `found` (from `detect`) to show: up to `n` images with the stamp (seeded draw, sorted) and
    up to `n_unstamped` with neither the stamp nor a bold "R"."""
    rng = np.random.default_rng(seed)
    stamped = np.flatnonzero(found["stamp"].to_numpy(bool))
    clean = np.flatnonzero(~found["stamp"].to_numpy(bool) & ~found["bold_r"].to_numpy(bool))

    def draw(rows: np.ndarray, k: int) -> np.ndarray:
        return np.sort(rng.choice(rows, size=min(k, len(rows)), replace=False)) if len(rows) else rows

    return draw(stamped, n), draw(clean, n_unstamped)


def _title(index: pd.DataFrame, row: int, found: pd.DataFrame) -> str:
    split = "official_split" if "official_split" in index else "split"
    r = index.iloc[row]
    return f"{r[split]} / {r['label']} / {r['subtype']}\nKV score {found['kv_score'].iloc[row]:.2f}"


@figure_style
def marker_grid(images: np.ndarray, found: pd.DataFrame, index: pd.DataFrame, n: int = 8, n_unstamped: int = 4,
                ncols: int = 4, seed: int = 0, size: float = 1.6) -> Figure:
    """A grid of up to `n` images where the stamp was detected, each corner zone that fired outlined (orange: the
    "KV" text bottom right, `ZONES[0]`; blue: a bold "R" top left, `ZONES[1]`), then up to `n_unstamped` images
    with no detection, each titled with its split, class and subtype and its KV score; `size` inches per panel (1.6:
    about 130 px of X-ray at the notebook's 100 dpi, so the lossless PNG stays small). `images` (N x S x S uint8,
    or N x S x S x 1), `found` (`cxr.data.markers.detect`) and `index` (split, label, subtype) row for row."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    if not len(images) == len(found) == len(index):
        raise ValueError(f"images ({len(images)}), found ({len(found)}) and index ({len(index)}) must be row for row")
    stamped, clean = marker_picks(found, n, n_unstamped, seed)
    rows = [*stamped, *clean]
    if not rows:
        raise ValueError("no image to show")
    ncols = max(1, min(ncols, len(rows)))
    nrows = -(-len(rows) // ncols)
    fig, axes = _figure(nrows, ncols, size=(size, size + 0.5))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        image = images[row]
        h, w = image.shape
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        detected = [k for k in ZONE_OF if bool(found[k].iloc[row])]
        for kind in detected:
            top, bottom, left, right = ZONE_OF[kind]
            ax.add_patch(Rectangle((left * w - 0.5, top * h - 0.5), (right - left) * w, (bottom - top) * h,
                                   fill=False, edgecolor=ZONE_COLORS[kind], linewidth=1.5))
        label = "stamp detected" if row in set(stamped) else "no marker detected"
        ax.set_title(f"{label}\n{_title(index, row, found)}", fontsize=7)
    fig.suptitle(f"Acquisition stamp: {len(stamped)} of {int(found['stamp'].sum())} detected images shown "
                 f"(orange: \"KV\" zone, blue: bold \"R\" zone),\nand {len(clean)} without a detection", fontsize=8)
    fig.tight_layout()
    return fig
