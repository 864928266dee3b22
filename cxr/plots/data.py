"""Figures of the data: class balance per split, images per patient, image sizes, examples, augmentation."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cxr.plots.style import CLASS_COLORS, SPLIT_ORDER, SUBTYPE_COLORS, _figure, figure_style

def _split_column(index: pd.DataFrame) -> str:
    return "split" if "split" in index else "official_split"


def _order(values: pd.Series) -> list[str]:
    present = list(pd.unique(values.astype(str)))
    return [s for s in SPLIT_ORDER if s in present] + sorted(s for s in present if s not in SPLIT_ORDER)


@figure_style
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


@figure_style
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


@figure_style
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


@figure_style
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


@figure_style
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


@figure_style
def augmentation_grid(model: Any, images: np.ndarray, n: int = 8, seed: int = 0) -> Figure:
    """The original image and `n - 1` passes through an augmentation in training mode: `model` is the augmentation
    layer itself (`cxr.model.augmentation(config)`), or a model holding one named "augment" (the training wrapper
    `cxr.model.training_model`, or a model saved before the augmentation moved out of the inference model)."""
    import keras

    keras.utils.set_random_seed(seed)
    image = np.asarray(images)[0]
    x = np.repeat(image.reshape(1, *image.shape[:2], 1).astype("float32"), max(1, n - 1), axis=0)
    names = [layer.name for layer in getattr(model, "layers", [])] if isinstance(model, keras.Model) else []
    if isinstance(model, keras.Model) and "augment" in names:
        model = model.get_layer("augment")
    elif isinstance(model, keras.Model) and model.name != "augment":
        raise ValueError("this model has no 'augment' layer (the inference model holds none): pass "
                         "cxr.model.augmentation(config) or cxr.model.training_model(model, config)")
    out = keras.ops.convert_to_numpy(model(x, training=True))
    out = np.clip(out[..., 0], 0, 255).astype("uint8")
    return example_grid([image.squeeze()] + list(out), ["original"] + [f"augmented {i + 1}" for i in range(len(out))],
                        ncols=min(n, 4))
