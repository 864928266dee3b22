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


def _box_extents(fig: Figure, ax: Any, artists: Sequence[Any]) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) in axes coordinates of the drawn box (the text's bbox patch) of each text artist."""
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transAxes.inverted()
    extents = []
    for t in artists:
        t.update_bbox_position_size(renderer)
        ext = t.get_bbox_patch().get_window_extent(renderer)
        (x0, y0), (x1, y1) = to_axes.transform([(ext.x0, ext.y0), (ext.x1, ext.y1)])
        extents.append((x0, y0, x1, y1))
    return extents


@figure_style
def flow_diagram(flow: pd.DataFrame, title: str = "Flow of images and children") -> Figure:
    """The flow of `cxr.data.audit.flow_counts` as a diagram (TRIPOD+AI / CLAIM): the files found, the
    unreadable ones, the readable images, every exclusion with its reason, and the study's two parts (the
    cross-validated training children and the official test). Every arrow starts and ends on the edge of a box
    (the boxes are measured after the text is laid out), so no arrow runs into a label."""
    import matplotlib.pyplot as plt

    stages = flow.reset_index(drop=True)
    side = stages["stage"].str.startswith(("unreadable", "excluded"))
    is_end = stages["stage"].str.startswith(("training", "official test"))
    main = stages[~side & ~is_end]
    exits = stages[side]
    ends = stages[is_end]
    fig = plt.figure(figsize=(9.5, 1.0 * (len(main) + len(exits) + 1) + 0.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    n_rows = len(main) + len(exits) + 1
    y = lambda i: 1 - (i + 0.6) / (n_rows + 0.4)  # noqa: E731
    box = dict(boxstyle="round,pad=0.5", fc="#eef3fb", ec="#4C72B0")
    side_box = dict(boxstyle="round,pad=0.4", fc="#fbeeee", ec="#C44E52")

    def text(r: pd.Series) -> str:
        children = "" if pd.isna(r["children"]) else f", {int(r['children']):,} children"
        detail = f"\n{r['detail']}" if isinstance(r["detail"], str) and r["detail"] else ""
        return f"{r['stage']}\n{int(r['images']):,} images{children}{detail}"

    x_main = 0.33
    mains, sides, finals = [], [], []  # the text artists: main column, exits (with their branch height), ends
    row = 0
    for _, r in stages.iterrows():
        if r.name in ends.index:
            continue
        if r.name in exits.index:
            t = ax.text(0.72, y(row - 0.5), text(r), ha="center", va="center", fontsize=8.5, bbox=side_box)
            sides.append((t, y(row - 0.5)))
        else:
            mains.append(ax.text(x_main, y(row), text(r), ha="center", va="center", fontsize=9, bbox=box))
        row += 1
    for k, (_, r) in enumerate(ends.iterrows()):
        finals.append(ax.text(0.18 + 0.45 * k, y(row), text(r), ha="center", va="center", fontsize=9, bbox=box))
    main_box = _box_extents(fig, ax, mains)
    side_ext = _box_extents(fig, ax, [t for t, _ in sides])
    end_box = _box_extents(fig, ax, finals)
    blue = dict(arrowstyle="->", color="#4C72B0", shrinkA=0, shrinkB=0)
    for upper, lower in zip(main_box, main_box[1:]):  # bottom edge of one box to the top edge of the next
        ax.annotate("", xy=(x_main, lower[3]), xytext=(x_main, upper[1]), arrowprops=blue)
    for (t, y_branch), ext in zip(sides, side_ext):  # from the main line to the exit box's left edge
        ax.annotate("", xy=(ext[0], y_branch), xytext=(x_main, y_branch),
                    arrowprops=dict(arrowstyle="->", color="#C44E52", shrinkA=0, shrinkB=0))
    if main_box and end_box:  # the main line runs on past the exits to a split, then one arrow to each part
        lowest = min([y_b for _, y_b in sides if y_b < main_box[-1][1]], default=main_box[-1][1])
        y_split = (lowest + max(ext[3] for ext in end_box)) / 2
        ax.plot([x_main, x_main], [main_box[-1][1], y_split], color="#4C72B0", lw=1)
        for t, ext in zip(finals, end_box):
            ax.annotate("", xy=(t.get_position()[0], ext[3]), xytext=(x_main, y_split), arrowprops=blue)
    ax.set_title(title, fontsize=11, y=0.99)
    return fig


@figure_style
def images_per_patient(index: pd.DataFrame, max_count: int = 15) -> Figure:
    """How many images each child contributes, by label (counts above `max_count` pooled): children per number
    of images on a log scale (most children have one or two images, a few have many), ticks at 1, 2, 5, 10, ..."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    per = index.groupby(["patient_id", "label"]).size().rename("images").reset_index()
    per["images"] = per["images"].clip(upper=max_count)
    fig, axes = _figure(size=(6.0, 3.6))
    ax = axes[0, 0]
    sns.countplot(data=per, x="images", hue="label", palette=CLASS_COLORS, ax=ax,
                  order=list(range(1, int(per["images"].max()) + 1)))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    counts = per.groupby(["images", "label"]).size()
    ax.set_ylim(0.7, counts.max() * 2.0)
    ax.set(xlabel=f"images per child ({max_count} = {max_count} or more)", ylabel="children (log scale)",
           title=f"{per['patient_id'].nunique():,} children, {len(index):,} images")
    fig.tight_layout()
    return fig


@figure_style
def image_sizes(index: pd.DataFrame) -> Figure:
    """Original width vs height by label (left) and the aspect ratio distribution (right). When every image has
    the same size (a resized copy of the data), one panel says so instead: the images of each label at that size,
    with their counts, and the title naming the size (a scatter would be a single dot)."""
    sizes = index[["width", "height"]].dropna().drop_duplicates()
    if len(sizes) == 1:
        w, h = (int(v) for v in sizes.iloc[0])
        fig, axes = _figure(size=(6.0, 2.6))
        ax = axes[0, 0]
        counts = index["label"].value_counts().reindex([c for c in CLASS_COLORS if c in set(index["label"])]
                                                       + sorted(set(index["label"]) - set(CLASS_COLORS)))
        bars = ax.barh(range(len(counts)), counts.to_numpy(), color=[CLASS_COLORS.get(c, "grey") for c in counts.index])
        ax.bar_label(bars, [f"{n:,} images of {w} x {h} px" for n in counts], padding=4, fontsize=9)
        ax.set_yticks(range(len(counts)), list(counts.index))
        ax.set_xlim(0, counts.max() * 1.9)
        ax.set(xlabel="images", title=f"Every one of the {len(index):,} images is {w} x {h} px "
               "(a resized copy: no original sizes to show)")
        ax.title.set_fontsize(10)
        if "mode" in index:
            modes = ", ".join(f"{k}: {v}" for k, v in index["mode"].value_counts().items())
            fig.suptitle(f"image modes - {modes}", fontsize=10)
        fig.tight_layout()
        return fig
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
                 size: float = 1.6) -> Figure:
    """Grayscale uint8 images in a grid with optional titles; `size` inches per panel (1.6: about 140 px of X-ray at
    the notebook's 100 dpi, under the images' 224 px, so the lossless PNG stays small)."""
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
        ax.set_title(t, fontsize=8)
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
    layer = cxr_model.augmentation(config.augment)
    p = float(getattr(config, "aug_resample", 0.0))
    source = augment.resample_batch(np.repeat(image[None], n, axis=0), rng, probability=p)
    warped = keras.ops.convert_to_numpy(layer(source[..., None].astype("float32"), training=True))
    warped = np.clip(warped[..., 0], 0, 255).astype("uint8")
    titles = (["original"] + [f"resampling path {i + 1}" for i in range(n - 1)]
              + [f"training view {i + 1}" for i in range(n)])
    return example_grid([image, *resampled, *warped], titles, ncols=n)
