"""Figures of the evaluation a clinical reviewer asks for: calibration before and after, PPV/NPV across
prevalences, decision curves, the stability of the operating point, error rates by group, the most confident
errors beside their Grad-CAM, and the validation evidence for the kept training stage.

Each function draws the output of one producer in `cxr.evaluate` (the tables and curves are the data; nothing is
computed or resampled here).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from cxr.evaluate.curves import Reliability
from cxr.plots.style import _figure, figure_style

DEEP = sns.color_palette("deep").as_hex()  # explicit colours: "C0" would resolve at draw time, outside the style
BEFORE_AFTER_COLORS = ("#C44E52", "#4C72B0")  # before calibration, after calibration
PPV_NPV_COLORS = {"ppv": "#C44E52", "npv": "#4C72B0"}
SENS_SPEC_COLORS = {"sensitivity": "#C44E52", "specificity": "#4C72B0"}
PROBABILITY_TICKS = (  # tick sets of a logit axis, finest first
    (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
    (1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999),
    (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999),
)
ERROR_TABLE_TITLES = {
    "overall": "overall", "by_class": "by true class", "by_subtype": "by subtype", "by_family": "by file-name family",
    "by_size": "by original size (long side, px)", "by_aspect": "by aspect ratio (width / height)",
    "fpr_by_family": "by file-name family", "fpr_by_size": "by original size (long side, px)",
    "fpr_by_aspect": "by aspect ratio (width / height)",
}


# ---------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------

def _draw_reliability(ax: Any, curve: pd.DataFrame, color: str, label: str) -> None:
    """One smoothed reliability curve (`cxr.evaluate.calibration.smoothed_reliability`) on `ax`: the fitted
    observed rate (a line) and, when the table has one, its bootstrap band (a filled area)."""
    ax.plot(curve["predicted"], curve["observed"], lw=2, color=color, label=label)
    if curve["low"].notna().any():
        ax.fill_between(curve["predicted"], curve["low"], curve["high"], color=color, alpha=0.2, lw=0)


def _calibration_label(name: str, s: dict[str, float]) -> str:
    """"name: log-loss ..., Brier ..., slope ..., intercept ..." for a legend, from `calibration_metrics`."""
    return (f"{name}: log-loss {s['log_loss']:.3f}, Brier {s['brier']:.3f}, slope {s['slope']:.2f}, "
            f"intercept {s['intercept']:.2f}")


@figure_style
def reliability(data: Reliability, title: str = "") -> Figure:
    """Reliability diagram before vs after calibration, in one figure, from `cxr.evaluate.curves.reliability`:
    the observed positive rate in each equal-width bin of predicted probability (points at the bin's mean
    prediction, with the Wilson interval of the bin's rate as error bars), beside the smoothed observed rate (a
    spline logistic fit on logit p) with its bootstrap band, the diagonal, and log-loss, Brier score, calibration
    slope and intercept in the legend (outside the axes, on the right); below it, the number of images per bin,
    where the points and the curve rest on data.

    Axes: [reliability, images per bin]. The reliability axes holds the diagonal, then per series the smoothed
    curve (a line labelled with the scores), its band, and the binned points (an errorbar container, in
    `ax.containers`, labelled "<series>: binned").
    """
    n_bins, ci_level = data.n_bins, data.ci_level
    fig, axes = _figure(2, 1, size=(8.6, 3.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax, ax_n = axes[:, 0]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    width = 1.0 / n_bins / (len(data.series) + 0.5)
    for k, series in enumerate(data.series):
        color = BEFORE_AFTER_COLORS[k % len(BEFORE_AFTER_COLORS)]
        _draw_reliability(ax, series.curve, color, _calibration_label(series.name, series.scores))
        table = series.bins
        shown = table[table["count"] > 0]
        rate = shown["observed_rate"].to_numpy(float)
        ax.errorbar(shown["mean_predicted"].to_numpy(float), rate,
                    yerr=[np.clip(rate - shown["ci_low"].to_numpy(float), 0, None),  # a rate of 0 or 1 can sit
                          np.clip(shown["ci_high"].to_numpy(float) - rate, 0, None)],  # a rounding off its bound
                    fmt="o" if k == 0 else "s", ms=4.5, color=color, mfc="white" if k else color, capsize=2.5,
                    lw=1, label=f"{series.name}: binned ({n_bins} bins, Wilson {ci_level:.0%})")
        centres = (table["lower"] + table["upper"]) / 2
        ax_n.bar(centres + (k - (len(data.series) - 1) / 2) * width, table["count"], width=width, color=color,
                 alpha=0.8, label=series.name)
    band = f"; bands: {ci_level:.0%} bootstrap" + (" of patients" if data.by_patient else "")
    ax.set(ylabel="observed positive rate", xlim=(0, 1), ylim=(-0.01, 1.01), title=title or "Reliability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0,
              title=("lines: spline logistic fit" + (band if data.n_bootstrap > 1 else "")), title_fontsize=8)
    ax_n.set(xlabel="predicted probability (bins of width %.2g below)" % (1.0 / n_bins), ylabel="images")
    ax_n.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Prevalence and decision curves
# ---------------------------------------------------------------------------------------------------------------

def _draw_prevalence(ax: Any, curves: pd.DataFrame, test_prevalence: float | None,
                     train_prevalence: float | None, log_x: bool) -> None:
    x = curves["prevalence"].to_numpy(float)
    for key, name in (("ppv", "PPV (positive calls that are right)"), ("npv", "NPV (negative calls that are right)")):
        color = PPV_NPV_COLORS[key]
        ax.plot(x, curves[key], lw=2, color=color, label=name)
        if {f"{key}_low", f"{key}_high"} <= set(curves.columns):
            ax.fill_between(x, curves[f"{key}_low"], curves[f"{key}_high"], color=color, alpha=0.2, lw=0)
    for value, name, style in ((test_prevalence, "test", "--"), (train_prevalence, "training", ":")):
        if value is not None and np.isfinite(value):
            ax.axvline(value, color="k", ls=style, lw=1, label=f"{name} prevalence {value:.0%}")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}" if v >= 0.01 else f"{v:.1%}"))
    ax.set(xlabel="prevalence of the positive class" + (" (log scale)" if log_x else ""),
           ylabel="predictive value", ylim=(0, 1.02), xlim=(x.min(), x.max()), title="PPV and NPV across prevalences")
    ax.legend(loc="lower center", fontsize=8)


def _draw_decision(ax: Any, curve: pd.DataFrame, model_label: str | None) -> None:
    pt = curve["threshold"].to_numpy(float)
    band = {"model_low", "model_high"} <= set(curve.columns)
    label = model_label or ("chosen operating point" if band else "model")
    ax.plot(pt, curve["model"], lw=2, color=DEEP[0], label=label)
    if band:
        ax.fill_between(pt, curve["model_low"], curve["model_high"], color=DEEP[0], alpha=0.2, lw=0,
                        label="95% interval")
    if "treat_all" in curve:
        ax.plot(pt, curve["treat_all"], lw=1.5, color=DEEP[1], label="treat all")
    none = curve["treat_none"] if "treat_none" in curve else np.zeros(pt.size)
    ax.plot(pt, none, lw=1.5, color="grey", ls="--", label="treat none")
    tops = [curve[c].to_numpy(float) for c in ("model", "model_high", "treat_all") if c in curve]
    top = np.nanmax(np.concatenate(tops)) if tops and np.isfinite(np.concatenate(tops)).any() else 0.0
    ax.set(xlabel="threshold probability", ylabel="net benefit", xlim=(pt.min(), pt.max()),
           ylim=(-0.05, max(top, 0.05) * 1.1), title="Decision curve")
    ax.legend(loc="best", fontsize=8)


@figure_style
def prevalence_figure(curves: pd.DataFrame, test_prevalence: float | None, train_prevalence: float | None = None,
                      title: str = "", log_x: bool = False) -> Figure:
    """PPV and NPV of the operating point against prevalence (`cxr.evaluate.clinical.prevalence_curves`), with
    their interval bands when the table has ppv_low/high and npv_low/high, and vertical lines at the test (and
    training) prevalence. One axes."""
    fig, axes = _figure(size=(5.6, 4.2))
    _draw_prevalence(axes[0, 0], curves, test_prevalence, train_prevalence, log_x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@figure_style
def decision_curve_figure(curve: pd.DataFrame, title: str = "", model_label: str | None = None) -> Figure:
    """Net benefit against threshold probability for the model, "treat all" and "treat none" (the output of
    `decision_curve`, or of `operating_point_curve`, whose model_low/model_high become a band). The y axis runs
    from -0.05 to 1.1 x the largest net benefit shown. One axes."""
    fig, axes = _figure(size=(5.6, 4.2))
    _draw_decision(axes[0, 0], curve, model_label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@figure_style
def net_benefit_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """The operating point's decision curve at each prevalence of `cxr.evaluate.clinical.net_benefit_table`, one
    panel per prevalence (in the table's order), each as `decision_curve_figure` draws it (net benefit with its
    interval band, treat all, treat none) and titled with the prevalence and whether it is assumed or the test
    set's. The legend is in the first panel only. One axes per prevalence, in rows of at most three (about 1,000 px
    wide at the notebook's 100 dpi)."""
    groups = list(table.groupby(["prevalence", "population"], sort=False))
    n = max(len(groups), 1)
    ncols = min(n, 3)  # at most three panels a row: the figure stays within about 1,000 px at the notebook's dpi
    nrows = -(-n // ncols)
    fig, axes = _figure(nrows, ncols, size=(3.3, 2.9))
    flat = list(axes.ravel())
    for ax in flat[len(groups):]:
        fig.delaxes(ax)
    for k, (ax, ((pi, kind), curve)) in enumerate(zip(flat, groups)):
        _draw_decision(ax, curve, None)
        ax.set_title(f"prevalence {pi:.0%}" + (" (test set)" if kind == "test" else " (assumed)"), fontsize=10)
        ax.xaxis.label.set_fontsize(9)
        ax.yaxis.label.set_fontsize(9)
        ax.tick_params(labelsize=8)
        if k:
            ax.get_legend().remove()
        if k % ncols:
            ax.set_ylabel("")
        if k < len(groups) - ncols:
            ax.set_xlabel("")
    fig.suptitle(title or "Net benefit of the operating point across prevalences", fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Operating point
# ---------------------------------------------------------------------------------------------------------------

def _boxes(ax: Any, values: Sequence[np.ndarray], positions: Sequence[float], color: str, width: float) -> None:
    data = [np.asarray(v, float)[np.isfinite(v)] for v in values]
    keep = [i for i, d in enumerate(data) if d.size]
    if not keep:
        return
    ax.boxplot([data[i] for i in keep], positions=[positions[i] for i in keep], orientation="horizontal",
               widths=width, showfliers=False, manage_ticks=False, patch_artist=True,
               boxprops={"facecolor": color, "alpha": 0.25, "edgecolor": color},
               medianprops={"color": color, "lw": 2}, whiskerprops={"color": color}, capprops={"color": color})


@figure_style
def threshold_stability_figure(table: pd.DataFrame, chosen: dict[str, float] | None = None,
                               title: str = "") -> Figure:
    """How the operating point moves under bootstrap resampling of validation (`cxr.evaluate.threshold.stability`).

    Left: per policy, the threshold chosen on each resample (points, and a box of their quartiles) on a
    logit-scaled axis labelled in probabilities; `chosen` ({policy: threshold} on the whole validation set) is
    marked with a black bar. Right: per policy, the whole-validation sensitivity and specificity at those
    thresholds. Two axes; the left axes holds one point collection per policy, in the table's order.
    """
    policies = list(pd.unique(table["policy"]))
    groups = {name: table[table["policy"] == name] for name in policies}
    pos = np.arange(len(policies))[::-1].astype(float)  # first policy on top
    fig, axes = _figure(1, 2, size=(5.2, 1.3 + 0.9 * max(len(policies), 1)))
    ax_t, ax_m = axes[0]
    rng = np.random.default_rng(0)
    for y0, name in zip(pos, policies):
        t = groups[name]["threshold"].to_numpy(float)
        ax_t.scatter(t, y0 + rng.uniform(-0.18, 0.18, t.size), s=8, alpha=0.4, color=DEEP[0], lw=0)
        if chosen and name in chosen:
            ax_t.plot([chosen[name]] * 2, [y0 - 0.35, y0 + 0.35], color="k", lw=2.5,
                      label="chosen on all of validation" if y0 == pos[0] else None)
    _boxes(ax_t, [groups[n]["threshold"].to_numpy(float) for n in policies], pos, DEEP[0], 0.5)
    ax_t.set_xscale("logit")
    finite = table["threshold"].to_numpy(float)
    finite = finite[np.isfinite(finite) & (finite > 0) & (finite < 1)]
    if chosen:
        finite = np.r_[finite, [v for v in chosen.values() if 0 < v < 1]]
    if finite.size:
        lo, hi = finite.min(), finite.max()
        z_lo, z_hi = np.log(lo / (1 - lo)), np.log(hi / (1 - hi))
        pad = max(0.25, 0.08 * (z_hi - z_lo))
        ax_t.set_xlim(1 / (1 + np.exp(-(z_lo - pad))), 1 / (1 + np.exp(-(z_hi + pad))))
        left, right = ax_t.get_xlim()
        ticks = [v for v in PROBABILITY_TICKS[-1] if left <= v <= right]
        for candidates in PROBABILITY_TICKS:  # the finest tick set that is not crowded
            inside = [v for v in candidates if left <= v <= right]
            if 3 <= len(inside) <= 7:
                ticks = inside
                break
        ax_t.xaxis.set_major_locator(FixedLocator(ticks))
        ax_t.xaxis.set_minor_locator(NullLocator())
        ax_t.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_t.set_yticks(pos, policies)
    ax_t.set_ylim(-0.6, len(policies) - 0.4)
    n = table["resample"].nunique() if "resample" in table else len(table)
    ax_t.set(xlabel="threshold (logit scale)", title=f"Threshold over {n} validation resamples")
    if chosen:
        ax_t.legend(loc="lower right", fontsize=8)

    for k, metric in enumerate(("sensitivity", "specificity")):
        column = f"full_{metric}" if f"full_{metric}" in table else metric
        if column not in table:
            continue
        offset = 0.17 if k == 0 else -0.17
        _boxes(ax_m, [groups[n][column].to_numpy(float) for n in policies], pos + offset,
               SENS_SPEC_COLORS[metric], 0.28)
        ax_m.plot([], [], color=SENS_SPEC_COLORS[metric], lw=6, alpha=0.4, label=metric)
    ax_m.set_yticks(pos, policies)
    ax_m.set_ylim(-0.6, len(policies) - 0.4)
    ax_m.set(xlabel="value on the whole validation set", title="Sensitivity and specificity at those thresholds")
    ax_m.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------

@figure_style
def error_rates_figure(analysis: dict[str, pd.DataFrame],
                       keys: Sequence[str] = ("by_family", "by_subtype", "by_size"), title: str = "") -> Figure:
    """Error rates by group from `cxr.evaluate.predictions.error_analysis`: one panel per table of `keys`,
    horizontal bars of the rate (the false-positive rate among negatives for the fpr_* tables) with the Wilson
    95% interval and "rate, n = ..." beside each bar, groups in the table's order from the top. Tables that are absent
    or have fewer than two groups are skipped; with none left, one empty axes says so."""
    shown = [k for k in keys if k in analysis and len(analysis[k]) >= 2]
    fig, axes = _figure(1, max(len(shown), 1),
                        size=(4.4, 1.4 + 0.45 * max([len(analysis[k]) for k in shown] or [2])))
    if not shown:
        ax = axes[0, 0]
        ax.axis("off")
        ax.text(0.5, 0.5, "no table with two or more groups to compare", ha="center", va="center",
                transform=ax.transAxes)
        return fig
    for ax, key in zip(axes[0], shown):
        table = analysis[key]
        rate = table["rate"].to_numpy(float)
        pos = np.arange(len(table))[::-1]
        low = np.clip(rate - table["ci_low"].to_numpy(float), 0, None)
        high = np.clip(table["ci_high"].to_numpy(float) - rate, 0, None)
        fpr = key.startswith("fpr_")
        ax.barh(pos, rate, color=DEEP[3] if fpr else DEEP[0], alpha=0.8, height=0.6)
        ax.errorbar(rate, pos, xerr=[low, high], fmt="none", ecolor="k", capsize=3, lw=1)
        right = np.nanmax(np.r_[table["ci_high"].to_numpy(float), rate, 0.05])
        for y0, r, hi, n in zip(pos, rate, table["ci_high"].to_numpy(float), table["n"]):
            x0 = np.nanmax([r, hi, 0.0])
            ax.text(x0 + 0.02 * right, y0, f"{r:.0%}, n = {int(n)}" if np.isfinite(r) else f"n = {int(n)}",
                    va="center", fontsize=8)
        ax.set_yticks(pos, [str(g) for g in table.index])
        ax.set_xlim(0, min(1.0, right * 1.35) if right < 0.7 else 1.1)
        ax.set(xlabel="false-positive rate among negatives" if fpr else "error rate",
               title=ERROR_TABLE_TITLES.get(key, key.replace("_", " ")))
        ax.grid(axis="y", visible=False)
    fig.suptitle(title or "Error rates with Wilson 95% intervals")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Score distributions
# ---------------------------------------------------------------------------------------------------------------

SCORE_TICKS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


def _score_ticks(lo: float, hi: float, n: int = 8) -> list[float]:
    """Probability ticks of a logit axis from `lo` to `hi` (logits): those of SCORE_TICKS inside, going out from
    0.5, each at least 1/n of the range from the last one kept (so that the labels do not run together)."""
    z = {v: float(np.log(v / (1 - v))) for v in SCORE_TICKS if lo <= np.log(v / (1 - v)) <= hi}
    gap, kept = (hi - lo) / n, [0.5] if 0.5 in z else []
    for side in ([v for v in SCORE_TICKS if v > 0.5], [v for v in SCORE_TICKS if v < 0.5][::-1]):
        last = 0.0 if kept else None
        for v in (v for v in side if v in z):
            if last is None or abs(z[v] - last) >= gap:
                kept.append(v)
                last = z[v]
    return sorted(kept)


def _logit(p: Any) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype="float64").reshape(-1), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@figure_style
def score_distributions(oof_p: Any, oof_y: Any, test_p: Any, test_y: Any, threshold: float,
                        class_names: Sequence[str], title: str = "") -> Figure:
    """The scores of each true class out of fold (the training children, each scored by the fold model that never
    saw it) against the test set: one panel per class (`class_names[0]`: y = 0, `class_names[1]`: y = 1), the
    empirical distribution functions of logit p (labelled in probabilities), the operating `threshold` as a
    vertical line, and in the legend each set's size and share above the threshold (the false-positive rate of
    the negatives, the sensitivity of the positives). Where the test curve of a class lies left or right of its
    OOF curve, the test images of that class score lower or higher than in cross-validation.

    Axes: one per class; each holds the OOF and test ECDF lines (in that order), then the threshold line."""
    if len(class_names) != 2:
        raise ValueError(f"two class names needed (negative, positive), got {list(class_names)}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    sets = []
    for name, p, y in (("out of fold", oof_p, oof_y), ("test", test_p, test_y)):
        p = np.asarray(p, dtype="float64").reshape(-1)
        y = np.asarray(y).astype(int).reshape(-1)
        if p.shape != y.shape:
            raise ValueError(f"{name}: {p.size} scores but {y.size} labels")
        sets.append((name, p, y))
    fig, axes = _figure(1, 2, size=(4.6, 3.6), sharey=True)
    colors = {"out of fold": DEEP[0], "test": DEEP[3]}
    t = float(np.log(threshold / (1 - threshold)))
    all_z = np.concatenate([_logit(p) for _, p, _ in sets])
    lo, hi = float(min(all_z.min(), t)) - 0.5, float(max(all_z.max(), t)) + 0.5
    for cls, ax in enumerate(axes[0]):
        for name, p, y in sets:
            z = np.sort(_logit(p[y == cls]))
            if not z.size:
                ax.plot([], [], color=colors[name], label=f"{name}: no images")
                continue
            above = (p[y == cls] >= threshold).mean()
            ax.step(np.r_[lo, z], np.r_[0.0, np.arange(1, z.size + 1) / z.size], where="post", lw=2,
                    color=colors[name], label=f"{name} (n = {z.size:,}): {above:.1%} at or above threshold")
        ax.axvline(t, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
        ticks = _score_ticks(lo, hi)
        ax.set_xticks([np.log(v / (1 - v)) for v in ticks], [f"{v:g}" for v in ticks], fontsize=8)
        ax.set(xlim=(lo, hi), ylim=(0, 1.01), xlabel="predicted probability (logit scale)",
               title=f"true {class_names[cls]}")
        ax.legend(loc="lower right", fontsize=7.5)
    axes[0, 0].set_ylabel("ECDF: share scoring below")
    fig.suptitle(title or "Scores out of fold vs on test, by true class", fontsize=11)
    fig.tight_layout()
    return fig
