"""The package's figure style, applied per figure (nothing global): `figure_style` wraps a figure function in
`matplotlib.rc_context` with seaborn's whitegrid/notebook theme, so a caller's own plots are never restyled."""
from __future__ import annotations

import functools
from typing import Any, Callable

import matplotlib.pyplot as plt
import seaborn as sns
from cycler import cycler

STYLE = {"style": "whitegrid", "context": "notebook"}
CLASS_COLORS = {"NORMAL": "#4C72B0", "PNEUMONIA": "#C44E52"}
SUBTYPE_COLORS = {"normal": "#4C72B0", "bacteria": "#DD8452", "virus": "#8172B3"}
SPLIT_ORDER = ("train", "val", "test")


def style_rc() -> dict[str, Any]:
    """The rc parameters of `sns.set_theme(**STYLE)` (style, context, the "deep" palette), as a dict."""
    return {**sns.axes_style(STYLE["style"]), **sns.plotting_context(STYLE["context"]),
            "axes.prop_cycle": cycler(color=sns.color_palette("deep"))}


def figure_style(fn: Callable) -> Callable:
    """Decorator: run a figure function inside `plt.rc_context(style_rc())` (the style is scoped to it)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        with plt.rc_context(style_rc()):
            return fn(*args, **kwargs)

    return wrapper


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (4.2, 3.6), **kw: Any):
    """A new figure (call it inside a `figure_style` function)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    return fig, axes
