"""Where the Grad-CAM heat lies (lungs, marker corners, border band), the near-threshold cases, the colour map,
and lossless figures: on made-up maps and tiny figures (no model)."""
from __future__ import annotations

import io
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import explain, plots, reporting
from cxr.data.markers import ZONES
from cxr.evaluate.baseline import LUNG_BOX
from cxr.explain.checks import _pct

S = 50  # map size: every region has whole pixels


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _corner_map() -> np.ndarray:
    """All heat in the bottom-right marker zone (the stamp's "KV" corner)."""
    cam = np.zeros((S, S))
    top, bottom, left, right = ZONES[0]
    cam[int(top * S):, int(left * S):] = 1.0
    return cam


def _centre_map() -> np.ndarray:
    cam = np.zeros((S, S))
    cam[S // 2 - 3:S // 2 + 3, S // 2 - 3:S // 2 + 3] = 2.0
    return cam


def test_heat_shares_by_region_on_made_up_maps():
    cams = np.stack([_corner_map(), np.ones((S, S)), _centre_map(), np.zeros((S, S))])
    cams[2, 0, 0] = -5.0  # negative values are no heat: the centre map keeps all its (positive) heat on the lungs
    shares = explain.heat_shares(cams)
    corner, uniform, centre, empty = (shares.iloc[i] for i in range(4))
    masks = explain.region_masks((S, S))
    in_band = (cams[0] * masks["border"]).sum() / cams[0].sum()  # the zone reaches a little inside the band
    assert corner["markers_share"] == 1.0 and corner["lungs_share"] == 0.0
    assert corner["border_share"] == pytest.approx(in_band) and 0.8 < in_band < 1
    assert centre["lungs_share"] == 1.0 and centre["markers_share"] == 0.0 and centre["border_share"] == 0.0
    for region in explain.REGIONS:  # a uniform map: each share is the region's share of the image
        assert uniform[f"{region}_share"] == pytest.approx(shares.attrs[f"{region}_area"])
    assert bool(empty["empty"]) and np.isnan(empty["lungs_share"])
    top, bottom, left, right = LUNG_BOX  # the lung box is the baseline's, the marker corners the markers' zones
    assert shares.attrs["lungs_area"] == pytest.approx((bottom - top) * (right - left))
    assert masks["markers"].sum() == sum((round(b * S) - int(t * S)) * (round(r * S) - int(l_ * S))
                                         for t, b, l_, r in ZONES)
    assert not (masks["lungs"] & masks["markers"]).any()
    assert shares.attrs["border_area"] == pytest.approx(1 - 0.8 ** 2)


def test_shortcut_audit_per_cell_and_describe_where_names_the_numbers():
    cams = np.stack([_centre_map(), _centre_map(), np.ones((S, S)), _corner_map(), _corner_map()])
    y_true = [1, 1, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 1]  # two TP (heat on the lungs), one TN (uniform), two FP (heat on the marker corner)
    audit = explain.shortcut_audit(cams, y_true, y_pred)
    assert audit["cell"].tolist() == ["TP", "TN", "FP", "FN", "all"]
    by = audit.set_index("cell")
    assert by.loc["TP", "n"] == 2 and by.loc["TP", "lungs_share_mean"] == 1.0
    assert by.loc["FP", "n"] == 2 and by.loc["FP", "markers_share_mean"] == 1.0
    assert by.loc["FN", "n"] == 0 and by.loc["all", "n"] == 5
    assert by.loc["TN", "markers_share_mean"] == pytest.approx(by.loc["TN", "markers_area"])
    text = reporting.describe_where(audit)
    assert ("Mean share of a map's heat on the lungs/marker corners/outer border band (of the image's area: "
            f"{_pct(by.loc['TP', 'lungs_area'])}/{_pct(by.loc['TP', 'markers_area'])}/"
            f"{_pct(by.loc['TP', 'border_area'])})") in text  # each region's share of the image, stated once
    assert "true positives (2) 100%/0.0%/" in text  # on the lungs, none on the marker corners
    assert f"false positives (2) 0.0%/100%/{_pct(by.loc['FP', 'border_share_mean'])}" in text
    assert "no false negatives" in text and "all 5 maps" in text
    assert "On the false positives, more heat lies on the border band than on the lungs." in text
    assert f"holds {_pct(by.loc['all', 'markers_in_border'])} of the marker corners" in text
    assert "border" in reporting.describe_audit(audit)  # the older sentence still reads the table
    fig = plots.shortcut_figure(audit)
    assert len(fig.axes[0].patches) == 4 * len(audit)  # four regions per group


def test_case_regions_caption_per_image_shown():
    cams = np.stack([_corner_map(), _centre_map(), np.zeros((S, S))])
    regions = explain.case_regions(cams, cells=["FP", "TP", "TN"], p=[0.9, 0.8, 0.1], index=[7, 3, 5])
    assert regions.index.tolist() == [7, 3, 5] and regions["cell"].tolist() == ["FP", "TP", "TN"]
    assert regions["markers_share"].iloc[0] == 1.0 and regions["lungs_share"].iloc[1] == 1.0
    text = reporting.describe_case_regions(regions)
    assert text.startswith("Heat of each map (left to right, top to bottom) on the lungs/marker corners/outer "
                           "border band (an even spread: ")
    assert "1. FP (P=0.900) 0.0%/100%/" in text  # none on the lungs, all on the marker corners
    assert "2. TP (P=0.800) 100%/0.0%/0.0%" in text
    assert "3. TN (P=0.100) no heat" in text


def test_near_threshold_cases_pick_the_closest_on_each_side():
    y = [0, 1, 0, 1, 1, 0, 1]
    p = [0.05, 0.48, 0.30, 0.50, 0.52, 0.49, 0.99]
    near = explain.near_threshold_cases(y, p, 0.5, k=2)
    assert near.index.tolist() == [1, 5, 3, 4]  # 0.48 and 0.49 below, 0.50 and 0.52 at or above, in rising p
    assert near["cell"].tolist() == ["FN", "TN", "TP", "TP"]
    assert near["distance"].tolist() == pytest.approx([0.02, 0.01, 0.0, 0.02])
    one_side = explain.near_threshold_cases([0, 0, 1], [0.1, 0.2, 0.3], 0.5, k=2)
    assert one_side.index.tolist() == [1, 2]  # nothing at or above: only the two closest below
    with pytest.raises(ValueError, match="differ in length"):
        explain.near_threshold_cases([0, 1], [0.2], 0.5)


def test_maps_are_drawn_in_inferno_and_the_scale_is_said():
    from matplotlib import colormaps

    full = plots.overlay(np.zeros((4, 4), np.uint8), np.ones((4, 4)), alpha=1.0)
    np.testing.assert_allclose(full[0, 0], np.asarray(colormaps["inferno"](1.0)[:3]) * 255, atol=1)
    assert "99th percentile" in explain.SCALE_NOTE
    values = np.arange(1, 101, dtype=float)
    assert plots.map_scale(values) == pytest.approx(np.percentile(values, 99))  # what the note says
    images = np.full((2, S, S), 100, np.uint8)
    cams = np.stack([_centre_map(), _corner_map()])
    fig = plots.gradcam_pairs(images, cams, [1, 0], [0.9, 0.7], 0.5, scale=2.0, cells=["TP", "FP"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("evidence for")]
    titles = [t.replace("\n", " ") for t in titles]  # the heat line wraps to fit a small panel
    assert titles[0].endswith("heat: lungs 100%, markers 0.0%, border 0.0%")
    assert titles[1].endswith("heat: lungs 0.0%, markers 100%, border 90%")  # the zone pokes out of the band
    assert fig.axes[-1].get_ylabel().startswith("Grad-CAM of the predicted class")


def test_saved_figures_are_lossless(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, S, S)).astype(np.uint8)
    cams = rng.random((2, S, S))
    fig = plots.gradcam_pairs(images, cams, [1, 0], [0.9, 0.2], 0.5, scale=1.0, cells=["TP", "TN"])
    canvas = io.BytesIO()
    fig.savefig(canvas, format="png", dpi=plots.DPI, bbox_inches="tight")  # matplotlib's own render, unreduced
    path = plots.save_figure(fig, tmp_path / "pairs.png")
    saved = Image.open(path)
    assert saved.mode in ("RGB", "L")  # no palette
    np.testing.assert_array_equal(np.asarray(saved.convert("RGBA")),
                                  np.asarray(Image.open(canvas).convert("RGBA")))
    assert path.stat().st_size <= len(canvas.getvalue())


def test_the_gradcam_step_gives_the_near_threshold_cases_and_their_caption():
    from cxr.pipeline import GradCam

    y = np.array([1, 0, 1, 0])
    p = np.array([0.95, 0.45, 0.55, 0.05])
    maps = np.stack([_centre_map(), _corner_map(), _centre_map(), np.zeros((S, S))])
    near = explain.near_threshold_cases(y, p, 0.5, k=1)
    cam = GradCam("pneumonia", np.zeros((4, S, S), np.uint8), y, p, 0.5, (p >= 0.5).astype(int), maps, 2.0,
                  explain.confident_cases(y, p, 0.5, ("TP", "TN"), 1), explain.confident_cases(y, p, 0.5, ("FP",
                                                                                                   "FN"), 1), near)
    assert near.index.tolist() == [1, 2]
    pairs = cam.pairs(cam.near)
    assert pairs["cells"] == ["TN", "TP"] and len(pairs["images"]) == 2
    assert "99th percentile" in pairs["scale_note"]
    assert cam.where(cam.near).startswith("Heat of each map (left to right, top to bottom) on the lungs/marker "
                                          "corners/outer border band")
    assert "1. TN (P=0.450) 0.0%/100%/" in cam.where(cam.near)


def test_where_summary_names_the_false_positives_and_all_maps_with_the_areas():
    from cxr.explain.checks import shortcut_audit
    from cxr.reporting import where_summary

    cams = np.zeros((4, 64, 64), np.float32)
    cams[:, 30:34, 30:34] = 1.0  # heat in the centre: on the lungs
    audit = shortcut_audit(cams, np.array([0, 0, 1, 1]), np.array([1, 0, 1, 1]))
    block = where_summary(audit)
    assert block["summary"].startswith("Mean heat on the lungs/marker corners/border band (image area ")
    assert "false positives (1) 100%/0.0%/0.0%" in block["summary"]  # all on the lungs
    assert "all maps (4)" in block["summary"]
    assert ("the false positives' heat lies mostly on the lungs, below an even spread on the marker corners: where, not "
            "why (a shortcut inside the lungs is not ruled out)") in block["summary"]
    corner = np.zeros((4, 64, 64), np.float32)
    corner[:, :4, :4] = 1.0  # heat in the top-left corner: the stamp's "R"
    stamped = where_summary(shortcut_audit(corner, np.array([0, 0, 1, 1]), np.array([1, 0, 1, 1])))["summary"]
    assert ("on the lungs no more than an even spread, above an even spread on the marker corners (a sign of the "
            "stamp shortcut)") in stamped
    no_fp = where_summary(shortcut_audit(cams, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])))["summary"]
    assert "false positives" not in no_fp and "the maps' heat lies mostly on the lungs" in no_fp
    assert reporting.headline_findings({}, {"at_threshold": {"specificity": {"value": 0.9}}}) == []
    doc = {"explanation": {"summary": "old words", "groups": block["groups"]}}
    assert reporting.headline_findings(doc, {"at_threshold": {"specificity": {"value": 0.9}}}) == [
        "- Grad-CAM: " + block["summary"][:1].lower() + block["summary"][1:]]  # written from the numbers
    assert len(block["groups"]) == len(audit)
