"""The marker audit shown: `cxr.plots.markers.marker_grid` on made-up images, some with the stamp pasted in
(`cxr.data.markers.paste_stamp`), as `detect` finds it."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from cxr.data import markers  # noqa: E402
from cxr.plots.markers import ZONE_OF, marker_grid, marker_picks  # noqa: E402


def _made_up(n: int = 8, stamped: tuple[int, ...] = (1, 4, 6), size: int = 224) -> tuple[np.ndarray, pd.DataFrame]:
    """A dark frame with a brighter noisy body in the middle; the stamp pasted on the rows `stamped`."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        a = np.clip(rng.normal(40, 8, (size, size)), 0, 255).astype(np.uint8)
        body = slice(size // 5, 4 * size // 5)
        a[body, body] = np.clip(rng.normal(140, 20, a[body, body].shape), 0, 255)
        images.append(markers.paste_stamp(a) if i in stamped else a)
    index = pd.DataFrame({"official_split": ["train", "test"] * (n // 2),
                          "label": ["PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL"] * (n // 4),
                          "subtype": ["bacteria", "normal", "virus", "normal"] * (n // 4)})
    return np.stack(images), index


def test_the_grid_shows_the_detected_stamps_with_their_zones_and_some_clean_images():
    images, index = _made_up()
    found = markers.detect(images)
    assert found["stamp"].tolist() == [i in (1, 4, 6) for i in range(8)]  # the detector sees what was pasted
    fig = marker_grid(images, found, index, n=8, n_unstamped=2)
    try:
        shown = [ax for ax in fig.axes if ax.images]
        assert len(shown) == 3 + 2
        titles = [ax.get_title() for ax in shown]
        assert [t.startswith("stamp detected") for t in titles] == [True] * 3 + [False] * 2
        assert "test / NORMAL / normal" in titles[0] and "train / PNEUMONIA / virus" in titles[2]  # rows 1 and 6
        for ax in shown[:3]:  # both zones fired on the pasted stamp: one rectangle each, where ZONES says
            boxes = sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in ax.patches
                           if isinstance(p, Rectangle))
            expected = sorted((round(z[2] * 224), round(z[0] * 224)) for z in ZONE_OF.values())
            assert boxes == expected
        assert all(not ax.patches for ax in shown[3:])
        assert "3 of 3 detected" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_the_picks_are_seeded_and_capped_and_bad_input_is_refused():
    found = pd.DataFrame({"kv_score": np.linspace(0, 1, 20), "stamp": np.arange(20) >= 12,
                          "bold_r": np.arange(20) == 0})
    a, b = marker_picks(found, n=5, n_unstamped=30, seed=3)
    a2, b2 = marker_picks(found, n=5, n_unstamped=30, seed=3)
    np.testing.assert_array_equal(a, a2)
    assert len(a) == 5 and set(a) <= set(range(12, 20))
    assert sorted(b2) == list(range(1, 12))  # all the clean ones, never the bold-"R" one
    images, index = _made_up()
    with pytest.raises(ValueError, match="row for row"):
        marker_grid(images[:3], markers.detect(images), index)
    with pytest.raises(ValueError, match="no image"):
        marker_grid(images[:4], pd.DataFrame({"kv_score": [0.9] * 4, "stamp": [False] * 4, "bold_r": [True] * 4}),
                    index.iloc[:4], n_unstamped=4)
