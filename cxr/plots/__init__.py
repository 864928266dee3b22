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
from cxr.plots.markers import marker_grid, marker_picks  # noqa: F401
from cxr.plots.evaluation import score_distributions  # noqa: F401
from cxr.plots.training import training_curves  # noqa: F401
from cxr.plots.explain import (deletion_insertion_figure, gradcam_pairs, map_scale, overlay,  # noqa: F401
                               overlay_figure, randomization_figure, shortcut_figure)
from cxr.plots.style import CLASS_COLORS, STYLE, SUBTYPE_COLORS, figure_style, style_rc  # noqa: F401
from cxr.plots.training import confusion_matrix, roc_pr_calibration  # noqa: F401


DPI = 100  # the notebook embeds every figure: small enough for GitHub to render it quickly (and under 5 MB)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """`fig` rendered as PNG bytes at `dpi`, losslessly made compact (`compact_png`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return compact_png(buf.getvalue())


def compact_png(data: bytes) -> bytes:
    """The same picture in fewer bytes, losslessly (every pixel kept): no alpha channel where every pixel is
    opaque (figures are), 8-bit grayscale where every pixel is grey (X-ray grids), and Pillow's best PNG compression
    (`optimize`); `data` itself where that is not smaller. No colour is quantized: the size of the notebook is
    kept down by the figures' size and dots per inch (`DPI`) instead."""
    import numpy as np
    from PIL import Image

    rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    pixels = np.asarray(rgba)
    out = rgba
    if (pixels[..., 3] == 255).all():
        out = rgba.convert("RGB")
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            out = rgba.convert("L")
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue() if buf.tell() < len(data) else data


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG at `path` atomically (parent folders created)."""
    return atomic_write_bytes(Path(path), png_bytes(fig, dpi))
