"""The figures of issue 22 say what they show: a single image size is stated (not a lone dot), the flow diagram's
arrows end on box edges, children per image count on a log axis, the two training stages on their own epoch axes,
the reliability diagram's binned points with Wilson intervals, the net-benefit figure within 1,100 px, the score
distributions with their threshold, the training curves, and the confusion matrix naming its positive class."""
from __future__ import annotations

import io
import os

os.environ.setdefault("MPLBACKEND", "Agg")

from types import SimpleNamespace

import matplotlib.container
import matplotlib.text
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import plots
from cxr.evaluate import calibration, clinical
from cxr.evaluate import curves as evaluate_curves
from cxr.evaluate.metrics import bootstrap_draws, wilson_bounds
from cxr.plots import evaluation, training


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _scores(n: int = 300, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-3.0 * (rng.normal(size=n) + 2.0 * (y - 0.5) + shift)))
    return y, p


def _width_px(fig) -> int:
    return Image.open(io.BytesIO(plots.png_bytes(fig))).size[0]


def _result() -> SimpleNamespace:
    """A toy TrainResult: 2 imbalance options x 50 head epochs, 3 fine-tuning epochs, 3 folds."""
    pooled = pd.DataFrame([("head", o, e, 0.3 * np.exp(-e / 10) + 0.1 + d, 0.32 * np.exp(-e / 10) + 0.12 + d, 0.95)
                           for o, d in (("none", 0.0), ("weights", 0.02)) for e in range(1, 51)]
                          + [("finetune", "none", e, 0.12 - 0.01 * e, 0.14 - 0.01 * e, 0.97) for e in (1, 2, 3)],
                          columns=["stage", "option", "epoch", "selection_loss", "oof_loss", "oof_auroc"])
    history = pd.DataFrame([(f, s, o, e, 0.5 / e + 0.01 * f, 0.6 / e + 0.02 * f) for f in range(3)
                            for s, o, epochs in (("head", "none", range(1, 51)), ("head", "weights", range(1, 51)),
                                                 ("finetune", "none", (1, 2, 3)))
                            for e in epochs],
                           columns=["fold", "stage", "option", "epoch", "loss", "oof_loss"])
    selection = pd.DataFrame([("head", 50, 50, 0.102, 0.13, 0.95, False), ("finetune", 3, 3, 0.09, 0.11, 0.97, True)],
                             columns=["stage", "epochs", "best_epoch", "selection_loss", "oof_loss", "oof_auroc",
                                      "kept"])
    return SimpleNamespace(pooled=pooled, history=history, selection=selection, balance="none", task="toy",
                           n_folds=3, kept_stage="finetune", kept_epoch=3)


def test_image_sizes_states_a_single_size_instead_of_one_dot():
    index = pd.DataFrame({"label": ["NORMAL"] * 3 + ["PNEUMONIA"] * 5, "width": 224, "height": 224,
                          "patient_id": [f"p{i}" for i in range(8)]})
    fig = plots.image_sizes(index)
    (ax,) = fig.axes
    assert "224 x 224 px" in ax.get_title() and "8 images" in ax.get_title()
    assert not ax.collections  # no scatter
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["3 images of 224 x 224 px", "5 images of 224 x 224 px"]
    varied = index.assign(width=[224, 300] * 4)
    assert len(plots.image_sizes(varied).axes) == 2  # sizes that differ: the scatter and the aspect ratios


def test_flow_diagram_arrows_start_and_end_outside_every_box():
    flow = pd.DataFrame([("files found (image files)", 110, None, ""), ("unreadable (skipped)", 3, None, "corrupt: 3"),
                         ("readable images", 107, 80, ""), ("excluded: a reason", 2, 2, "a longer detail line"),
                         ("excluded: another reason", 1, 1, ""),
                         ("training (cross-validated)", 85, 60, "NORMAL 40, PNEUMONIA 45; 4 folds"),
                         ("official test", 20, 18, "NORMAL 10, PNEUMONIA 10")],
                        columns=["stage", "images", "children", "detail"])
    fig = plots.flow_diagram(flow)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts if t.get_bbox_patch() is not None]
    assert len(boxes) == len(flow)
    arrows = [a for a in ax.texts if isinstance(a, matplotlib.text.Annotation) and a.arrow_patch is not None]
    assert len(arrows) == 3 + 1 + 2  # the exits, main box to main box, the two parts

    def inside(x: float, y: float) -> bool:  # strictly inside a box (1 px tolerance: on the edge is fine)
        return any(b.x0 + 1 < x < b.x1 - 1 and b.y0 + 1 < y < b.y1 - 1 for b in boxes)

    def on_edge(x: float, y: float) -> bool:
        return any((b.x0 - 1.5 <= x <= b.x1 + 1.5 and (abs(y - b.y0) < 1.5 or abs(y - b.y1) < 1.5))
                   or (b.y0 - 1.5 <= y <= b.y1 + 1.5 and (abs(x - b.x0) < 1.5 or abs(x - b.x1) < 1.5))
                   for b in boxes)

    for a in arrows:
        head, tail = ax.transAxes.transform(a.xy), ax.transAxes.transform(a.xyann)
        assert not inside(*head) and not inside(*tail), (a.xy, a.xyann)
        assert on_edge(*head), a.xy  # every arrow points at a box's edge
    main_to_main = [a for a in arrows if a.xy[0] == a.xyann[0]]
    assert len(main_to_main) == 1 and on_edge(*ax.transAxes.transform(main_to_main[0].xyann))  # from an edge too


def test_images_per_patient_log_axis():
    index = pd.DataFrame({"patient_id": np.repeat(np.arange(40), [1] * 30 + [2] * 6 + [9] * 4),
                          "label": "PNEUMONIA"})
    fig = plots.images_per_patient(index)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert "1" in shown and "10" in shown and not any("^" in t for t in shown)  # plain numbers, no 10^x


def test_selection_figure_two_stages_share_the_y_axis():
    result = _result()
    fig = plots.selection_figure(result)
    assert len(fig.axes) == 2
    head, ft = fig.axes
    assert head.get_shared_y_axes().joined(head, ft)
    assert head.get_xlim()[1] > 40 and ft.get_xlim()[1] < 4  # each stage on its own epoch axis
    assert "Stage 1" in head.get_title() and "Stage 2" in ft.get_title()
    kept = [t.get_text() for t in ft.get_legend().get_texts() if t.get_text().startswith("kept")]
    assert kept == ["kept: epoch 3, 0.0900"]
    assert any(t.get_text().startswith("best, not kept: epoch 50") for t in head.get_legend().get_texts())


def test_reliability_binned_points_with_wilson_error_bars_and_legend_outside():
    y, p = _scores(400)
    p_cal = calibration.apply_temperature(p, calibration.fit_temperature(y, p))
    fig = plots.reliability(evaluate_curves.reliability(y, p, p_cal, n_bootstrap=0, ci_level=0.95, seed=0, n_bins=10))
    ax, ax_n = fig.axes
    points = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(points) == 2
    table = calibration.reliability_table(y, p, 10)
    table = table[table["count"] > 0]
    data, _, (bars,) = points[0].lines[0], points[0].lines[1], points[0].lines[2]
    np.testing.assert_allclose(data.get_ydata(), table["observed_rate"])
    segments = bars.get_segments()
    for seg, rate, n in zip(segments, table["observed_rate"], table["count"]):
        np.testing.assert_allclose(sorted(seg[:, 1]), wilson_bounds(rate, n, 0.95))
    assert sum(b.get_height() for b in ax_n.patches) == 2 * len(y)  # the count of each bin, per series
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # outside the axes, on the right


def test_net_benefit_figure_fits_1100_px():
    y, p = _scores()
    d = bootstrap_draws(y, p, 0.5, n_bootstrap=50, seed=0)
    table = clinical.net_benefit_table(d["sensitivity"], d["specificity"], test_prevalence=0.625)
    fig = plots.net_benefit_figure(table)
    assert len(fig.axes) == table.groupby(["prevalence", "population"]).ngroups == 5
    assert _width_px(fig) <= 1100
    assert min(ax.title.get_fontsize() for ax in fig.axes) >= 9  # readable


def test_score_distributions_mark_the_threshold_per_class():
    y, p = _scores(200, seed=1)
    yt, pt = _scores(100, seed=2, shift=0.8)
    fig = evaluation.score_distributions(p, y, pt, yt, 0.4, ("NORMAL", "PNEUMONIA"))
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["true NORMAL", "true PNEUMONIA"]
    for cls, ax in enumerate(fig.axes):
        threshold = [line for line in ax.get_lines() if line.get_label().startswith("threshold")]
        assert len(threshold) == 1 and threshold[0].get_xdata()[0] == pytest.approx(np.log(0.4 / 0.6))
        test_line = next(line for line in ax.get_lines() if line.get_label().startswith("test"))
        assert test_line.get_ydata()[-1] == pytest.approx(1.0)  # an ECDF
        share = (pt[yt == cls] >= 0.4).mean()
        assert f"{share:.1%} at or above" in test_line.get_label()
    assert _width_px(fig) <= 1100
    with pytest.raises(ValueError, match="between 0 and 1"):
        evaluation.score_distributions(p, y, pt, yt, 1.0, ("NORMAL", "PNEUMONIA"))


def test_training_curves_per_stage_with_the_kept_epoch():
    result = _result()
    fig = training.training_curves(result)
    head, ft = fig.axes
    assert head.get_shared_y_axes().joined(head, ft)
    mean = next(line for line in head.get_lines() if line.get_label().startswith("mean over 3 folds, held-out"))
    expected = result.history.query("stage == 'head' and option == 'none'").groupby("epoch")["oof_loss"].mean()
    np.testing.assert_allclose(mean.get_ydata(), expected.to_numpy())  # the kept option only
    assert any(line.get_label() == "kept: epoch 3" for line in ft.get_lines())
    empty = SimpleNamespace(**{**vars(result), "history": result.history.iloc[:0]})
    assert "no training history" in training.training_curves(empty).axes[0].texts[0].get_text()


def test_confusion_matrix_names_the_positive_class():
    fig = plots.confusion_matrix([[50, 10], [5, 100]], ["bacteria", "virus"], positive="virus")
    (ax,) = fig.axes
    assert "positive class: virus" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bacteria", "virus"]
    assert "positive class: PNEUMONIA" in plots.confusion_matrix([[1, 0], [0, 1]], ["NORMAL", "PNEUMONIA"]).axes[0] \
        .get_title()
    with pytest.raises(ValueError, match="not one of the class names"):
        plots.confusion_matrix([[1, 0], [0, 1]], ["bacteria", "virus"], positive="PNEUMONIA")


def test_roc_pr_without_the_reliability_panel():
    y, p = _scores()
    fig = plots.roc_pr_calibration(evaluate_curves.discrimination(y, p, 0.5))
    assert [ax.get_title() for ax in fig.axes] == ["ROC", "Precision-recall"]


def test_reliability_draws_bins_whose_rate_is_zero_or_one():
    """A bin whose observed rate is 0 or 1 has a Wilson bound equal to it up to rounding: the error bar is clipped
    at zero, never negative (the full run's test split has such bins)."""
    from cxr.plots.evaluation import reliability

    rng = np.random.default_rng(3)
    p = np.r_[rng.uniform(0.0, 0.05, 60), rng.uniform(0.95, 1.0, 140), rng.uniform(0.3, 0.7, 40)]
    y = np.r_[np.zeros(60, int), np.ones(140, int), rng.integers(0, 2, 40)]
    fig = reliability(evaluate_curves.reliability(y, p, np.clip(p * 0.9 + 0.05, 0, 1), n_bootstrap=50, ci_level=0.95,
                                         seed=0), title="saturated bins")
    assert fig.axes


def test_randomisation_figure_holds_every_error_bar_whole():
    """A step whose correlation is -0.2 +- 0.3 (below the old fixed y limit of -0.25) is drawn whole: the y axis
    reaches past the end of every bar, the bars are labelled as +-1 SD over the images, and the label fits."""
    table = pd.DataFrame({"step": [0, 1, 2], "randomised_to": ["none (trained)", "logit", "stem_conv"],
                          "spearman_mean": [1.0, -0.2, 0.3], "spearman_std": [0.0, 0.3, 0.25],
                          "n_images": [12, 12, 12]})
    fig = plots.randomization_figure(table)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < -0.2 - 0.3 and high > 1.0
    assert "1 SD over 12 images" in ax.get_legend().get_texts()[0].get_text()
    fig.canvas.draw()
    label = ax.yaxis.label.get_window_extent()
    assert label.y0 >= 0 and label.y1 <= fig.bbox.height  # the axis title is inside the figure


def test_plots_take_precomputed_curves_and_run_no_bootstrap():
    """Every interval a figure shows comes from `cxr.evaluate` (issue 24): no public plot takes bootstrap settings,
    and no plot module imports the calibration fits or the resampling engine."""
    import ast
    import inspect
    from pathlib import Path

    import cxr.plots

    for name in cxr.plots.__all__ if hasattr(cxr.plots, "__all__") else dir(cxr.plots):
        fn = getattr(cxr.plots, name)
        if inspect.isfunction(fn):
            params = set(inspect.signature(fn).parameters)
            assert not params & {"n_bootstrap", "ci_level", "n_boot"}, name
    for path in Path(cxr.plots.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"cxr.evaluate.calibration", "cxr.evaluate.resample", "cxr.evaluate.metrics"}, path
