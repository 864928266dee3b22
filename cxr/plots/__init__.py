"""Figures of the study, one module per stage: `data`, `training`, `evaluation`, `explain`. Every function
returns a matplotlib Figure (nothing here calls `plt.show` or changes matplotlib's global style);
`save_figure` writes one as a PNG atomically."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from cxr.io import atomic_write_bytes
from cxr.plots.data import (augmentation_grid, class_balance, class_examples, example_grid,  # noqa: F401
                            flow_diagram, image_sizes, images_per_patient)
from cxr.plots.evaluation import (decision_curve_figure, error_rates_figure, net_benefit_figure,  # noqa: F401
                                  prevalence_figure, reliability, threshold_stability_figure)
from cxr.plots.crossval import fold_table, selection_figure  # noqa: F401
from cxr.plots.explain import (deletion_insertion_figure, gradcam_pairs, map_scale, overlay,  # noqa: F401
                               overlay_figure, randomization_figure, shortcut_figure)
from cxr.plots.style import CLASS_COLORS, STYLE, SUBTYPE_COLORS, figure_style, style_rc  # noqa: F401
from cxr.plots.training import confusion_matrix, roc_pr_calibration  # noqa: F401


DPI = 100  # the notebook embeds every figure: small enough for GitHub to render it quickly


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """`fig` rendered as PNG bytes, made compact (`compact_png`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return compact_png(buf.getvalue())


def compact_png(data: bytes) -> bytes:
    """A smaller PNG of the same picture, for a notebook that embeds every figure: no alpha channel (figures are
    opaque); a picture whose pixels are all grey (X-ray grids) as 8-bit grayscale, losslessly; any other as 256
    colours (median cut) with Floyd-Steinberg dithering, which keeps the colour ramps of heat maps smooth. About
    half the bytes of matplotlib's RGBA output for the study's figures; `data` itself where that is not smaller
    (dithering a large smooth picture can add bytes)."""
    import numpy as np
    from PIL import Image

    rgb = Image.open(io.BytesIO(data)).convert("RGB")
    pixels = np.asarray(rgb)
    if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
        out = rgb.convert("L")
    else:
        palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        out = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue() if buf.tell() < len(data) else data


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG at `path` atomically (parent folders created)."""
    return atomic_write_bytes(Path(path), png_bytes(fig, dpi))
