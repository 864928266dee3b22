"""Figures of the cross-validated training: the pooled out-of-fold curves behind every choice."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxr.plots.style import _figure, figure_style


@figure_style
def selection_figure(result: Any, title: str = "") -> Figure:
    """The choices of `cxr.train.fit`, each on the pooled out-of-fold (OOF) selection loss of all folds (log-loss
    after cross-fitted recalibration; `cxr.train.fit.selection_loss`).

    Left: the head stage per epoch, one line per class-imbalance option (star: the option and epoch kept).
    Middle: the fine-tuning stage per epoch: the selection loss (thick), the raw pooled log-loss (dashed) and each
    fold's raw held-out loss (thin), with the head's best selection loss as a dashed line (the fine-tuned stage is
    kept only below it). Right: the pooled OOF AUROC of both stages."""
    pooled, history, selection = result.pooled, result.history, result.selection.set_index("stage")
    head = pooled[pooled["stage"].eq("head")]
    ft = pooled[pooled["stage"].eq("finetune")]
    fig, axes = _figure(1, 3, size=(4.6, 3.7))
    ax_h, ax_f, ax_a = axes[0]
    for option, part in head.groupby("option", sort=False):
        chosen = option == result.balance
        ax_h.plot(part["epoch"], part["selection_loss"], lw=2.2 if chosen else 1.2, alpha=1 if chosen else 0.7,
                  label=f"{option}{' (kept)' if chosen else ''}")
    best = selection.loc["head"]
    ax_h.scatter([best["best_epoch"]], [best["selection_loss"]], marker="*", s=180, color="k", zorder=3,
                 label=f"best {best['selection_loss']:.4f} (epoch {int(best['best_epoch'])})")
    ax_h.set(xlabel="head epoch", ylabel="pooled OOF log-loss (recalibrated)", title="Stage 1: head, by imbalance option")
    ax_h.legend(fontsize=7.5)
    if len(ft):
        folds = history[history["stage"].eq("finetune")]
        for f, part in folds.groupby("fold"):
            ax_f.plot(part["epoch"], part["oof_loss"], lw=0.8, alpha=0.6, color="grey",
                      label="each fold's held-out log-loss (raw)" if f == folds["fold"].min() else None)
        ax_f.plot(ft["epoch"], ft["oof_loss"], ls="--", lw=1.2, color="C3", label="pooled, raw")
        ax_f.plot(ft["epoch"], ft["selection_loss"], marker="o", lw=2.2, color="C3", label="pooled, recalibrated")
        ax_f.axhline(best["selection_loss"], ls="--", color="k", lw=1, label="head's best (recalibrated)")
        r = selection.loc["finetune"]
        if r["best_epoch"] > 0:
            ax_f.scatter([r["best_epoch"]], [r["selection_loss"]], marker="*", s=180, color="C3", edgecolor="k",
                         zorder=3, label=f"best {r['selection_loss']:.4f} (epoch {int(r['best_epoch'])})")
        ax_f.legend(fontsize=7.5)
    else:
        ax_f.text(0.5, 0.5, "not fine-tuned\n(head on frozen features)", ha="center", va="center",
                  transform=ax_f.transAxes)
    ax_f.set(xlabel="fine-tuning epoch", ylabel="out-of-fold log-loss", title="Stage 2: whole backbone")
    for stage, part in (("head", head[head["option"].eq(result.balance)]), ("fine-tune", ft)):
        if len(part):
            ax_a.plot(part["epoch"], part["oof_auroc"], marker="o", ms=3, label=stage)
    ax_a.set(xlabel="epoch of the stage", ylabel="pooled out-of-fold AUROC", title="AUROC (not used to choose)")
    ax_a.legend(fontsize=8)
    for ax in (ax_h, ax_f, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    kept = f"kept: {result.kept_stage}, epoch {result.kept_epoch}"
    fig.suptitle(f"{title or result.task}: {result.n_folds}-fold cross-validation, {kept}")
    fig.tight_layout()
    return fig


def fold_table(result: Any) -> pd.DataFrame:
    """Per fold: held-out images, and the kept stage's held-out log-loss and AUROC (the spread across folds)."""
    from cxr.train import loss_auroc

    rows = []
    for f, part in result.oof.groupby("fold"):
        loss, auroc = loss_auroc(part["y"].to_numpy(), part["p"].to_numpy())
        rows.append({"fold": int(f), "held-out images": len(part), "positives": int(part["y"].sum()),
                     "log-loss": loss, "AUROC": auroc})
    table = pd.DataFrame(rows).set_index("fold")
    table.loc["mean (SD)"] = [np.nan, np.nan, table["log-loss"].mean(), table["AUROC"].mean()]
    return table
