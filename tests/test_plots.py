"""cxr.plots: every function returns a Figure with the expected panels, and saves as PNG."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cxr import plots
from cxr.evaluate import curves as evaluate_curves
from cxr.evaluate import calibration


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _index(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subtype = rng.choice(["normal", "bacteria", "virus"], n)
    return pd.DataFrame({
        "path": [f"train/x{i}.jpeg" for i in range(n)],
        "official_split": rng.choice(["train", "test"], n),
        "split": rng.choice(["train", "test"], n),
        "label": np.where(subtype == "normal", "NORMAL", "PNEUMONIA"),
        "subtype": subtype,
        "patient_id": [f"p{i // 3}" for i in range(n)],
        "width": rng.integers(900, 2000, n),
        "height": rng.integers(700, 1800, n),
        "mode": rng.choice(["L", "RGB"], n, p=[0.9, 0.1]),
        "sha1": [f"{i:040x}" for i in range(n)],
    })


def _visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_roc_pr_calibration_has_three_panels(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.5 * y + 0.5 * rng.random(200), 0, 1)
    found = evaluate_curves.task_curves(y, p, 0.5, groups=np.arange(200) // 2, n_bootstrap=50, ci_level=0.95, seed=0)
    fig = plots.roc_pr_calibration(found.discrimination, found.reliability, title="test")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert {"ROC", "Precision-recall", "Reliability"} <= set(titles)
    assert len(fig.axes) == 4  # three panels + the histogram twin of the reliability panel
    ax_cal = next(ax for ax in fig.axes if ax.get_title() == "Reliability")
    curve = calibration.smoothed_reliability(y, p, np.arange(200) // 2, n_bootstrap=50, ci_level=0.95, seed=0)
    np.testing.assert_allclose(ax_cal.get_lines()[1].get_ydata(), curve["observed"])  # the smoothed curve
    assert len(ax_cal.collections) == 1  # and its band
    out = plots.save_figure(fig, tmp_path / "a" / "b" / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["roc.png"]  # no temporary file left


def test_confusion_heatmap_shows_counts():
    fig = plots.confusion_matrix([[50, 10], [5, 100]], ["NORMAL", "PNEUMONIA"])
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("100") for t in texts) and any(t.startswith("5\n") for t in texts)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["NORMAL", "PNEUMONIA"]


def test_data_figures(tmp_path):
    index = _index()
    fig = plots.class_balance(index)
    assert len(fig.axes) == 2
    assert any("pneumonia" in t.get_text() for t in fig.axes[0].get_xticklabels())
    assert len(plots.images_per_patient(index).axes) == 1
    assert len(plots.image_sizes(index).axes) == 2
    assert "none excluded" in fig._suptitle.get_text()
    plots.save_figure(plots.class_balance(index.drop(columns="split")), tmp_path / "balance.png")
    assert (tmp_path / "balance.png").stat().st_size > 1000


def test_example_grid_and_class_examples():
    images = [np.full((16, 16), v, np.uint8) for v in (0, 128, 255)]
    fig = plots.example_grid(images, ["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4 and sum(ax.get_title() != "" for ax in fig.axes) == 3
    with pytest.raises(ValueError, match="titles"):
        plots.example_grid(images, ["a"])
    index = _index()
    prepared = SimpleNamespace(index=index, images=np.zeros((len(index), 16, 16), np.uint8))
    fig = plots.class_examples(prepared, per_class=2, seed=0)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and sum(t.startswith("virus") for t in titles) == 2


def test_augmentation_grid_shows_the_resampling_paths_and_the_training_views():
    from cxr.config import Config

    cfg = Config.preset("smoke", backbone="tiny_cnn", image_size=32, aug_resample=0.5, aug_border=0.1)
    image = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    fig = plots.augmentation_grid(cfg, image, n=4, seed=0)
    shown = [im.get_array() for ax in fig.axes for im in ax.images]
    assert len(shown) == 8
    np.testing.assert_array_equal(shown[0], image)
    assert all(np.abs(s.astype(float) - image).mean() > 1 for s in shown[1:])  # every copy differs


def test_flow_diagram_draws_every_stage():
    flow = pd.DataFrame([("files found (image files)", 110, None, ""), ("unreadable (skipped)", 3, None, "corrupt: 3"),
                         ("readable images", 107, 80, ""), ("excluded: a reason", 2, 2, ""),
                         ("training (cross-validated)", 85, 60, "NORMAL 40, PNEUMONIA 45; 4 folds"),
                         ("official test", 20, 18, "NORMAL 10, PNEUMONIA 10")],
                        columns=["stage", "images", "children", "detail"])
    fig = plots.flow_diagram(flow)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for stage, images in zip(flow["stage"], flow["images"]):
        assert stage in texts and f"{images:,} images" in texts
    assert "4 folds" in texts and "60 children" in texts


def test_selection_figure_and_fold_table():
    from types import SimpleNamespace

    pooled = pd.DataFrame([("head", o, e, 0.3 - 0.01 * e + d, 0.35 - 0.01 * e + d, 0.95)
                           for o, d in (("none", 0.0), ("weights", 0.02)) for e in range(1, 6)]
                          + [("finetune", "none", e, 0.2 - 0.03 * e, 0.3 - 0.03 * e, 0.97) for e in (1, 2, 3)],
                          columns=["stage", "option", "epoch", "selection_loss", "oof_loss", "oof_auroc"])
    history = pd.DataFrame([(f, "finetune", "none", e, 0.3 - 0.03 * e + 0.01 * f) for f in range(3) for e in (1, 2, 3)],
                           columns=["fold", "stage", "option", "epoch", "oof_loss"])
    selection = pd.DataFrame([("head", 5, 5, 0.25, 0.30, 0.95, False), ("finetune", 3, 3, 0.11, 0.21, 0.97, True)],
                             columns=["stage", "epochs", "best_epoch", "selection_loss", "oof_loss", "oof_auroc",
                                      "kept"])
    oof = pd.DataFrame({"position": range(8), "fold": [0, 0, 1, 1, 2, 2, 2, 0], "y": [0, 1] * 4,
                        "p": [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.6, 0.4]})
    result = SimpleNamespace(pooled=pooled, history=history, selection=selection, balance="none", task="toy",
                             n_folds=3, kept_stage="finetune", kept_epoch=3, oof=oof)
    fig = plots.selection_figure(result)
    assert len(fig.axes) == 2 and "kept: finetune, epoch 3" in fig._suptitle.get_text()  # head, fine-tuning
    table = plots.fold_table(result)
    assert list(table.index[:3]) == [0, 1, 2] and table.loc[0, "held-out images"] == 3


def test_compact_png_is_lossless_for_grey_and_colour_pictures_in_no_more_bytes():
    import io

    from PIL import Image

    def raw_png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=plots.DPI)
        return buf.getvalue()

    def rgba(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(int)

    rng = np.random.default_rng(0)
    xray = rng.integers(0, 256, (300, 300))  # textured like an X-ray
    grey, ax = plt.subplots()
    ax.imshow(xray, cmap="gray", vmin=0, vmax=255)
    heat, ax = plt.subplots()
    ax.imshow(xray, cmap="gray", vmin=0, vmax=255)
    ax.imshow(np.outer(np.linspace(0, 1, 300), np.linspace(0, 1, 300)), cmap="inferno", alpha=0.5)
    for fig, mode in ((grey, "L"), (heat, "RGB")):
        before = raw_png(fig)
        after = plots.compact_png(before)
        assert Image.open(io.BytesIO(after)).mode == mode and len(after) < len(before)
        np.testing.assert_array_equal(rgba(after), rgba(before))  # every pixel kept, colour or grey
    assert Image.open(io.BytesIO(plots.png_bytes(heat))).mode == "RGB"  # no palette: nothing quantized
    clear = Figure()
    clear.patch.set_alpha(0.0)  # a see-through figure keeps its alpha channel
    clear.add_subplot().plot([0, 1])
    data = raw_png(clear)
    assert Image.open(io.BytesIO(plots.compact_png(data))).mode == "RGBA"
    np.testing.assert_array_equal(rgba(plots.compact_png(data)), rgba(data))
    smooth, ax = plt.subplots()
    ax.imshow(np.outer(np.linspace(0, 1, 8), np.linspace(0, 1, 8)), cmap="inferno")
    assert len(plots.compact_png(raw_png(smooth))) <= len(raw_png(smooth))  # never larger than its input
