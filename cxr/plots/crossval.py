"""Figures of the cross-validated training: the pooled out-of-fold curves behind every choice."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxr.plots.style import figure_style

RED = "#C44E52"  # an explicit colour: "C3" would resolve at draw time, outside the figure's style
BLUE = "#4C72B0"  # the WiSE-FT point


@figure_style
def selection_figure(result: Any, title: str = "") -> Figure:
    """The choices of `cxr.train.fit`, each on the pooled out-of-fold (OOF) selection loss of all folds (log-loss
    after cross-fitted recalibration; `cxr.train.fit.selection_loss`), in two panels sharing the y axis, each with
    its own epoch axis (the head may run for 50 epochs, fine-tuning for 3).

    Left: stage 1, the head per epoch, one line per class-imbalance option (the kept option thick, with its raw
    pooled log-loss dashed). Right: stage 2, fine-tuning per epoch, the selection loss (thick) and the raw pooled
    log-loss (dashed), with the head's best selection loss as a dotted line (the fine-tuned stage is kept only
    below it) and, when the WiSE-FT stage ran (`Config.wise_ft_alpha`), a diamond at the last epoch for the mix of
    the head and that epoch (filled when kept). A filled star marks the stage and epoch kept; a hollow one each
    stage's best when that stage was not kept. Each panel's title gives the stage's pooled OOF AUROC at its best epoch (not used to choose)."""
    import matplotlib.pyplot as plt

    pooled, selection = result.pooled, result.selection.set_index("stage")
    head = pooled[pooled["stage"].eq("head")]
    ft = pooled[pooled["stage"].eq("finetune")]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.9), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [1.5, 1.0]})
    ax_h, ax_f = axes[0]

    def mark(ax: Any, stage: str, color: str) -> None:
        r = selection.loc[stage]
        if r["best_epoch"] <= 0:
            return
        kept = stage == result.kept_stage
        ax.scatter([r["best_epoch"]], [r["selection_loss"]], marker="*", s=220, zorder=4,
                   color=color if kept else "white", edgecolor="k", lw=1.2,
                   label=f"{'kept' if kept else 'best, not kept'}: epoch {int(r['best_epoch'])}, "
                         f"{r['selection_loss']:.4f}")

    for option, part in head.groupby("option", sort=False):
        chosen = option == result.balance
        ax_h.plot(part["epoch"], part["selection_loss"], lw=2.2 if chosen else 1.2, alpha=1 if chosen else 0.7,
                  label=f"{option}{' (option kept), recalibrated' if chosen else ''}")
        if chosen:
            ax_h.plot(part["epoch"], part["oof_loss"], ls="--", lw=1.0, color=ax_h.lines[-1].get_color(),
                      label=f"{option}, raw")
    mark(ax_h, "head", "k")
    best = selection.loc["head"]
    ax_h.set(xlabel="head epoch", ylabel="pooled OOF log-loss",
             title=f"Stage 1: head, by imbalance option (OOF AUROC {best['oof_auroc']:.3f})")
    ax_h.legend(fontsize=7.5)
    if len(ft):
        ax_f.plot(ft["epoch"], ft["oof_loss"], ls="--", lw=1.2, color=RED, label="pooled, raw")
        ax_f.plot(ft["epoch"], ft["selection_loss"], marker="o", lw=2.2, color=RED, label="pooled, recalibrated")
        ax_f.axhline(best["selection_loss"], ls=":", color="k", lw=1.2, label="head's best (recalibrated)")
        mark(ax_f, "finetune", RED)
        if "wise-ft" in selection.index:  # stage 3: one point, at the fine-tuning epoch it mixes with the head
            w = selection.loc["wise-ft"]
            kept = result.kept_stage == "wise-ft"
            ax_f.scatter([w["best_epoch"]], [w["selection_loss"]], marker="D", s=70, zorder=4,
                         color=BLUE if kept else "white", edgecolor=BLUE, lw=1.5,
                         label=f"WiSE-FT (head + last epoch){', kept' if kept else ''}: {w['selection_loss']:.4f}")
        ax_f.set_title(f"Stage 2: fine-tuning (OOF AUROC {selection.loc['finetune', 'oof_auroc']:.3f})")
        ax_f.legend(fontsize=7.5)
    else:
        ax_f.text(0.5, 0.5, "not fine-tuned\n(head on frozen features)", ha="center", va="center",
                  transform=ax_f.transAxes)
        ax_f.set_title("Stage 2: fine-tuning")
    ax_f.set(xlabel="fine-tuning epoch")
    ax_f.tick_params(labelleft=True)
    for ax in (ax_h, ax_f):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(10)
    kept = f"kept: {result.kept_stage}, epoch {result.kept_epoch}"
    fig.suptitle(f"{title or result.task}: {result.n_folds}-fold cross-validation, {kept}", fontsize=11)
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
