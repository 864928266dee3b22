"""Figures of the data: class balance per split, the flow of images and children, images per child, image sizes,
examples, augmentation."""
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
def class_balance(inventory: pd.DataFrame, by: str = "official_split") -> Figure:
    """Images per split (`by`: "official_split", every image found, as the count table shows it; or "split")
    by label (left) and by subtype (right), with the pneumonia share of each split. Images excluded from the study
    are counted in their official split and named in the title (how many, why), so the figure agrees with the
    tables."""
    order = _order(inventory[by])
    fig, axes = _figure(1, 2, size=(5.0, 3.8))
    ax_l, ax_s = axes[0]
    sns.countplot(data=inventory, x=by, hue="label", order=order, hue_order=[h for h in CLASS_COLORS
                  if h in set(inventory["label"])], palette=CLASS_COLORS, ax=ax_l)
    share = inventory.assign(pos=inventory["label"].eq("PNEUMONIA")).groupby(by)["pos"].mean()
    ax_l.set_xticks(range(len(order)), [f"{s}\n{share.get(s, np.nan):.0%} pneumonia" for s in order])
    ax_l.set(xlabel="", ylabel="images", title=f"Label per {by.replace('_', ' ')}")
    for c in ax_l.containers:
        ax_l.bar_label(c, fontsize=8)
    sns.countplot(data=inventory, x=by, hue="subtype", order=order, hue_order=[h for h in SUBTYPE_COLORS
                  if h in set(inventory["subtype"])], palette=SUBTYPE_COLORS, ax=ax_s)
    ax_s.set(xlabel="", ylabel="images", title=f"Subtype per {by.replace('_', ' ')}")
    for c in ax_s.containers:
        ax_s.bar_label(c, fontsize=8)
    for ax in (ax_l, ax_s):  # room for the legend above the bars
        ax.set_ylim(top=ax.get_ylim()[1] * 1.25)
        ax.legend(loc="upper center", ncol=3, fontsize=9, frameon=False)
    excluded = inventory[inventory["split"].eq("excluded")] if "split" in inventory else inventory.iloc[:0]
    note = ("every image found is in the study (none excluded)" if excluded.empty else
            f"{len(excluded)} of these images are excluded from the study: " + "; ".join(
                f"{reason} ({n})" for reason, n in excluded["excluded_reason"].value_counts().items()))
    fig.suptitle(f"{len(inventory):,} readable images; {note}", fontsize=9)
    fig.tight_layout()
    return fig


@figure_style
def flow_diagram(flow: pd.DataFrame, title: str = "Flow of images and children") -> Figure:
    """The flow of `cxr.data.audit.flow_counts` as a diagram (TRIPOD+AI / CLAIM): the files found, the
    unreadable ones, the readable images, every exclusion with its reason, and the study's two parts (the
    cross-validated training children and the official test)."""
    import matplotlib.pyplot as plt

    stages = flow.reset_index(drop=True)
    side = stages["stage"].str.startswith(("unreadable", "excluded"))
    main = stages[~side & ~stages["stage"].str.startswith(("training", "official test"))]
    exits = stages[side]
    ends = stages[stages["stage"].str.startswith(("training", "official test"))]
    fig = plt.figure(figsize=(9.5, 1.0 * (len(main) + len(exits) + 1) + 0.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    n_rows = len(main) + len(exits) + 1
    y = lambda i: 1 - (i + 0.6) / (n_rows + 0.4)  # noqa: E731
    box = dict(boxstyle="round,pad=0.5", fc="#eef3fb", ec="#4C72B0")
    side_box = dict(boxstyle="round,pad=0.4", fc="#fbeeee", ec="#C44E52")

    def text(r: pd.Series) -> str:
        children = "" if pd.isna(r["children"]) else f", {int(r['children']):,} children"
        detail = f"\n{r['detail']}" if isinstance(r["detail"], str) and r["detail"] else ""
        return f"{r['stage']}\n{int(r['images']):,} images{children}{detail}"

    row, last = 0, None
    for _, r in stages.iterrows():
        if r.name in ends.index:
            continue
        if r.name in exits.index:
            ax.annotate(text(r), xy=(0.33, y(row - 0.5)), xytext=(0.72, y(row - 0.5)), ha="center", va="center",
                        fontsize=8.5, bbox=side_box, arrowprops=dict(arrowstyle="<-", color="#C44E52"))
            row += 1
            continue
        ax.text(0.33, y(row), text(r), ha="center", va="center", fontsize=9, bbox=box)
        if last is not None:
            ax.annotate("", xy=(0.33, y(row) + 0.035), xytext=(0.33, y(last) - 0.035),
                        arrowprops=dict(arrowstyle="->", color="#4C72B0"))
        last, row = row, row + 1
    for k, (_, r) in enumerate(ends.iterrows()):
        x = 0.18 + 0.45 * k
        ax.text(x, y(row), text(r), ha="center", va="center", fontsize=9, bbox=box)
        ax.annotate("", xy=(x, y(row) + 0.04), xytext=(0.33, y(last) - 0.035),
                    arrowprops=dict(arrowstyle="->", color="#4C72B0"))
    ax.set_title(title, fontsize=11, y=0.99)
    return fig


@figure_style
def images_per_patient(index: pd.DataFrame, max_count: int = 15) -> Figure:
    """How many images each child contributes, by label (counts above `max_count` pooled)."""
    per = index.groupby(["patient_id", "label"]).size().rename("images").reset_index()
    per["images"] = per["images"].clip(upper=max_count)
    fig, axes = _figure(size=(6.0, 3.6))
    ax = axes[0, 0]
    sns.countplot(data=per, x="images", hue="label", palette=CLASS_COLORS, ax=ax,
                  order=list(range(1, int(per["images"].max()) + 1)))
    ax.set(xlabel=f"images per child ({max_count} = {max_count} or more)", ylabel="children",
           title=f"{per['patient_id'].nunique():,} children, {len(index):,} images")
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
def augmentation_grid(config: Any, image: np.ndarray, n: int = 4, seed: int = 0) -> Figure:
    """One training image as the network may see it, in the order training applies the changes: top row, the
    original and `n - 1` random resampling paths (`cxr.augment.resample_batch`, where batches are drawn, with
    probability 1 here); bottom row, `n` passes through the model's augmentation layer (`cxr.model.augmentation`:
    affine warp, intensity, border masking) of resampled copies, as in training."""
    import keras

    from cxr import augment, model as cxr_model

    image = np.asarray(image).reshape(np.asarray(image).shape[:2]).astype(np.uint8)
    rng = np.random.default_rng(seed)
    resampled = augment.resample_batch(np.repeat(image[None], n - 1, axis=0), rng, probability=1.0)
    keras.utils.set_random_seed(seed)
    layer = cxr_model.augmentation(config)
    p = float(getattr(config, "aug_resample", 0.0))
    source = augment.resample_batch(np.repeat(image[None], n, axis=0), rng, probability=p)
    warped = keras.ops.convert_to_numpy(layer(source[..., None].astype("float32"), training=True))
    warped = np.clip(warped[..., 0], 0, 255).astype("uint8")
    titles = (["original"] + [f"resampling path {i + 1}" for i in range(n - 1)]
              + [f"training view {i + 1}" for i in range(n)])
    return example_grid([image, *resampled, *warped], titles, ncols=n)
