"""Figures of the study. Every function returns a matplotlib Figure (nothing here calls `plt.show`);
`save_figure` writes one as a PNG atomically."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn import metrics as skm

STYLE = {"style": "whitegrid", "context": "notebook"}
CLASS_COLORS = {"NORMAL": "#4C72B0", "PNEUMONIA": "#C44E52"}
SUBTYPE_COLORS = {"normal": "#4C72B0", "bacteria": "#DD8452", "virus": "#8172B3"}
SPLIT_ORDER = ("train", "val", "test")


def _style() -> None:
    sns.set_theme(**STYLE)


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (4.2, 3.6), **kw: Any):
    """A new figure in the package style (not registered with pyplot's state machine beyond creation)."""
    _style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` as a PNG at `path` atomically (parent folders created)."""
    from cxr.data import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(Path(path), buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------

def roc_pr_calibration(y: Any, p: Any, threshold: float, title: str = "", n_bins: int = 10) -> Figure:
    """Three panels: ROC with the operating point, precision-recall with it, and a reliability diagram."""
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

    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    seen = count > 0
    mean_p = np.bincount(bins, weights=p, minlength=n_bins)[seen] / count[seen]
    frac = np.bincount(bins, weights=y, minlength=n_bins)[seen] / count[seen]
    ax_cal.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax_cal.plot(mean_p, frac, marker="o", lw=2, label="model")
    ax_hist = ax_cal.twinx()
    ax_hist.hist(p, bins=np.linspace(0, 1, n_bins + 1), color="grey", alpha=0.25)
    ax_hist.set_ylabel("images per bin", color="grey")
    ax_hist.grid(False)
    ax_cal.set_zorder(ax_hist.get_zorder() + 1)
    ax_cal.patch.set_visible(False)
    ax_cal.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Reliability",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_cal.legend(loc="upper left", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion(cm: Any, class_names: Sequence[str], title: str = "") -> Figure:
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


def learning_curves(history: Any, metrics: Sequence[str] = ("loss", "auroc")) -> Figure:
    """Train vs validation curves of `metrics`, one panel each, over all epochs.

    `history` is a dict of lists or a DataFrame (Keras `History.history`-style keys: loss, val_loss, auroc,
    val_auroc...), optionally with a "stage" column; or a list of such histories, one per stage. Stage changes
    are marked with a dashed line.
    """
    if isinstance(history, (list, tuple)):
        parts = [pd.DataFrame(h.history if hasattr(h, "history") else h) for h in history]
        frame = pd.concat([d.assign(stage=d["stage"] if "stage" in d else f"stage {i + 1}")
                           for i, d in enumerate(parts)], ignore_index=True)
    else:
        frame = pd.DataFrame(history.history if hasattr(history, "history") else history).reset_index(drop=True)
    metrics = [m for m in metrics if m in frame or f"val_{m}" in frame]
    if not metrics:
        raise ValueError(f"history has none of the requested metrics; columns: {list(frame.columns)}")
    epoch = np.arange(1, len(frame) + 1)
    fig, axes = _figure(1, len(metrics))
    for ax, m in zip(axes[0], metrics):
        if m in frame:
            ax.plot(epoch, frame[m], marker="o", ms=3, label="train")
        if f"val_{m}" in frame:
            ax.plot(epoch, frame[f"val_{m}"], marker="o", ms=3, label="validation")
        if "stage" in frame:
            stages = frame["stage"].astype(str).to_numpy()
            starts = [0] + [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
            for k, s in enumerate(starts):
                if k:
                    ax.axvline(s + 0.5, ls="--", c="grey", lw=1)
                ax.text(s + 0.6, 0.02, stages[s], transform=ax.get_xaxis_transform(), va="bottom",
                        fontsize=8, color="grey")
        ax.set(xlabel="epoch", ylabel=m, title=m)
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------

def _split_column(index: pd.DataFrame) -> str:
    return "split" if "split" in index else "official_split"


def _order(values: pd.Series) -> list[str]:
    present = list(pd.unique(values.astype(str)))
    return [s for s in SPLIT_ORDER if s in present] + sorted(s for s in present if s not in SPLIT_ORDER)


def class_balance(index: pd.DataFrame) -> Figure:
    """Images per split by label (left) and by subtype (right), with the pneumonia share of each split."""
    split = _split_column(index)
    order = _order(index[split])
    fig, axes = _figure(1, 2, size=(5.0, 3.8))
    ax_l, ax_s = axes[0]
    sns.countplot(data=index, x=split, hue="label", order=order, hue_order=[h for h in CLASS_COLORS
                  if h in set(index["label"])], palette=CLASS_COLORS, ax=ax_l)
    share = index.assign(pos=index["label"].eq("PNEUMONIA")).groupby(split)["pos"].mean()
    ax_l.set_xticks(range(len(order)), [f"{s}\n{share.get(s, np.nan):.0%} pneumonia" for s in order])
    ax_l.set(xlabel="", ylabel="images", title=f"Label per {split.replace('_', ' ')}")
    for c in ax_l.containers:
        ax_l.bar_label(c, fontsize=8)
    sns.countplot(data=index, x=split, hue="subtype", order=order, hue_order=[h for h in SUBTYPE_COLORS
                  if h in set(index["subtype"])], palette=SUBTYPE_COLORS, ax=ax_s)
    ax_s.set(xlabel="", ylabel="images", title=f"Subtype per {split.replace('_', ' ')}")
    for c in ax_s.containers:
        ax_s.bar_label(c, fontsize=8)
    for ax in (ax_l, ax_s):  # room for the legend above the bars
        ax.set_ylim(top=ax.get_ylim()[1] * 1.25)
        ax.legend(loc="upper center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def images_per_patient(index: pd.DataFrame, max_count: int = 15) -> Figure:
    """How many images each patient contributes, by label (counts above `max_count` pooled)."""
    per = index.groupby(["patient_id", "label"]).size().rename("images").reset_index()
    per["images"] = per["images"].clip(upper=max_count)
    fig, axes = _figure(size=(6.0, 3.6))
    ax = axes[0, 0]
    sns.countplot(data=per, x="images", hue="label", palette=CLASS_COLORS, ax=ax,
                  order=list(range(1, int(per["images"].max()) + 1)))
    ax.set(xlabel=f"images per patient ({max_count} = {max_count} or more)", ylabel="patients",
           title=f"{per['patient_id'].nunique()} patients, {len(index)} images")
    fig.tight_layout()
    return fig


def image_sizes(index: pd.DataFrame) -> Figure:
    """Original width vs height by label (left) and the aspect ratio distribution (right)."""
    fig, axes = _figure(1, 2, size=(4.6, 3.8))
    ax_s, ax_a = axes[0]
    sns.scatterplot(data=index, x="width", y="height", hue="label", palette=CLASS_COLORS, s=8, alpha=0.5,
                    linewidth=0, ax=ax_s)
    ax_s.set(title="Original image size (px)")
    sizes = index.assign(aspect=index["width"] / index["height"])
    sns.histplot(data=sizes, x="aspect", hue="label", palette=CLASS_COLORS, bins=40, element="step",
                 stat="density", common_norm=False, ax=ax_a)
    ax_a.set(xlabel="width / height", title="Aspect ratio")
    if "mode" in index:
        modes = ", ".join(f"{k}: {v}" for k, v in index["mode"].value_counts().items())
        fig.suptitle(f"image modes - {modes}", fontsize=10)
    fig.tight_layout()
    return fig


def example_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 4,
                 size: float = 2.4) -> Figure:
    """Grayscale uint8 images in a grid with optional titles."""
    if len(images) == 0:
        raise ValueError("no images to show")
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig, axes = _figure(nrows, ncols, size=(size, size))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles):
        ax.imshow(np.asarray(img).squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(t, fontsize=9)
    fig.tight_layout()
    return fig


def class_examples(prepared: Any, per_class: int = 4, seed: int = 0, split: str | None = "train") -> Figure:
    """`per_class` random images of each subtype (normal, bacteria, virus), one row each, from `split`."""
    index = prepared.index
    rng = np.random.default_rng(seed)
    mask = np.ones(len(index), bool) if split is None or "split" not in index else index["split"].eq(split).to_numpy()
    images, titles = [], []
    for subtype in SUBTYPE_COLORS:
        rows = np.flatnonzero(mask & index["subtype"].eq(subtype).to_numpy())
        for r in np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)):
            images.append(np.asarray(prepared.images[r]))
            titles.append(f"{subtype} ({index['patient_id'].iloc[r]})" if "patient_id" in index else subtype)
    return example_grid(images, titles, ncols=per_class)


def augmentation_grid(model: Any, images: np.ndarray, n: int = 8, seed: int = 0) -> Figure:
    """The original image and `n - 1` passes through the model's "augment" layer in training mode."""
    import keras

    keras.utils.set_random_seed(seed)
    image = np.asarray(images)[0]
    x = np.repeat(image.reshape(1, *image.shape[:2], 1).astype("float32"), max(1, n - 1), axis=0)
    out = keras.ops.convert_to_numpy(model.get_layer("augment")(x, training=True))
    out = np.clip(out[..., 0], 0, 255).astype("uint8")
    return example_grid([image.squeeze()] + list(out), ["original"] + [f"augmented {i + 1}" for i in range(len(out))],
                        ncols=min(n, 4))
