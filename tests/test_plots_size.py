"""The X-ray grids stay small as lossless PNGs: each X-ray panel is drawn at most ~180 px wide at `plots.DPI`, and
a grid of noisy 224-px panels encodes under a byte bound.

Why the bounds: noise of SD 25 grey levels is nearly incompressible, so a PNG's size follows its pixel count
(about 1 byte per grey pixel, 2-3 per colour-overlay pixel). The grids before this change drew 230-260 px panels
and gave, on the same seeded images, 1.52 MB (8 Grad-CAM pairs), 0.82 MB (marker grid of 12) and 0.38 MB
(example grid of 12); with panels of 130-150 px they give 0.55, 0.30 and 0.13 MB. Each bound sits ~30% above the
new size and far below the old one, so a return to the old panel sizes fails here."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import plots

MAX_PANEL_PX = 180


def _noisy(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224]
    base = 128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    return np.clip(base + rng.normal(0, 25, (n, 224, 224)), 0, 255).astype(np.uint8)


def _maps(n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:224, 0:224]
    return np.stack([np.exp(-((yy - 112) ** 2 + (xx - 60 - 10 * i) ** 2) / 2000.0) for i in range(n)]).astype(np.float32)


def _image_panel_widths(fig) -> list[float]:
    fig.canvas.draw()
    return [ax.get_window_extent().width * plots.DPI / fig.dpi for ax in fig.axes if ax.images]


def _png_size(fig) -> int:
    import io

    data = plots.png_bytes(fig)
    plt.close(fig)
    assert Image.open(io.BytesIO(data)).format == "PNG"  # lossless, no palette
    return len(data)


def test_gradcam_pairs_png_is_small():
    k = 8
    fig = plots.gradcam_pairs(_noisy(k), _maps(k), [0, 1] * 4, np.linspace(0.1, 0.9, k), 0.5, 1.0,
                              cells=["FP"] * k, title="errors")
    widths = _image_panel_widths(fig)
    assert len(widths) == 2 * k and max(widths) <= MAX_PANEL_PX
    assert _png_size(fig) < 700_000  # old: 1,520,558 bytes; now about 550,000


def test_marker_grid_png_is_small():
    found = pd.DataFrame({"stamp": [True] * 8 + [False] * 4, "bold_r": False, "kv_score": 0.5})
    index = pd.DataFrame({"split": "train", "label": "NORMAL", "subtype": "normal"}, index=range(12))
    fig = plots.marker_grid(_noisy(12), found, index, n=8)
    widths = _image_panel_widths(fig)
    assert len(widths) == 12 and max(widths) <= MAX_PANEL_PX
    assert _png_size(fig) < 420_000  # old: 819,419 bytes; now about 300,000


@pytest.mark.parametrize("n", [8, 12])  # the augmentation grid (8) and the class examples (12) are example grids
def test_example_grid_png_is_small(n):
    fig = plots.example_grid(_noisy(n), ["normal (p1)"] * n, ncols=4)
    widths = _image_panel_widths(fig)
    assert len(widths) == n and max(widths) <= MAX_PANEL_PX
    assert _png_size(fig) < 200_000 * n / 12  # old (12 panels): 384,532 bytes; now about 129,000


def test_compact_png_keeps_every_pixel():
    import io

    fig = plots.gradcam_pairs(_noisy(2), _maps(2), [0, 1], [0.2, 0.8], 0.5, 1.0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plots.DPI, bbox_inches="tight")
    plt.close(fig)
    raw = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    packed = np.asarray(Image.open(io.BytesIO(plots.compact_png(buf.getvalue()))).convert("RGB"))
    assert np.array_equal(raw, packed)
