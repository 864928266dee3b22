"""cxr.plots.evaluation: each figure draws what the cxr.evaluate producers computed, on tiny synthetic inputs,
copes with degenerate inputs and leaves matplotlib's global style alone."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib
import matplotlib.collections
import matplotlib.container
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cxr import plots
from cxr.evaluate import curves as evaluate_curves
from cxr.evaluate import calibration, clinical, predictions, threshold
from cxr.evaluate.metrics import bootstrap_draws

CLASSES = ("NORMAL", "PNEUMONIA")


def _labels_top_down(ax) -> list[str]:
    """The y tick labels from the top of the axes to the bottom."""
    ticks = zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()])
    return [label for _, label in sorted(ticks, key=lambda t: -t[0])]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def rc_unchanged():
    """Fails the test when matplotlib's global rc parameters differ after it."""
    before = {k: str(v) for k, v in matplotlib.rcParams.items() if k != "backend"}
    yield
    after = {k: str(v) for k, v in matplotlib.rcParams.items() if k != "backend"}
    assert sorted(k for k in before if before[k] != after[k]) == []


def _scores(n: int = 300, seed: int = 0, sharp: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-sharp * (rng.normal(size=n) + 2.0 * (y - 0.5))))
    return y, p


def _frame(n: int = 200, seed: int = 0, sizes: bool = True) -> pd.DataFrame:
    """A predictions table from `predictions_frame` on a toy index with the dataset's file-name families."""
    y, p = _scores(n, seed)
    rng = np.random.default_rng(seed + 1)
    sub = rng.choice(["bacteria", "virus"], n)
    paths = [f"test/{'IM-' if i % 2 else 'NORMAL2-IM-'}{i:04d}.jpeg" if y[i] == 0 else
             f"test/person{i}_{sub[i]}_1.jpeg" for i in range(n)]
    index = pd.DataFrame({"path": paths, "split": "test", "label": np.where(y == 1, "PNEUMONIA", "NORMAL"),
                          "subtype": np.where(y == 1, sub, "normal"), "patient_id": [f"p{i // 2}" for i in range(n)]})
    if sizes:
        index["width"] = rng.integers(900, 2000, n)
        index["height"] = rng.integers(700, 1800, n)
    return predictions.predictions_frame(index, np.arange(n), "test", "pneumonia", p, None, 0.5)


# ---------------------------------------------------------------------------------------------------------------

def test_reliability_draws_smoothed_curves_with_bands_before_and_after(rc_unchanged):
    y, p = _scores(sharp=6.0)
    p_cal = calibration.apply_temperature(p, calibration.fit_temperature(y, p))
    groups = np.arange(len(y)) // 2
    fig = plots.reliability(evaluate_curves.reliability(y, p, p_cal, groups=groups, n_bootstrap=50, ci_level=0.95, seed=0,
                                               n_bins=10), title="test set")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax, ax_n = fig.axes
    lines = [line for line in ax.get_lines() if line.get_label().startswith(("perfect", "before", "after"))]
    assert len(lines) == 3  # diagonal, before, after (the smoothed curves; the binned points are errorbars)
    bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    assert len(bands) == 2  # one bootstrap band per series
    for line, band, probs in zip(lines[1:], bands, (p, p_cal)):
        curve = calibration.smoothed_reliability(y, probs, groups, n_bootstrap=50, ci_level=0.95, seed=0)
        np.testing.assert_allclose(line.get_xdata(), curve["predicted"])
        np.testing.assert_allclose(line.get_ydata(), curve["observed"])
        vertices = band.get_paths()[0].vertices
        assert vertices[:, 1].min() == pytest.approx(curve["low"].min())
        assert vertices[:, 1].max() == pytest.approx(curve["high"].max())
    points = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert [c.get_label().split(":")[0] for c in points] == ["before calibration", "after calibration"]
    for container, probs in zip(points, (p, p_cal)):  # the binned rates at each bin's mean prediction
        table = calibration.reliability_table(y, probs, 10)
        table = table[table["count"] > 0]
        np.testing.assert_allclose(container.lines[0].get_xdata(), table["mean_predicted"])
        np.testing.assert_allclose(container.lines[0].get_ydata(), table["observed_rate"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    scores = calibration.calibration_metrics(y, p_cal)
    assert any(t.startswith("after calibration") and f"log-loss {scores['log_loss']:.3f}" in t
               and f"Brier {scores['brier']:.3f}" in t and f"slope {scores['slope']:.2f}" in t
               and f"intercept {scores['intercept']:.2f}" in t for t in legend)
    assert "ECE" not in " ".join(legend)
    heights = [b.get_height() for b in ax_n.patches]
    assert len(heights) == 20 and sum(heights) == 2 * len(y)  # every image counted once per series
    assert ax.get_title() == "test set"


def test_reliability_raw_only_without_band_and_a_single_value(rc_unchanged):
    y = np.array([0, 1, 1, 0, 1])
    p = np.full(5, 0.55)
    fig = plots.reliability(evaluate_curves.reliability(y, p, None, n_bootstrap=0, ci_level=0.95, seed=0, n_bins=4))
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if line.get_label().startswith(("perfect", "before"))]
    assert len(curves) == 2 and not any(isinstance(c, matplotlib.collections.PolyCollection)
                                        for c in ax.collections)  # no band
    np.testing.assert_allclose(curves[1].get_ydata(), 0.6, atol=0.02)  # one score: the observed rate
    (points,) = ax.containers  # one bin holds every image: one point at its rate, 3 of 5
    np.testing.assert_allclose(points.lines[0].get_ydata(), [0.6])
    assert sum(b.get_height() for b in fig.axes[1].patches) == 5


def _draws(seed: int = 0) -> pd.DataFrame:
    y, p = _scores(seed=seed)
    return bootstrap_draws(y, p, 0.5, n_bootstrap=100, seed=seed)


def test_net_benefit_figure_one_panel_per_prevalence(rc_unchanged):
    d = _draws()
    table = clinical.net_benefit_table(d["sensitivity"], d["specificity"], test_prevalence=0.625)
    fig = plots.evaluation.net_benefit_figure(table)
    assert len(fig.axes) == 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "prevalence 5% (assumed)" and titles[-1].endswith("(test set)")
    for ax, (_, curve) in zip(fig.axes, table.groupby(["prevalence", "population"], sort=False)):
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), curve["model"])
        np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), curve["treat_all"])
        assert len(ax.collections) == 1  # the interval band
    assert fig.axes[0].get_legend() is not None and all(ax.get_legend() is None for ax in fig.axes[1:])


def test_prevalence_figure_draws_ppv_npv_bands_and_prevalence_lines(rc_unchanged):
    d = _draws()
    curves = clinical.prevalence_curves(d["sensitivity"], d["specificity"])
    fig = plots.prevalence_figure(curves, 0.625, 0.72)
    (ax,) = fig.axes
    ppv, npv = ax.get_lines()[:2]
    np.testing.assert_allclose(ppv.get_xdata(), curves["prevalence"])
    np.testing.assert_allclose(ppv.get_ydata(), curves["ppv"])
    np.testing.assert_allclose(npv.get_ydata(), curves["npv"])
    assert len(ax.collections) == 2  # the two interval bands
    vertical = [line.get_xdata()[0] for line in ax.get_lines()[2:]]
    assert vertical == pytest.approx([0.625, 0.72])
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "test prevalence 62%" in legend or "test prevalence 63%" in legend
    assert "training prevalence 72%" in legend
    # without intervals or a training prevalence, on a log axis
    fig = plots.prevalence_figure(curves[["prevalence", "ppv", "npv"]], 0.3, log_x=True)
    (ax,) = fig.axes
    assert len(ax.collections) == 0 and len(ax.get_lines()) == 3 and ax.get_xscale() == "log"
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "1%" in shown and all(t.endswith("%") for t in shown)  # percentages, no 10^x labels


def test_decision_curve_figure_model_treat_all_none_and_limits(rc_unchanged):
    y, p = _scores()
    curve = clinical.decision_curve(y, p)
    fig = plots.decision_curve_figure(curve, title="decision")
    (ax,) = fig.axes
    model, treat_all, treat_none = ax.get_lines()
    np.testing.assert_allclose(model.get_xdata(), curve["threshold"])
    np.testing.assert_allclose(model.get_ydata(), curve["model"])
    np.testing.assert_allclose(treat_all.get_ydata(), curve["treat_all"])
    np.testing.assert_allclose(treat_none.get_ydata(), 0.0)
    assert len(ax.collections) == 0  # no band without model_low/model_high
    top = max(curve["model"].max(), curve["treat_all"].max())
    assert ax.get_ylim() == pytest.approx((-0.05, top * 1.1))
    assert ax.get_xlabel() == "threshold probability"


def test_decision_curve_figure_band_of_operating_point_curve(rc_unchanged):
    d = _draws()
    curve = clinical.operating_point_curve(d["sensitivity"], d["specificity"], 0.1)
    fig = plots.decision_curve_figure(curve)
    (ax,) = fig.axes
    assert len(ax.collections) == 1
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(curve["model_low"].min())
    assert band[:, 1].max() == pytest.approx(curve["model_high"].max())
    top = curve[["model", "model_high", "treat_all"]].to_numpy().max()
    assert ax.get_ylim() == pytest.approx((-0.05, top * 1.1))
    # a curve that is never positive still gets a readable axis
    flat = curve.assign(model=-0.01, model_low=-0.02, model_high=0.0, treat_all=-0.01)
    ax = plots.decision_curve_figure(flat).axes[0]
    assert ax.get_ylim() == pytest.approx((-0.05, 0.055))


def test_threshold_stability_figure_shows_each_resampled_threshold(rc_unchanged):
    y, p = _scores(200)
    table = threshold.stability(y, p, ("youden", "plateau"), n_boot=20, seed=0)
    chosen = {name: threshold.choose(y, p, name) for name in ("youden", "plateau")}
    fig = plots.threshold_stability_figure(table, chosen=chosen)
    assert len(fig.axes) == 2
    ax_t, ax_m = fig.axes
    assert ax_t.get_xscale() == "logit"
    points = [c for c in ax_t.collections if len(c.get_offsets()) == 20]
    assert len(points) == 2
    for c, name in zip(points, ("youden", "plateau")):
        np.testing.assert_allclose(np.sort(c.get_offsets()[:, 0]),
                                   np.sort(table.loc[table["policy"] == name, "threshold"]))
    left, right = ax_t.get_xlim()
    assert left < table["threshold"].min() and table["threshold"].max() < right
    assert _labels_top_down(ax_t) == ["youden", "plateau"]  # the table's order from the top
    assert {t.get_text() for t in ax_m.get_legend().get_texts()} == {"sensitivity", "specificity"}
    # the box medians of the right panel are the medians of the full-validation metrics
    medians = sorted(line.get_xdata()[0] for line in ax_m.get_lines() if len(line.get_xdata()) == 2
                     and line.get_xdata()[0] == line.get_xdata()[1] and line.get_linewidth() == 2)
    expected = sorted(table.groupby("policy")[["full_sensitivity", "full_specificity"]].median().to_numpy().ravel())
    np.testing.assert_allclose(medians, expected)


def test_threshold_stability_figure_one_policy_and_constant_threshold(rc_unchanged):
    table = pd.DataFrame({"policy": "plateau", "resample": range(5), "threshold": 0.4, "logit": np.log(0.4 / 0.6),
                          "sensitivity": 1.0, "specificity": 1.0, "full_sensitivity": 0.98,
                          "full_specificity": 0.97})
    fig = plots.threshold_stability_figure(table)
    assert len(fig.axes) == 2
    left, right = fig.axes[0].get_xlim()
    assert left < 0.4 < right


def test_error_rates_figure_bars_are_the_rates(rc_unchanged):
    analysis = predictions.error_analysis(_frame())
    keys = ("by_family", "by_subtype", "by_size", "fpr_by_family", "missing_table")
    fig = plots.error_rates_figure(analysis, keys=keys)
    assert len(fig.axes) == 4  # the absent table is skipped
    for ax, key in zip(fig.axes, keys):
        table = analysis[key]
        widths = [b.get_width() for b in ax.patches]
        np.testing.assert_allclose(widths, table["rate"])
        assert _labels_top_down(ax) == [str(g) for g in table.index]
        bars_top_down = sorted(ax.patches, key=lambda b: -b.get_y())
        np.testing.assert_allclose([b.get_width() for b in bars_top_down], table["rate"])
        texts = [t.get_text() for t in ax.texts]
        assert [s.split("n = ")[1] for s in texts] == [str(n) for n in table["n"]]
    assert fig.axes[3].get_xlabel() == "false-positive rate among negatives"
    assert fig.axes[0].get_xlabel() == "error rate"


def test_error_rates_figure_skips_single_bin_tables(rc_unchanged):
    analysis = predictions.error_analysis(_frame(sizes=False))
    assert "by_size" not in analysis
    fig = plots.error_rates_figure(analysis, keys=("overall", "by_size", "by_subtype"))
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "by subtype"
    fig = plots.error_rates_figure(analysis, keys=("overall",))
    assert len(fig.axes) == 1 and "no table" in fig.axes[0].texts[0].get_text()


def test_evaluation_figures_save_as_png(tmp_path, rc_unchanged):
    curves = pd.DataFrame({"threshold": [0.1, 0.5, 0.9], "model": [0.5, 0.4, 0.1], "treat_all": [0.5, 0.2, -3.0],
                           "treat_none": 0.0})
    out = plots.save_figure(plots.decision_curve_figure(curves), tmp_path / "decision.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
