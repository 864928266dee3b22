"""Fixed-shape batches: every training batch is full (reshuffled each epoch, optionally class-balanced), and
prediction pads the last batch to the batch size and drops the padded outputs. One batch shape per model and
mode means one XLA compilation, whatever the number of images."""
from __future__ import annotations

import math
from typing import Callable

from cxr import progress, quiet_stderr

with quiet_stderr():
    import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight


def balanced_class_weight(y: np.ndarray) -> dict[int, float]:
    """scikit-learn's 'balanced' class weights, as a {class: weight} dict."""
    classes = np.unique(y.astype(int))
    if len(classes) < 2:
        raise ValueError("training labels hold a single class; both classes are needed")
    weights = compute_class_weight("balanced", classes=classes, y=y.astype(int))
    return {int(c): float(w) for c, w in zip(classes, weights)}


def _as_input(x: np.ndarray) -> np.ndarray:
    """(n, S, S) uint8 images gain their channel axis; anything else (features, 4-D images) is left alone."""
    return x[..., None] if x.ndim == 3 else x


class TrainBatches(keras.utils.PyDataset):
    """Full batches of (x, y[, sample weight]) for `model.fit`, drawn anew every epoch.

    Each epoch is `max(1, n // batch_size)` batches of exactly `batch_size` rows: a fresh permutation with the
    partial last batch dropped, or, with `balance=True`, rows drawn with replacement so that each class is half of
    the draws on average. `class_weight` ({class: weight}) adds per-row sample weights. With fewer rows than one
    batch, rows are drawn with replacement to fill it. `augment(x, rng)`, if given, changes each batch of images
    as it is drawn (`cxr.augment.resample_batch`), with its own seeded generator.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, class_weight: dict[int, float] | None = None,
                 balance: bool = False, seed: int = 0,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x, np.asarray(y, dtype="float32")
        self.batch_size, self.balance = int(batch_size), balance
        self.weights = (None if class_weight is None else
                        np.array([class_weight[int(c)] for c in self.y], dtype="float32"))
        labels = self.y.astype(int)
        counts = np.bincount(labels, minlength=2)
        self.p = (1.0 / (2 * counts[labels])) if balance else None
        self.rng = np.random.default_rng(seed)
        self.augment, self.augment_rng = augment, np.random.default_rng([seed, 1])
        self.order = self._draw()

    def __len__(self) -> int:
        return max(1, len(self.y) // self.batch_size)

    def _draw(self) -> np.ndarray:
        n, need = len(self.y), len(self) * self.batch_size
        if self.balance:
            return self.rng.choice(n, size=need, replace=True, p=self.p / self.p.sum())
        if n < need:
            return self.rng.choice(n, size=need, replace=True)
        return self.rng.permutation(n)[:need]

    def on_epoch_end(self) -> None:
        self.order = self._draw()

    def __getitem__(self, i: int):
        rows = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])  # sorted: faster memmap reads
        x, y = _as_input(np.asarray(self.x[rows])), self.y[rows]
        if self.augment is not None:
            x = self.augment(x, self.augment_rng)
        return (x, y) if self.weights is None else (x, y, self.weights[rows])


class PredictBatches(keras.utils.PyDataset):
    """Batches of `x` in order, the last one padded (with copies of the last row) to `batch_size`."""

    def __init__(self, x: np.ndarray, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.x, self.batch_size = x, int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int):
        rows = np.arange(i * self.batch_size, (i + 1) * self.batch_size)
        return _as_input(np.asarray(self.x[np.minimum(rows, len(self.x) - 1)]))


def padded_predict(model: keras.Model, x: np.ndarray, batch_size: int, desc: str | None = None) -> np.ndarray:
    """`model.predict` of every row of `x` in full batches of `batch_size` (the last padded), padded outputs
    dropped: (len(x), ...) outputs, the same as an unpadded predict. With `desc`, a live bar of the batches in
    interactive sessions (`cxr.progress`; none in headless runs)."""
    if len(x) == 0:
        raise ValueError("nothing to predict: no rows")
    callbacks = progress.keras_callbacks(desc) if desc else []
    out = model.predict(PredictBatches(x, batch_size), verbose=0, callbacks=callbacks)
    return np.asarray(out)[:len(x)]


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities of the positive class (float64, shape (n,)) for (n, S, S) or (n, S, S, 1) uint8 images, in
    fixed-shape batches of the run's batch size (`Config.batch_size`, resolved by `cxr.train.resolve`)."""
    return np.asarray(padded_predict(model, images, batch_size), dtype="float64").reshape(-1)
