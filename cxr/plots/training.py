"""Figures of training and evaluation: learning curves, ROC / precision-recall / reliability, confusion matrix."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from cxr.evaluate.curves import Discrimination, Reliability
from cxr.plots.evaluation import _calibration_label, _draw_reliability
from cxr.plots.style import _figure, figure_style


@figure_style
def roc_pr_calibration(curves: Discrimination, reliability: Reliability | None = None, *, title: str = "",
                       name: str = "model") -> Figure:
    """ROC with the operating point and precision-recall with it (`cxr.evaluate.curves.discrimination`), and, with
    `reliability` (`cxr.evaluate.curves.reliability`), a third panel: the smoothed observed rate of its first
    series against the predicted probability with its bootstrap band, over a histogram of the images per bin (its
    equal-width bins, on a twin axis), labelled `name` with its scores. Without `reliability`: the first two panels
    only (where `cxr.plots.evaluation.reliability` draws the reliability diagram on its own, so that it is not
    shown twice)."""
    c, threshold = curves, curves.threshold
    fig, axes = _figure(1, 3 if reliability is not None else 2)
    ax_roc, ax_pr = axes[0][:2]
    ax_roc.plot(c.fpr, c.tpr, lw=2, label=f"AUROC {c.auroc:.3f}")
    ax_roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax_roc.scatter([c.point["fpr"]], [c.point["tpr"]], c="k", zorder=3, label=f"threshold {threshold:.3f}")
    ax_roc.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax_roc.legend(loc="lower right", fontsize=9)

    ax_pr.step(c.recall, c.precision, where="post", lw=2, label=f"AP {c.average_precision:.3f}")
    ax_pr.axhline(c.prevalence, ls="--", c="grey", lw=1, label=f"prevalence {c.prevalence:.2f}")
    ax_pr.scatter([c.point["tpr"]], [c.point["precision"]], c="k", zorder=3, label=f"threshold {threshold:.3f}")
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1),
              ylim=(0, 1.01))
    ax_pr.legend(loc="lower left", fontsize=9)

    if reliability is None:
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig
    ax_cal = axes[0][2]
    series = reliability.series[0]
    ax_cal.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    _draw_reliability(ax_cal, series.curve, sns.color_palette("deep").as_hex()[0],
                      _calibration_label(name, series.scores))
    ax_hist = ax_cal.twinx()
    bins = series.bins
    ax_hist.bar((bins["lower"] + bins["upper"]) / 2, bins["count"], width=1.0 / reliability.n_bins, color="grey",
                alpha=0.25)
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
def confusion_matrix(cm: Any, class_names: Sequence[str], title: str = "", positive: str | None = None) -> Figure:
    """Confusion matrix [[tn, fp], [fn, tp]] (rows: true class, columns: predicted, in the order of
    `class_names`) as a heatmap with counts and row percentages. The title names the positive class (`positive`,
    by default the second class name), e.g. "Confusion matrix (positive class: virus)"."""
    cm = np.asarray(cm, dtype=int)
    names = [str(c) for c in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(f"a square confusion matrix with one row per class name needed: shape {cm.shape}, "
                         f"class names {names}")
    positive = names[-1] if positive is None else str(positive)
    if positive not in names:
        raise ValueError(f"positive class {positive!r} is not one of the class names {names}")
    fig, axes = _figure(size=(4.4, 3.8))
    ax = axes[0, 0]
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    labels = np.array([[f"{c}\n({s:.0%})" for c, s in zip(r, q)] for r, q in zip(cm, share)])
    sns.heatmap(cm, annot=labels, fmt="", cmap="Blues", cbar=False, square=True, ax=ax,
                xticklabels=names, yticklabels=names, annot_kws={"size": 12})
    ax.set(xlabel="predicted", ylabel="true", title=f"{title or 'Confusion matrix'}\n(positive class: {positive})")
    ax.title.set_fontsize(11)
    fig.tight_layout()
    return fig


@figure_style
def training_curves(result: Any, title: str = "") -> Figure:
    """The per-epoch losses of `cxr.train.fit` (`result.history`: one row per fold, stage and epoch): for the head
    stage (the imbalance option kept) and the fine-tuning stage, each fold's loss on its training part (solid,
    thin) and on its held-out fold (dashed, thin), the mean over folds of each (thick), and the epoch kept (a
    vertical line in the kept stage). One panel per stage that ran, the y axis shared (the log-loss of the two
    stages is comparable); a stage without history is skipped, and with none one empty axes says so."""
    history = result.history
    needed = {"fold", "stage", "epoch", "loss", "oof_loss"}
    if not needed <= set(history.columns):
        raise ValueError(f"result.history lacks the columns {sorted(needed - set(history.columns))}")
    parts = []
    for stage, name in (("head", "Stage 1: head"), ("finetune", "Stage 2: fine-tuning")):
        part = history[history["stage"].eq(stage)]
        if stage == "head" and "option" in part:
            part = part[part["option"].eq(result.balance)]
        if len(part):
            parts.append((stage, name, part))
    fig, axes = _figure(1, max(len(parts), 1), size=(4.8, 3.6), sharey=True)
    if not parts:
        ax = axes[0, 0]
        ax.axis("off")
        ax.text(0.5, 0.5, "no training history to show", ha="center", va="center", transform=ax.transAxes)
        return fig
    from matplotlib.ticker import MaxNLocator

    colors = {"loss": "#4C72B0", "oof_loss": "#C44E52"}
    names = {"loss": "training part", "oof_loss": "held-out fold"}
    for ax, (stage, name, part) in zip(axes[0], parts):
        for column, style in (("loss", "-"), ("oof_loss", "--")):
            for k, (_, fold) in enumerate(part.groupby("fold")):
                ax.plot(fold["epoch"], fold[column], ls=style, lw=0.8, alpha=0.5, color=colors[column],
                        label=f"each fold, {names[column]}" if k == 0 else None)
            mean = part.groupby("epoch")[column].mean()
            ax.plot(mean.index, mean.to_numpy(), ls=style, lw=2.2, color=colors[column],
                    label=f"mean over {part['fold'].nunique()} folds, {names[column]}")
        kept = stage == getattr(result, "kept_stage", None) and getattr(result, "kept_epoch", 0) > 0
        if kept:
            ax.axvline(result.kept_epoch, color="k", ls=":", lw=1.2, label=f"kept: epoch {result.kept_epoch}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=f"{stage.replace('finetune', 'fine-tuning')} epoch", title=name)
        ax.legend(fontsize=7.5)
    axes[0, 0].set_ylabel("log-loss (raw, per fold)")
    fig.suptitle(title or f"{result.task}: training and held-out loss per epoch", fontsize=11)
    fig.tight_layout()
    return fig
