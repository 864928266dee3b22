"""Figures of training and evaluation: learning curves, ROC / precision-recall / reliability, confusion matrix."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from sklearn import metrics as skm

from cxr.evaluate.calibration import smoothed_reliability
from cxr.plots.evaluation import _calibration_label, _draw_reliability
from cxr.plots.style import _figure, figure_style


@figure_style
def roc_pr_calibration(y: Any, p: Any, threshold: float, *, groups: Any = None, n_bootstrap: int, ci_level: float,
                       seed: int, title: str = "", n_bins: int = 10) -> Figure:
    """Three panels: ROC with the operating point, precision-recall with it, and a reliability diagram: the
    smoothed observed rate against the predicted probability (`cxr.evaluate.calibration.smoothed_reliability`)
    with its bootstrap band (patients resampled with `groups`; no band with `n_bootstrap` = 0), over a histogram
    of the predicted probabilities (`n_bins` equal-width bins, on a twin axis)."""
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(p, dtype="float64").reshape(-1)
    fig, axes = _figure(1, 3)
    ax_roc, ax_pr, ax_cal = axes[0]
    yhat = p >= threshold
    tpr_t = yhat[y == 1].mean() if (y == 1).any() else np.nan
    fpr_t = yhat[y == 0].mean() if (y == 0).any() else np.nan
    prec_t = y[yhat].mean() if yhat.any() else np.nan

    fpr, tpr, _ = skm.roc_curve(y, p)
    auc = skm.roc_auc_score(y, p)
    ax_roc.plot(fpr, tpr, lw=2, label=f"AUROC {auc:.3f}")
    ax_roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax_roc.scatter([fpr_t], [tpr_t], c="k", zorder=3, label=f"threshold {threshold:.3f}")
    ax_roc.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax_roc.legend(loc="lower right", fontsize=9)

    precision, recall, _ = skm.precision_recall_curve(y, p)
    ap = skm.average_precision_score(y, p)
    ax_pr.step(recall, precision, where="post", lw=2, label=f"AP {ap:.3f}")
    ax_pr.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence {y.mean():.2f}")
    ax_pr.scatter([tpr_t], [prec_t], c="k", zorder=3, label=f"threshold {threshold:.3f}")
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1),
              ylim=(0, 1.01))
    ax_pr.legend(loc="lower left", fontsize=9)

    curve = smoothed_reliability(y, p, groups, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed)
    ax_cal.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    _draw_reliability(ax_cal, curve, sns.color_palette("deep").as_hex()[0], _calibration_label("model", y, p))
    ax_hist = ax_cal.twinx()
    ax_hist.hist(p, bins=np.linspace(0, 1, n_bins + 1), color="grey", alpha=0.25)
    ax_hist.set_ylabel("images per bin", color="grey")
    ax_hist.grid(False)
    ax_cal.set_zorder(ax_hist.get_zorder() + 1)
    ax_cal.patch.set_visible(False)
    ax_cal.set(xlabel="predicted probability", ylabel="observed positive rate (smoothed)", title="Reliability",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_cal.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@figure_style
def confusion_matrix(cm: Any, class_names: Sequence[str], title: str = "") -> Figure:
    """Confusion matrix [[tn, fp], [fn, tp]] as a heatmap with counts and row percentages."""
    cm = np.asarray(cm, dtype=int)
    fig, axes = _figure(size=(4.4, 3.8))
    ax = axes[0, 0]
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    labels = np.array([[f"{c}\n({s:.0%})" for c, s in zip(r, q)] for r, q in zip(cm, share)])
    sns.heatmap(cm, annot=labels, fmt="", cmap="Blues", cbar=False, square=True, ax=ax,
                xticklabels=class_names, yticklabels=class_names, annot_kws={"size": 12})
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    fig.tight_layout()
    return fig
